"""Tests of idlm_jax.data.reasoning: generation, split, worked solutions, tokenizer, rows."""

import collections
import json
import math
import re

import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.data import reasoning as R
from idlm_jax.data.pipeline import TrainIterator
from idlm_jax.data.tokenizers import get_tokenizer

LINE = re.compile(r"^(\d+)([-+*/])(\d+)(?:([-+])(\d+))?=(\d+)$")


@pytest.fixture(scope="module")
def tok():
  return get_tokenizer("reasoning")


@pytest.fixture(scope="module")
def sample():
  """Train and test problems of every family (several seeds)."""
  out = {"train": [], "test": []}
  for seed in range(3):
    out["train"] += R.generate("train", 900, seed=seed)
    out["test"] += R.generate("test", 300, seed=seed)
  return out


def _apply(a, op, b):
  return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]


def _check_arithmetic(p):
  a, op, b = re.fullmatch(r"(?:What is|Compute) (\d+) ([-+]) (\d+)[?.]", p.prompt).groups()
  a, b = int(a), int(b)
  lines = p.response.split("\n")
  assert lines[-1] == f"#### {p.answer}"
  digits, carry = [], 0
  for col, line in enumerate(lines[:-1]):
    x, o1, y, o2, c, s = LINE.fullmatch(line).groups()
    x, y, c, s = int(x), int(y), int(c), int(s)
    assert (o1, o2) == (op, op) and c == carry
    assert y == b // 10 ** col % 10
    assert x % 10 == a // 10 ** col % 10 and x in (x % 10, x % 10 + 10)
    if op == "+":
      assert s == x + y + c and x < 10
      digits.append(s % 10)
      carry = s // 10
    else:
      assert s == x - y - c and 0 <= s <= 9 and (x >= 10) == (x % 10 - y - c < 0)
      digits.append(s)
      carry = int(x >= 10)
  assert len(lines) - 1 == max(len(str(a)), len(str(b)))
  value = sum(d * 10 ** i for i, d in enumerate(digits)) + (carry * 10 ** len(digits)
                                                            if op == "+" else 0)
  assert op == "+" or carry == 0
  assert value == (a + b if op == "+" else a - b) == int(p.answer)


def _check_word(p):
  prompt_numbers = {int(x) for x in re.findall(r"\d+", p.prompt)}
  lines = p.response.split("\n")
  assert lines[-1] == f"#### {p.answer}"
  known, value = set(prompt_numbers), None
  for line in lines[:-1]:
    a, op, b, op2, _, c = LINE.fullmatch(line).groups()
    assert op2 is None
    a, b, c = int(a), int(b), int(c)
    assert _apply(a, op, b) == c > 0, line
    assert a in known and b in known, (line, p.prompt)  # operands are given or derived
    known.add(c)
    value = c
  assert value == int(p.answer)
  # The question is answered: for shopping, the total of the prices.
  if "dollars each" in p.prompt and "spend" in p.prompt:
    pairs = re.findall(r"(\d+) \w+ for (\d+) dollars each", p.prompt)
    assert sum(int(n) * int(c) for n, c in pairs) == int(p.answer)


def _check_sort(p):
  values, order = re.fullmatch(r"Sort ([\d ]+) in (increasing|decreasing) order\.",
                               p.prompt).groups()
  values = [int(v) for v in values.split()]
  trace, final = p.response.split("\n")
  expect = sorted(values, reverse=order == "decreasing")
  assert final == "#### " + " ".join(map(str, expect)) and p.answer == final[5:]
  counts = collections.Counter(values)
  keys = sorted(counts, reverse=order == "decreasing")
  assert trace == " ".join(f"{k}:{counts[k]}" for k in keys)


CHECKS = {"arithmetic": _check_arithmetic, "word": _check_word, "sort": _check_sort}


def test_generation_is_deterministic_and_seeded():
  a = R.generate("train", 60, seed=7)
  assert a == R.generate("train", 60, seed=7)
  assert a != R.generate("train", 60, seed=8)
  assert R.generate("validation", 30, seed=1) == R.generate("test", 30, seed=1)
  rng = np.random.default_rng(3)
  again = np.random.default_rng(3)
  cfg = R.TaskConfig()
  for gen in R.GENERATORS.values():  # each family is a pure function of the generator
    assert gen(rng, cfg) == gen(again, cfg)


def test_families_alternate_and_unknown_family_errors():
  problems = R.generate("train", 9, seed=0)
  assert [p.family for p in problems] == list(R.FAMILIES) * 3
  with pytest.raises(ValueError, match="algebra"):
    R.generate("train", 1, families=["algebra"])
  with pytest.raises(ValueError, match="dev"):
    R.generate("dev", 1)


