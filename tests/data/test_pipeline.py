"""Tests of idlm_jax.data.pipeline and idlm_jax.data.sources (CPU, small data)."""

import gzip
import json
import math

import numpy as np
import pytest

from configs import base
from idlm_jax.data import pipeline, sources
from idlm_jax.data.pipeline import (EvalSplit, TrainIterator, get_datasets, load_split,
                                    unigram_baseline)
from idlm_jax.data.sources import DataNotFoundError
from idlm_jax.data.tokenizers import get_tokenizer

DOCS = [f"Document number {i} says {'hello ' * (i % 7)}and then stops." for i in range(300)]


def make_cfg(cache_dir, **overrides):
  """config.data from configs/base.py with overrides."""
  cfg = base.get_config().data
  cfg.cache_dir = str(cache_dir)
  cfg.update(overrides)
  return cfg


def token_stream(tok, docs):
  """doc0 + [EOS] + doc1 + [EOS] + ... as the wrap packer sees it."""
  return [t for d in docs for t in tok.encode(d) + [tok.eos_id]]


def write_txt_folder(folder, docs):
  """Writes docs as lines of a .txt and a .txt.gz file plus records of a .jsonl file."""
  folder.mkdir(parents=True, exist_ok=True)
  third = len(docs) // 3
  (folder / "a.txt").write_text("\n".join(docs[:third]) + "\n")
  with gzip.open(folder / "b.txt.gz", "wt") as f:
    f.write("\n\n".join(docs[third:2 * third]))  # blank lines are skipped
  (folder / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n"
                                          for d in docs[2 * third:]))
  return folder


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
  """Train iterator rows and validation rows of the embedded corpus (demo BPE, L=32)."""
  cfg = make_cfg(tmp_path_factory.mktemp("cache"), seq_len=32)
  tok = get_tokenizer(cfg.tokenizer)
  return cfg, tok, load_split(cfg, tok, "train"), load_split(cfg, tok, "validation")


# ------------------------------------------------------------------ rows


def test_wrap_rows_are_bos_body_eos_and_reproduce_the_stream(tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, "TOKENIZE_BATCH_DOCS", 7)  # remainders cross batches
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(tmp_path / "docs.txt"),
                 seq_len=16)
  (tmp_path / "docs.txt").write_text("\n".join(DOCS))
  tok = get_tokenizer(cfg.tokenizer)
  rows = load_split(cfg, tok, "train")
  ids = np.asarray(rows.rows)
  assert ids.dtype == np.uint16 and ids.shape[1] == 16 and rows.lengths is None
  assert (ids[:, 0] == tok.bos_id).all() and (ids[:, -1] == tok.eos_id).all()
  stream = token_stream(tok, [d for d in DOCS if sources.in_split(d, "train")])
  assert len(ids) == len(stream) // 14
  assert ids[:, 1:-1].ravel().tolist() == stream[:len(ids) * 14]
  assert rows.gather(np.arange(3))["attention_mask"].all()


def test_pad_rows_truncate_pad_and_mask(tmp_path):
  docs = ["short one", "a much longer line " * 10]
  (tmp_path / "d.txt").write_text("\n".join(docs))
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(tmp_path / "d.txt"),
                 seq_len=12, wrap=False)
  tok = get_tokenizer(cfg.tokenizer)
  train_docs = [d for d in docs if sources.in_split(d, "train")]
  batch = load_split(cfg, tok, "train").gather(np.arange(len(train_docs)))
  for doc, ids, mask in zip(train_docs, batch["input_ids"], batch["attention_mask"]):
    expected = tok.encode(doc, add_special_tokens=True)
    expected = expected[:11] + [tok.eos_id] if len(expected) > 12 else expected
    n = len(expected)
    assert ids[:n].tolist() == expected and (ids[n:] == tok.pad_id).all()
    assert mask.tolist() == [1] * n + [0] * (12 - n)
  assert batch["input_ids"].dtype == batch["attention_mask"].dtype == np.int32


def test_row_dtype():
  assert pipeline.row_dtype(2048) == np.uint16 and pipeline.row_dtype(50258) == np.uint16
  assert pipeline.row_dtype(100_000) == np.int32


# ------------------------------------------------------------------ sources


def test_passages_join_runs_of_non_empty_lines(tmp_path):
  (tmp_path / "p.txt").write_text("  one \n\ntwo\n   \nthree\nfour  five\n\n")
  assert list(sources.iter_passages(tmp_path / "p.txt", 3)) == ["one two three", "four  five"]


