"""Chat templates, the LLaDA tokenizer and GSM8K answer scoring (data/chat.py)."""

import json

import pytest

from idlm_jax.data import chat
from idlm_jax.data.tokenizers import TokenizerFileError

# The `chat_template` value of GSAI-ML/LLaDA-8B-Instruct's tokenizer_config.json (read from a
# public copy of that folder: github.com/yinj66/support_basis, LLaDA-8B-Instruct-B&S-light/,
# commit 66e6761), with its bos_token "<|startoftext|>".
OFFICIAL_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>"
    "\n\n' }}")
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "user", "content": "  padded question \n\n"}],
    [{"role": "system", "content": "You are a careful solver."},
     {"role": "user", "content": "Natalia sold clips to 48 friends..."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello! "},
     {"role": "user", "content": "Count to 3.\nThen stop."}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_render_llada_equals_the_official_jinja_template(messages):
  jinja2 = pytest.importorskip("jinja2")
  official = jinja2.Environment().from_string(OFFICIAL_TEMPLATE).render(
      messages=messages, bos_token="<|startoftext|>")
  assert chat.render_llada(messages) == official


def test_prompt_text_layout():
  text = chat.prompt_text("What is 2 + 3?", "llada")
  assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?"
                  "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
  assert chat.prompt_text("Q?", "none", user_template="Question: {question}\nAnswer:") == \
      "Question: Q?\nAnswer:"
  with_system = chat.prompt_text("Q?", "llada", system="Be brief.")
  assert with_system.startswith("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\n"
                                "Be brief.<|eot_id|><|start_header_id|>user")
  with pytest.raises(ValueError, match="chat template"):
    chat.prompt_text("Q?", "qwen")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tok")
  (folder / "tokenizer.json").write_text(chat.char_tokenizer_json())
  return chat.llada_tokenizer(folder)


def test_llada_tokenizer_finds_the_special_tokens_by_name(tokenizer):
  tok = tokenizer.tokenizer
  backend = tok.backend
  assert tok.bos_id == backend.token_to_id("<|startoftext|>")
  assert tok.eos_id == tok.pad_id == backend.token_to_id("<|endoftext|>")
  assert tok.mask_id == backend.token_to_id("<|mdm_mask|>")
  assert tokenizer.stop_ids == (backend.token_to_id("<|eot_id|>"), tok.eos_id)
  text = chat.prompt_text("What is 2 + 3?\n", "llada")
  ids = tokenizer.encode(text)
  assert ids[0] == tok.bos_id and ids.count(backend.token_to_id("<|eot_id|>")) == 1
  assert tok.decode(ids) == text  # special tokens in the text are single ids


def test_response_stops_at_eot_or_eos(tokenizer):
  eot, eos = tokenizer.stop_ids
  ids = tokenizer.encode("So 3 + 4 = 7.") + [eot, eos, eos] + tokenizer.encode("99")
  assert chat.response_end(ids, tokenizer.stop_ids) == len("So 3 + 4 = 7.")
  assert tokenizer.response_text(ids) == "So 3 + 4 = 7."
  assert tokenizer.response_text(tokenizer.encode("no stop 5")) == "no stop 5"
  assert chat.response_end([eos, 1], tokenizer.stop_ids) == 0


def test_tokenizer_without_llada_specials_is_an_error(tmp_path):
  (tmp_path / "tokenizer.json").write_text(chat.char_tokenizer_json(["<|endoftext|>"]))
  with pytest.raises(TokenizerFileError, match="<\\|mdm_mask\\|>"):
    chat.llada_tokenizer(tmp_path)


def test_numbers_and_scoring():
  assert chat.gold_number("48 / 2 = 24 clips\n#### 72") == "72"
  assert chat.gold_number("42") == "42"
  assert chat.last_number("She has 3 apples, then 1,250.5 and finally $18.") == "$18"
  assert chat.last_number("no digits") is None
  assert chat.last_number("it drops to -4") == "-4"
  assert chat.same_number("1,000", "1000.00") and chat.same_number("$18", "18")
  assert not chat.same_number("17", "18") and not chat.same_number(None, "18")
  assert not chat.same_number("abc", "18")


def test_read_problems(tmp_path):
  path = tmp_path / "p.jsonl"
  rows = [{"question": "Q1", "answer": "a\n#### 5"}, {"question": "Q2", "answer": "#### 1,200"}]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
  problems = chat.read_problems(path)
  assert [(p.question, p.answer) for p in problems] == [("Q1", "5"), ("Q2", "1,200")]
  assert len(chat.read_problems(path, limit=1)) == 1
  path.write_text('{"question": "Q1"}\n')
  with pytest.raises(ValueError, match="p.jsonl:1"):
    chat.read_problems(path)
  with pytest.raises(FileNotFoundError):
    chat.read_problems(tmp_path / "missing.jsonl")