def test_split_is_disjoint_by_key_and_prompt(sample):
  train, test = sample["train"], sample["test"]
  assert all(R.split_of(p.key, 0.1) == "train" for p in train)
  assert all(R.split_of(p.key, 0.1) == "test" for p in test)
  assert not {p.key for p in train} & {p.key for p in test}
  assert not {p.prompt for p in train} & {p.prompt for p in test}
  assert not {p.response for p in train} & {p.response for p in test}
  for seed in range(3):  # test problems are unique within one draw
    keys = [p.key for p in test[300 * seed:300 * (seed + 1)]]
    assert len(set(keys)) == len(keys) == 300
  # The rule is a fixed function of the key: ~10% of keys are test.
  frac = np.mean([R.split_of(f"k{i}", 0.1) == "test" for i in range(20000)])
  assert 0.09 < frac < 0.11


def test_split_key_ignores_surface():
  cfg = R.TaskConfig()
  # Same mathematical content, different names / items / phrasing: same key.
  seen = collections.defaultdict(set)
  for p in R.generate("train", 3000, seed=5, families=["word"],
                      config=R.TaskConfig(word_max_factor=3, word_max_start=5,
                                          word_max_steps=2)):
    seen[p.key].add(p.prompt)
  assert max(len(v) for v in seen.values()) > 1
  # Sorting: the order of the list is surface (permutations share the key and the split).
  sorts = collections.defaultdict(set)
  for p in R.generate("train", 2000, seed=5, families=["sort"],
                      config=R.TaskConfig(sort_min_len=3, sort_max_len=3, sort_max_value=2)):
    sorts[p.key].add(p.prompt)
    assert p.key == f"sort|{p.prompt.split()[-2]}|" + ",".join(sorted(p.answer.split()))
  assert max(len(v) for v in sorts.values()) > 1
  assert all(R.split_of(k, cfg.test_fraction) == "train" for k in sorts)


def test_every_worked_solution_is_correct(sample):
  for p in sample["train"] + sample["test"]:
    CHECKS[p.family](p)


def test_harder_configs_are_correct_too():
  cfg = R.TaskConfig(arith_min_digits=1, arith_max_digits=5, word_min_steps=1,
                     word_max_steps=6, sort_min_len=1, sort_max_len=10, sort_max_value=20)
  for p in R.generate("train", 600, seed=11, config=cfg):
    CHECKS[p.family](p)
  steps = {p.response.count("\n") for p in R.generate("train", 300, config=cfg,
                                                      families=["word"])}
  assert steps == set(range(1, 7))
  with pytest.raises(ValueError, match="word_min_steps"):
    R.TaskConfig(word_min_steps=3, word_max_steps=2)


def test_small_problem_space_errors_clearly():
  cfg = R.TaskConfig(arith_min_digits=1, arith_max_digits=1, arith_ops="+")
  with pytest.raises(ValueError, match="too small"):
    R.generate("test", 100, config=cfg, families=["arithmetic"], max_tries_per_problem=200)


def test_answer_extraction_round_trips(sample, tok):
  for p in sample["test"]:
    assert R.extract_answer(p.response) == p.answer
    text = tok.decode(tok.encode(R.render(p.prompt, p.response), add_special_tokens=True)
                      + [tok.eos_id] * 3)
    assert R.extract_answer(text) == p.answer
  assert R.extract_answer("7+5=12\n####  1  2 \n#### 9") == "1 2"
  assert R.extract_answer("#### 42[EOS][EOS]") == "42"
  assert R.extract_answer("#### 4[MASK]") == "4"
  assert R.extract_answer("no answer") is None and R.extract_answer("#### \n") is None


def test_exact_match_accuracy_and_stderr():
  out = R.exact_match_accuracy(["1", " 2 ", None, "4 5"], ["1", "2", "3", "4  5"])
  assert out == {"accuracy": 0.75, "stderr": math.sqrt(0.75 * 0.25 / 4), "n": 4}
  assert R.exact_match_accuracy(["x"], ["x"])["stderr"] == 0.0
  with pytest.raises(ValueError):
    R.exact_match_accuracy([], [])