@pytest.mark.parametrize("name", sources.EMBEDDED_CORPORA)
def test_embedded_passages_are_the_file_lines_and_no_line_crosses_the_split(name):
  path = sources.embedded_paths(name)[0]
  lines, n = list(sources.iter_text_lines(path)), sources.PASSAGE_LINES
  passages = [" ".join(lines[i:i + n]) for i in range(0, len(lines), n)]
  assert list(sources.iter_passages(path, n)) == passages
  train = list(sources.embedded_source(name, "train"))
  val = list(sources.embedded_source(name, "validation"))
  # Each passage (hence each of its lines) is wholly on one side, in file order.
  assert [p for p in passages if not sources.is_validation_text(p)] == train
  assert [p for p in passages if sources.is_validation_text(p)] == val


def test_embedded_split_is_fixed_and_disjoint():
  train = list(sources.embedded_source(sources.EMBEDDED_CORPORA, "train"))
  val = list(sources.embedded_source(",".join(sources.EMBEDDED_CORPORA), "validation"))
  assert not set(val) & set(train)
  assert all(sources.is_validation_text(p) for p in val)
  assert not any(sources.is_validation_text(p) for p in train)
  # Pinned counts: a change of the passage/split rule or of the shipped corpus shows up here.
  assert (len(train), len(val)) == (7708, 390)
  assert 0.04 < len(val) / (len(train) + len(val)) < 0.06


def test_embedded_wrap_rows_are_the_train_passage_stream(embedded):
  _, tok, train_rows, val_rows = embedded
  assert train_rows.info["num_docs"] == 7708 and train_rows.lengths is None
  ids, body = np.asarray(train_rows.rows), train_rows.seq_len - 2
  stream = token_stream(tok, sources.embedded_source(sources.EMBEDDED_CORPORA, "train"))
  assert len(ids) == len(stream) // body
  assert ids[:, 1:-1].ravel().tolist() == stream[:len(ids) * body]
  baseline = unigram_baseline(train_rows, val_rows)
  assert 3.0 < baseline < math.log(tok.model_vocab_size)


def test_embedded_cache_key_includes_the_passage_rule(tmp_path, monkeypatch):
  cfg = make_cfg(tmp_path / "cache", embedded_corpora="devil", seq_len=32)
  tok = get_tokenizer(cfg.tokenizer)
  before = load_split(cfg, tok, "train").info
  monkeypatch.setattr(sources, "PASSAGE_LINES", 8)
  after = load_split(cfg, tok, "train").info
  assert after["key"] != before["key"]
  assert after["identity"]["passage_lines"] == 8 and after["num_docs"] > before["num_docs"]


def test_unigram_baseline_formula(tmp_path):
  class Counts:
    def __init__(self, counts):
      self.counts = np.asarray(counts, np.int64)

    def token_counts(self):
      return self.counts

  train, val = Counts([3, 1, 0, 0]), Counts([1, 0, 2, 0])
  p = np.array([4, 2, 1, 1]) / 8
  expected = -(np.log(p[0]) + 2 * np.log(p[2])) / 3
  assert unigram_baseline(train, val) == pytest.approx(expected)


def test_token_counts_skip_padding(tmp_path):
  (tmp_path / "d.txt").write_text("\n".join(DOCS[:40]))
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(tmp_path / "d.txt"),
                 seq_len=64, wrap=False)
  tok = get_tokenizer(cfg.tokenizer)
  rows = load_split(cfg, tok, "train")
  counts = rows.token_counts()
  expected = np.bincount([t for d in DOCS[:40] if sources.in_split(d, "train")
                          for t in tok.encode(d, add_special_tokens=True)],
                         minlength=tok.model_vocab_size)
  np.testing.assert_array_equal(counts, expected)
  np.testing.assert_array_equal(rows.token_counts(), counts)  # from the cached file
  assert rows.token_counts(num_rows=2).sum() == rows.lengths[:2].sum()


def test_text_files_folder_of_txt_gz_and_jsonl(tmp_path):
  folder = write_txt_folder(tmp_path / "docs", DOCS)
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(folder), wrap=False,
                 seq_len=48)
  tok = get_tokenizer(cfg.tokenizer)
  train, val = load_split(cfg, tok, "train"), load_split(cfg, tok, "validation")
  assert train.num_rows + val.num_rows == len(DOCS)
  decoded = tok.decode_batch(np.asarray(val.rows), skip_special_tokens=True)
  assert decoded == [d for d in DOCS if sources.is_validation_text(d)]
  glob_cfg = make_cfg(tmp_path / "cache", source="text_files", wrap=False, seq_len=48,
                      path=str(folder / "*.jsonl"))
  assert load_split(glob_cfg, tok, "train").num_rows == sum(
      sources.in_split(d, "train") for d in DOCS[200:])