def test_tokenizer_covers_and_round_trips_everything(sample, tok):
  unk = tok.backend.token_to_id("[UNK]")
  problems = sample["train"] + R.generate(
      "train", 600, seed=2, config=R.TaskConfig(word_max_steps=6, sort_max_value=30))
  texts = [R.render(p.prompt, p.response) for p in problems]
  for text, ids in zip(texts, tok.encode_batch(texts)):
    assert unk not in ids, text
    assert tok.decode(ids) == text
  # Every template word, name and item is in the vocabulary, with and without a space.
  for word in R.tokenizer_words():
    assert tok.backend.token_to_id(word) is not None
    assert tok.backend.token_to_id(" " + word) is not None
  assert tok.encode("Ava has zebras")[-1] == unk  # unknown words are visible


def test_tokenizer_ids_digits_and_specials(tok):
  assert tok.name == "reasoning" and tok.vocab_size == tok.model_vocab_size < 512
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3)
  digit_ids = [tok.backend.token_to_id(d) for d in "0123456789"]
  assert len(set(digit_ids)) == 10 and None not in digit_ids
  assert tok.encode("1234567890") == [digit_ids[int(d)] for d in "1234567890"]
  assert tok.encode(" 305") == [tok.backend.token_to_id(" ")] + digit_ids[3:4] + \
      digit_ids[0:1] + digit_ids[5:6]
  user, assistant = (tok.backend.token_to_id(t) for t in (R.USER, R.ASSISTANT))
  assert tok.encode(R.render("Sort 1 2 in increasing order.", "1:1"))[0] == user
  assert assistant in tok.encode(R.render("x", ""))
  assert tok.decode([tok.bos_id, user, tok.mask_id, tok.eos_id]) == "[BOS]<user>[MASK][EOS]"
  assert tok.decode([tok.bos_id, user, tok.eos_id], skip_special_tokens=True) == ""


def test_shipped_tokenizer_equals_a_fresh_build():
  shipped = json.loads(R.tokenizer_path().read_text())
  assert shipped == json.loads(R.build_tokenizer().to_str())
  assert R._main(["build-tokenizer", "--check"]) == 0


def test_prompt_rows_shapes_masks_and_padding(tok):
  problems = R.generate("train", 30, seed=4)
  rows = R.PromptRows.from_problems(problems, tok, 96)
  assert (rows.num_rows, rows.seq_len) == (30, 96)
  batch = rows.gather(np.array([5, 0, 29]))
  assert set(batch) == {"input_ids", "attention_mask", "prompt_mask", "prompt_len"}
  for key in ("input_ids", "attention_mask", "prompt_mask"):
    assert batch[key].shape == (3, 96) and batch[key].dtype == np.int32
  assert batch["prompt_len"].dtype == np.int32 and (batch["attention_mask"] == 1).all()
  for row, (i, p) in enumerate(zip([5, 0, 29], [problems[5], problems[0], problems[29]])):
    ids, plen = batch["input_ids"][row], int(batch["prompt_len"][row])
    assert ids[0] == tok.bos_id and ids[plen - 1] == tok.backend.token_to_id(R.ASSISTANT)
    assert (batch["prompt_mask"][row] == (np.arange(96) < plen)).all()
    assert tok.decode(ids[:plen]) == "[BOS]" + R.render(p.prompt)
    resp = tok.encode(p.response)
    assert list(ids[plen:plen + len(resp)]) == resp
    assert (ids[plen + len(resp):] == tok.eos_id).all() and plen + len(resp) < 96
  # Loss-position counts: response tokens and EOS padding, never prompt tokens.
  counts = rows.token_counts()
  assert counts.sum() == (96 - rows.prompt_lens).sum()
  assert counts[tok.bos_id] == 0 and counts[tok.backend.token_to_id(R.USER)] == 0
  assert (rows.token_counts(10) <= counts).all()
  # The TrainIterator of the pipeline draws from it.
  it = TrainIterator(rows, global_batch_size=8, seed=0)
  assert next(it)["prompt_mask"].shape == (8, 96)
  assert R.PromptRows.from_problems(problems, tok, 96).fingerprint == rows.fingerprint


def test_rows_that_do_not_fit_are_an_error_naming_them(tok):
  problems = R.generate("train", 3, seed=0, families=["sort"])
  with pytest.raises(ValueError, match=r"sort problem 'sort\|.*more than seq_len=20"):
    R.PromptRows.from_problems(problems, tok, 20)