def test_max_train_docs_limits_training_docs(tmp_path):
  (tmp_path / "d.txt").write_text("\n".join(DOCS))
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(tmp_path / "d.txt"),
                 wrap=False, max_train_docs=25)
  tok = get_tokenizer(cfg.tokenizer)
  assert load_split(cfg, tok, "train").num_rows == 25


def test_owt_local_jsonl_validation_is_the_last_docs(tmp_path):
  folder = tmp_path / "owt"
  folder.mkdir()
  for part, docs in enumerate((DOCS[:6], DOCS[6:10])):
    (folder / f"part{part}.jsonl").write_text(
        "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
  cfg = make_cfg(tmp_path / "cache", source="owt", path=str(folder), owt_val_docs=3,
                 wrap=False, seq_len=40)
  tok = get_tokenizer(cfg.tokenizer)
  for split, expected in (("train", DOCS[:7]), ("validation", DOCS[7:10])):
    rows = np.asarray(load_split(cfg, tok, split).rows)
    assert tok.decode_batch(rows, skip_special_tokens=True) == expected


def test_owt_txt_files_are_documents_and_parquet_is_read(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  folder = tmp_path / "owt"
  folder.mkdir()
  for i in range(3):
    (folder / f"doc{i}.txt").write_text(f"{DOCS[i]}\n{DOCS[i + 1]}")
  pq.write_table(pa.table({"text": DOCS[10:14]}), folder / "z.parquet")
  cfg = make_cfg(tmp_path / "cache", source="owt", path=str(folder), owt_val_docs=2,
                 wrap=False, seq_len=64)
  tok = get_tokenizer(cfg.tokenizer)
  train = tok.decode_batch(np.asarray(load_split(cfg, tok, "train").rows), True)
  val = tok.decode_batch(np.asarray(load_split(cfg, tok, "validation").rows), True)
  assert train == [f"{DOCS[i]}\n{DOCS[i + 1]}" for i in range(3)] + DOCS[10:12]
  assert val == DOCS[12:14]


def test_missing_paths_name_the_path(tmp_path):
  tok = get_tokenizer("demo-bpe-2048")
  missing = str(tmp_path / "nowhere")
  for source in ("text_files", "owt"):
    cfg = make_cfg(tmp_path / "cache", source=source, path=missing)
    with pytest.raises(DataNotFoundError, match="nowhere"):
      load_split(cfg, tok, "train")
  with pytest.raises(DataNotFoundError, match="data.path"):
    load_split(make_cfg(tmp_path / "cache", source="owt", path=""), tok, "train")
  with pytest.raises(ValueError, match="embedded_corpora"):
    load_split(make_cfg(tmp_path / "cache", embedded_corpora="austen,nope"), tok, "train")
  with pytest.raises(ValueError, match="data.source"):
    load_split(make_cfg(tmp_path / "cache", source="lm2b"), tok, "train")


def test_owt_from_hf_without_datasets_says_how_to_fix(tmp_path, monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import fails
  cfg = make_cfg(tmp_path / "cache", source="owt", path="hf:openwebtext")
  with pytest.raises(DataNotFoundError, match="datasets"):
    load_split(cfg, get_tokenizer("gpt2"), "train")


def test_lm1b_detokenizer():
  cases = {
      "I do n't know , he said .": "I do n't know, he said.",
      'He said " yes " ( twice ) at http : / / x.com / a ?':
          'He said "yes" (twice) at http://x.com/a?',
      "It 's $ 5 or £ 3 ; see [ 1 ] !": "It's $5 or £3; see [1]!",
      "Mr. Smith 's dog : ' Rex ' ...": "Mr. Smith's dog: 'Rex' ...",
  }
  for raw, clean in cases.items():
    assert sources.lm1b_detokenize(raw) == clean


LM1B_FAKE = {
    "train": ["The cat sat on the mat .", "It 's a \" test \" , really !",
              "Prices rose 5 % ( to $ 10 ) ."],
    "test": ["What happened next ?", "Nothing ; nobody knows ."],
}


@pytest.mark.slow
def test_tfds_lm1b_through_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow as tf

  def fake_as_dataset(self, split, **kwargs):
    del self, kwargs
    return tf.data.Dataset.from_tensor_slices({"text": LM1B_FAKE[str(split)]})

  cfg = make_cfg(tmp_path / "cache", source="tfds_lm1b", tokenizer="bert-base-uncased",
                 tfds_data_dir=str(tmp_path / "tfds"), wrap=False, seq_len=24)
  tok = get_tokenizer(cfg.tokenizer)
  with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset):
    rows = {s: load_split(cfg, tok, s) for s in ("train", "validation")}
  for split, tfds_split in (("train", "train"), ("validation", "test")):
    expected = [tok.encode(sources.lm1b_detokenize(t), add_special_tokens=True)
                for t in LM1B_FAKE[tfds_split]]
    got = [r[:n].tolist() for r, n in zip(rows[split].rows, rows[split].lengths)]
    assert got == expected
  assert tok.decode(rows["validation"].rows[0], skip_special_tokens=True) == (
      "what happened next?")


def test_tfds_lm1b_random_mock_data_builds_rows(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = make_cfg(tmp_path / "cache", source="tfds_lm1b", tokenizer="bert-base-uncased",
                 tfds_data_dir=str(tmp_path / "tfds"), wrap=False, seq_len=16)
  with tfds.testing.mock_data(num_examples=9):
    assert load_split(cfg, get_tokenizer(cfg.tokenizer), "validation").num_rows == 9


def test_tfds_lm1b_missing_data_says_how_to_prepare(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  cfg = make_cfg(tmp_path / "cache", source="tfds_lm1b", tokenizer="bert-base-uncased",
                 tfds_data_dir=str(tmp_path / "empty_tfds"))
  with pytest.raises(DataNotFoundError, match="tfds.load") as info:
    load_split(cfg, get_tokenizer(cfg.tokenizer), "train")
  assert "tfds_data_dir" in str(info.value) and str(tmp_path / "empty_tfds") in str(info.value)
  assert not list((tmp_path / "cache").iterdir())  # nothing half-written in the cache


# ------------------------------------------------------------------ cache


def test_cache_hit_gives_identical_arrays_without_retokenizing(tmp_path, monkeypatch):
  folder = write_txt_folder(tmp_path / "docs", DOCS)
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(folder), wrap=False)
  tok = get_tokenizer(cfg.tokenizer)
  first = load_split(cfg, tok, "train")
  monkeypatch.setattr(pipeline, "_build_split", lambda *a, **k: pytest.fail("re-tokenized"))
  second = load_split(cfg, tok, "train")
  assert isinstance(second.rows, np.memmap)
  np.testing.assert_array_equal(first.rows, second.rows)
  np.testing.assert_array_equal(first.lengths, second.lengths)
  assert first.fingerprint == second.fingerprint
  assert not [p for p in (tmp_path / "cache").iterdir() if "tmp" in p.name or
              p.suffix == ".raw"]


def test_cache_key_changes_with_data_and_settings(tmp_path):
  (tmp_path / "d.txt").write_text("\n".join(DOCS))
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(tmp_path / "d.txt"))
  tok = get_tokenizer(cfg.tokenizer)
  key = load_split(cfg, tok, "train").info["key"]
  assert load_split(cfg, get_tokenizer("gpt2"), "train").info["key"] != key
  cfg.seq_len = 48
  assert load_split(cfg, tok, "train").info["key"] != key
  cfg.seq_len = 64
  (tmp_path / "d.txt").write_text("\n".join(DOCS[:-1]))
  assert load_split(cfg, tok, "train").info["key"] != key


# ------------------------------------------------------------------ iterators


def test_train_iterator_is_deterministic_and_visits_each_row_once_per_epoch(embedded):
  _, _, train_rows, _ = embedded
  it_a = TrainIterator(train_rows, global_batch_size=512, seed=3)
  it_b = TrainIterator(train_rows, global_batch_size=512, seed=3)
  for _ in range(3):
    a, b = next(it_a), next(it_b)
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  assert a["input_ids"].shape == (512, 32) and a["input_ids"].dtype == np.int32
  epoch0 = np.concatenate([it_a.global_batch_indices(0, b) for b in
                           range(it_a.steps_per_epoch)])
  assert len(np.unique(epoch0)) == len(epoch0) == it_a.steps_per_epoch * 512
  other = TrainIterator(train_rows, global_batch_size=512, seed=4)
  assert not np.array_equal(other.global_batch_indices(0, 0), it_a.global_batch_indices(0, 0))
  assert not np.array_equal(it_a.global_batch_indices(1, 0), it_a.global_batch_indices(0, 0))
  ordered = TrainIterator(train_rows, global_batch_size=512, shuffle=False)
  np.testing.assert_array_equal(next(ordered)["input_ids"], train_rows.rows[:512])


def test_get_state_set_state_resumes_exactly(tmp_path):
  (tmp_path / "d.txt").write_text("\n".join(DOCS))
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(tmp_path / "d.txt"),
                 wrap=False, seq_len=16)
  rows = load_split(cfg, get_tokenizer(cfg.tokenizer), "train")
  reference = TrainIterator(rows, global_batch_size=64, seed=1)
  expected = [next(reference)["input_ids"] for _ in range(12)]  # crosses epochs
  assert reference.steps_per_epoch < 12
  interrupted = TrainIterator(rows, global_batch_size=64, seed=1)
  for _ in range(5):
    next(interrupted)
  state = json.loads(json.dumps(interrupted.get_state()))
  resumed = TrainIterator(rows, global_batch_size=64, seed=1)
  resumed.set_state(state)
  for want in expected[5:]:
    np.testing.assert_array_equal(next(resumed)["input_ids"], want)


def test_set_state_rejects_other_data_or_order(embedded, tmp_path):
  _, _, train_rows, _ = embedded
  (tmp_path / "d.txt").write_text("\n".join(DOCS))
  cfg = make_cfg(tmp_path / "cache", source="text_files", path=str(tmp_path / "d.txt"),
                 seq_len=32)
  other_rows = load_split(cfg, get_tokenizer(cfg.tokenizer), "train")
  state = TrainIterator(train_rows, global_batch_size=8).get_state()
  with pytest.raises(ValueError, match="fingerprint"):
    TrainIterator(other_rows, global_batch_size=8).set_state(state)
  with pytest.raises(ValueError, match="seed"):
    TrainIterator(train_rows, global_batch_size=8, seed=9).set_state(state)


def test_two_host_slices_concatenate_to_the_global_batch(embedded):
  _, _, train_rows, _ = embedded
  single = TrainIterator(train_rows, global_batch_size=32, seed=5)
  hosts = [TrainIterator(train_rows, global_batch_size=32, seed=5, process_index=p,
                         process_count=2) for p in range(2)]
  for _ in range(4):
    parts = [next(h) for h in hosts]
    whole = next(single)
    for key in ("input_ids", "attention_mask"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  with pytest.raises(ValueError, match="multiple"):
    TrainIterator(train_rows, global_batch_size=33, process_count=2)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_split_covers_every_row_once_with_weights(embedded, process_count):
  _, tok, _, val_rows = embedded
  splits = [EvalSplit(val_rows, batch_size=48, process_index=p, process_count=process_count)
            for p in range(process_count)]
  assert val_rows.num_rows % 48 != 0  # the last batch needs dummy rows
  seen = []
  for batches in zip(*splits):
    for batch in batches:
      real = batch["weight"] == 1
      assert set(np.unique(batch["weight"])) <= {0.0, 1.0}
      assert (batch["attention_mask"][~real] == 0).all()
      assert (batch["input_ids"][~real] == tok.pad_id).all()
      seen.append(batch["input_ids"][real])
  np.testing.assert_array_equal(np.concatenate(seen), val_rows.rows)
  assert len(splits[0]) == math.ceil(val_rows.num_rows / 48)


def test_eval_split_honors_max_val_rows(embedded):
  _, _, _, val_rows = embedded
  split = EvalSplit(val_rows, batch_size=16, max_rows=40)
  weights = np.concatenate([b["weight"] for b in split])
  assert split.num_rows == 40 and weights.sum() == 40 and len(weights) == 48


def test_get_datasets_returns_sharded_iterators(embedded):
  cfg, tok, train_rows, val_rows = embedded
  cfg = cfg.copy_and_resolve_references()
  cfg.max_val_rows = 100
  train, val = get_datasets(cfg, tok, global_batch_size=16, eval_batch_size=8,
                            process_index=1, process_count=2)
  batch = next(train)
  assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, 32)
  assert train.num_rows == train_rows.num_rows
  assert train.steps_per_epoch == train_rows.num_rows // 16
  assert val.num_rows == 100 and next(iter(val))["weight"].shape == (4,)
  assert unigram_baseline(train, val) > 0
  assert get_datasets(cfg, "demo-bpe-2048", global_batch_size=16,
                      eval_batch_size=8)[0].rows.fingerprint == train_rows.fingerprint