def test_eval_prompts_batches_and_scoring(tok):
  rows, ev = R.load_reasoning_split("test", 24, seq_len=96, seed=0)
  assert len(ev) == 24 and rows.num_rows == 24
  assert (ev.prompt_lens == rows.prompt_lens).all()
  seen = []
  for index, ids in ev.batches(4):
    assert ids.shape[0] == len(index) <= 4
    assert (ids == rows.gather(index)["input_ids"][:, :ids.shape[1]]).all()
    assert (ev.prompt_lens[index] == ids.shape[1]).all()
    seen += list(index)
  assert sorted(seen) == list(range(24))
  ids, mask = ev.left_padded(tok.pad_id)
  assert ids.shape == mask.shape == (24, int(ev.prompt_lens.max()))
  assert (mask.sum(1) == ev.prompt_lens).all() and (ids[mask == 0] == tok.pad_id).all()
  # Decoding the gold rows scores 1; wrong answers score 0.
  gold = tok.decode_batch(rows.gather(np.arange(24))["input_ids"])
  score = ev.score(gold)
  assert score["all"] == {"accuracy": 1.0, "stderr": 0.0, "n": 24}
  assert set(score) == {"all", *R.FAMILIES} and score["word"]["n"] == 8
  assert ev.score(["#### nope"] * 24)["all"]["accuracy"] == 0.0


def test_length_statistics_fit_a_96_token_row(tok):
  stats = R.length_stats(tok, num_per_family=300)
  assert set(stats) == set(R.FAMILIES)
  assert all(s["row_max"] <= 96 and s["response_max"] <= 64 for s in stats.values())


def test_prompt_width_left_pads_prompts(tok):
  """prompt_width W: every response starts at W, the left [PAD]s are hidden (attention 0) and
  part of the prompt mask; the EvalSplit batches carry the prompt mask."""
  from idlm_jax.data.pipeline import EvalSplit
  problems = R.generate("train", 12, seed=1, families=["arithmetic", "sort"])
  plain = R.PromptRows.from_problems(problems, tok, 96)
  rows = R.PromptRows.from_problems(problems, tok, 96, prompt_width=28)
  got = rows.gather(np.arange(12))
  for i, p in enumerate(problems):
    n = int(plain.prompt_lens[i])
    pads = 28 - n
    assert (got["input_ids"][i, :pads] == tok.pad_id).all()
    assert (got["input_ids"][i, pads:] == plain.rows[i, :96 - pads]).all()
    assert (got["attention_mask"][i] == (np.arange(96) >= pads)).all()
    assert (got["prompt_mask"][i] == (np.arange(96) < 28)).all()
  a, b = rows.token_counts(), plain.token_counts()  # same responses, shorter EOS fill
  keep = np.arange(len(a)) != tok.eos_id
  assert (a[keep] == b[keep]).all() and a[tok.eos_id] < b[tok.eos_id]
  with pytest.raises(ValueError, match="prompt_width=4"):
    R.PromptRows.from_problems(problems, tok, 96, prompt_width=4)
  batch = EvalSplit(rows, batch_size=8).batch(1)
  assert batch["prompt_mask"].shape == (8, 96) and batch["weight"].tolist() == [1] * 4 + [0] * 4
  assert (batch["prompt_mask"][4:] == 0).all()


def test_task_config_from_data_fields_and_disjoint_two_digit_split(tok):
  """data.reasoning.arith_digits / arith_ops / sort_len reach the generator, and the
  2-digit arithmetic of the shipped recipe keeps train and test disjoint by problem."""
  cfg = config_lib.load_config("configs/reasoning_llada.py", [
      "data.reasoning.arith_digits='2,2'", "data.reasoning.sort_len='3,5'",
      "data.reasoning.train_problems=3000", "data.reasoning.test_problems=200"])
  task = R.task_config(cfg.data)
  assert (task.arith_min_digits, task.arith_max_digits, task.arith_ops) == (2, 2, "+")
  assert (task.sort_min_len, task.sort_max_len) == (3, 5)
  train_rows, _ = R.config_split(cfg.data, tok, "train")
  _, test = R.config_split(cfg.data, tok, "test")
  train = R.generate("train", 3000, seed=int(cfg.data.seed), config=task,
                     families=["arithmetic"])
  assert train_rows.num_rows == 3000 and len(test) == 200
  for p in train:
    a, b = (int(v) for v in p.key.split("|")[2].split(","))
    assert 10 <= a <= 99 and 10 <= b <= 99
    _check_arithmetic(p)
  assert not {p.key for p in train} & set(test.keys)
  with pytest.raises(config_lib.ConfigError, match="arith_digits"):
    config_lib.load_config("configs/reasoning_llada.py", ["data.reasoning.arith_digits='3,2'"])
  with pytest.raises(config_lib.ConfigError, match="arith_ops"):
    config_lib.load_config("configs/reasoning_llada.py", ["data.reasoning.arith_ops='*'"])
