"""Tokenized, cached row arrays and the deterministic train / validation iterators.

Every split is tokenized once into a 2-D array of rows [N, L] (uint16 when the model
vocabulary fits, else int32), saved as .npy under `data.cache_dir` with a key that hashes
everything that affects the rows, and memory-mapped afterwards:

* wrap=True (MDLM `_group_texts`): each document is tokenized without special tokens and
  followed by EOS; the stream is cut into chunks of L-2 tokens and each row is
  [BOS] + chunk + [EOS]. The stream is concatenated over the whole split (MDLM drops the
  remainder of every 1000-document map batch; here only the final remainder is dropped).
* wrap=False (LM1B style): one document per row, [BOS] + tokens[:L-2] + [EOS], padded on the
  right with pad_id; the row lengths are stored so that the attention mask can be rebuilt.

The rows are the random-access source of the grain pipeline in `data/loader.py`
(`TrainIterator`: infinite, deterministic from data.seed, resumable, sharded per host;
`EvalSplit`: the whole validation split once, the last batch padded with weight-0 rows);
`get_datasets` builds both from `config.data`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import pathlib
import tempfile
import time
from typing import Iterable, Iterator

import numpy as np

from idlm_jax import fields as F
from idlm_jax.data import reasoning, sources, synthetic
from idlm_jax.data.loader import EvalSplit, Rows, TrainIterator  # noqa: F401 (API)
from idlm_jax.data.tokenizers import Tokenizer, get_tokenizer, row_dtype
from idlm_jax.fields import Field

CACHE_FORMAT_VERSION = 1
DEFAULT_CACHE_DIR = "~/.cache/idlm_jax"
TOKENIZE_BATCH_DOCS = 2048
_FINGERPRINT_SAMPLES = 64
_COUNT_CHUNK_ROWS = 1 << 16

log = logging.getLogger(__name__)

FIELDS = {
    "data.source": Field(
        "embedded", 'where text comes from: "embedded" (public-domain corpus shipped in the '
        'package), "text_files" (local .txt/.txt.gz/.jsonl files or folders, see data.path), '
        '"tfds_lm1b" (TFDS lm1b, MDLM conventions), "owt" (OpenWebText from local files or the '
        'Hugging Face hub, last data.owt_val_docs documents are validation), "synthetic_hmm" '
        "(the seeded synthetic language with exact likelihoods, data.synthetic), "
        '"reasoning" (the generated prompted-reasoning benchmark, data.reasoning: prompt/'
        "response rows with a prompt_mask; data/reasoning.py).",
        choices=("embedded", "text_files", "tfds_lm1b", "owt", "synthetic_hmm", "reasoning")),
    "data.path": Field("", 'text_files/owt: file, folder or glob; owt also accepts '
                       '"hf:openwebtext".'),
    "data.embedded_corpora": Field("austen,shakespeare_milton,devil,jargon",
                                   "embedded corpora to use (comma separated): austen, "
                                   "shakespeare_milton, devil, jargon."),
    "data.tokenizer": Field("demo-bpe-2048", 'tokenizer: "bert-base-uncased", "gpt2", '
                            '"demo-bpe-2048" (shipped) or a tokenizer.json path.'),
    "data.seq_len": Field(64, "L: tokens per training sequence.",
                          check=F.Check(lambda v: v >= 4, "an integer >= 4")),
    "data.wrap": Field(True, "True: concatenate documents and cut into [BOS] + (L-2) tokens + "
                       "[EOS] rows (OWT style). False: one line/sentence per row with special "
                       "tokens, padded/truncated to L (LM1B style)."),
    "data.shuffle": Field(True, "reshuffle the training rows every epoch (deterministic from "
                          "data.seed)."),
    "data.seed": Field(0, "data-order seed, independent of the model seed."),
    "data.cache_dir": Field("~/.cache/idlm_jax", "tokenized arrays are cached here (memmapped "
                            ".npy)."),
    "data.tfds_data_dir": Field("", 'TFDS data_dir ("" = the TFDS default, '
                                "~/tensorflow_datasets)."),
    "data.owt_val_docs": Field(100_000, "OWT: the last this-many documents form the "
                               "validation split.", check=F.positive),
    "data.max_train_docs": Field(0, ">0: only the first N training documents (embedded: "
                                 "passages).", check=F.non_negative),
    "data.max_val_rows": Field(0, ">0: evaluate on at most N validation rows (quick runs).",
                               check=F.non_negative),
}


# ------------------------------------------------------------------ row building


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
  """Consecutive lists of up to `size` items."""
  it = iter(items)
  while batch := list(itertools.islice(it, size)):
    yield batch


def _concat_with_eos(ids: list[list[int]], eos: int) -> np.ndarray:
  """The token stream doc0 + [EOS] + doc1 + [EOS] + ... as int64."""
  total = sum(len(x) for x in ids) + len(ids)
  stream = itertools.chain.from_iterable(itertools.chain(x, (eos,)) for x in ids)
  return np.fromiter(stream, dtype=np.int64, count=total)


class WrapPacker:
  """Cuts the EOS-separated document stream into [BOS] + (L-2 tokens) + [EOS] rows."""

  def __init__(self, tokenizer: Tokenizer, seq_len: int):
    self.tokenizer, self.seq_len = tokenizer, seq_len
    self.carry = np.zeros(0, np.int64)  # tokens after the last full row (dropped at the end)

  def pack(self, texts: list[str]) -> np.ndarray:
    """Rows completed by adding `texts` to the stream."""
    tok, body = self.tokenizer, self.seq_len - 2
    stream = np.concatenate([self.carry,
                             _concat_with_eos(tok.encode_batch(texts), tok.eos_id)])
    n = len(stream) // body
    rows = np.empty((n, self.seq_len), np.int64)
    rows[:, 0] = tok.bos_id
    rows[:, 1:-1] = stream[:n * body].reshape(n, body)
    rows[:, -1] = tok.eos_id
    self.carry = stream[n * body:]
    return rows


def padded_rows(texts: list[str], tokenizer: Tokenizer,
                seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows [BOS] + tokens[:L-2] + [EOS] right-padded with pad_id, and their lengths."""
  rows = np.full((len(texts), seq_len), tokenizer.pad_id, np.int64)
  lengths = np.empty(len(texts), np.int32)
  for i, ids in enumerate(tokenizer.encode_batch(texts)):
    row = [tokenizer.bos_id, *ids[:seq_len - 2], tokenizer.eos_id]
    rows[i, :len(row)] = row
    lengths[i] = len(row)
  return rows, lengths


class _NpyWriter:
  """Appends row blocks to a raw temp file, then writes them as one .npy atomically."""

  def __init__(self, path: pathlib.Path, dtype: np.dtype, row_shape: tuple[int, ...]):
    self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
    fd, raw = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".raw")
    self._raw_path = pathlib.Path(raw)
    self._raw = os.fdopen(fd, "wb")
    self.num_rows = 0

  def append(self, block: np.ndarray) -> None:
    """Appends rows (checked to fit the dtype)."""
    if block.size and (block.min() < 0 or block.max() > np.iinfo(self.dtype).max):
      raise ValueError(f"token id out of range for {self.dtype} in {self.path.name}")
    self._raw.write(np.ascontiguousarray(block, self.dtype).tobytes())
    self.num_rows += len(block)

  def finish(self) -> None:
    """Writes header + data to a temp .npy and renames it into place."""
    self._raw.close()
    tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
    try:
      with open(tmp, "wb") as out, open(self._raw_path, "rb") as raw:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.num_rows, *self.row_shape)}
        np.lib.format.write_array_header_2_0(out, header)
        while chunk := raw.read(1 << 24):
          out.write(chunk)
      os.replace(tmp, self.path)
    finally:
      self.discard()
      tmp.unlink(missing_ok=True)

  def discard(self) -> None:
    """Removes the raw temp file."""
    self._raw.close()
    self._raw_path.unlink(missing_ok=True)


def _atomic_write_json(path: pathlib.Path, obj: dict) -> None:
  """Writes JSON to a temp file and renames it into place."""
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
  os.replace(tmp, path)


def _content_fingerprint(rows: np.ndarray, lengths: np.ndarray | None) -> str:
  """A hash of the shape and of evenly spaced rows (cheap, independent of file paths)."""
  h = hashlib.sha256(repr((rows.shape, str(rows.dtype))).encode())
  picks = np.unique(np.linspace(0, len(rows) - 1, _FINGERPRINT_SAMPLES).astype(np.int64))
  h.update(np.ascontiguousarray(rows[picks]).tobytes())
  if lengths is not None:
    h.update(np.ascontiguousarray(lengths).tobytes())
  return h.hexdigest()[:32]


# ------------------------------------------------------------------ cached splits


@dataclasses.dataclass(frozen=True)
class _MappedFile:
  """A memory-mapped .npy array in a pickle: its path, reopened read-only on unpickling."""
  path: str


@dataclasses.dataclass
class TokenRows:
  """One tokenized split: memory-mapped rows [N, L] and (wrap=False) row lengths."""
  rows: np.ndarray
  lengths: np.ndarray | None
  pad_id: int
  model_vocab_size: int
  fingerprint: str
  counts_path: pathlib.Path | None = None
  info: dict = dataclasses.field(default_factory=dict)  # cache metadata (docs, tokens, ...)

  @property
  def num_rows(self) -> int:
    """Number of rows N."""
    return len(self.rows)

  def __getstate__(self) -> dict:
    """Pickles memory-mapped arrays by file name (grain sends the rows to its worker
    processes: a pickled np.memmap would carry the whole array)."""
    return {k: _MappedFile(v.filename) if isinstance(v, np.memmap) and v.filename else v
            for k, v in self.__dict__.items()}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update({k: np.load(v.path, mmap_mode="r") if isinstance(v, _MappedFile)
                          else v for k, v in state.items()})

  @property
  def seq_len(self) -> int:
    """Row length L."""
    return self.rows.shape[1]

  def attention_mask(self, index: np.ndarray) -> np.ndarray:
    """int32 [len(index), L] mask, 1 on real tokens."""
    if self.lengths is None:
      return np.ones((len(index), self.seq_len), np.int32)
    return (np.arange(self.seq_len) < self.lengths[index][:, None]).astype(np.int32)

  def gather(self, index: np.ndarray) -> dict:
    """input_ids and attention_mask (int32) of the rows `index`, read in sorted order."""
    index = np.asarray(index, np.int64)
    order = np.argsort(index, kind="stable")
    ids = np.empty((len(index), self.seq_len), np.int32)
    ids[order] = self.rows[index[order]]
    return {"input_ids": ids, "attention_mask": self.attention_mask(index)}

  def _count(self, num_rows: int) -> np.ndarray:
    """Counts of each model id over non-pad tokens of the first `num_rows` rows."""
    counts = np.zeros(self.model_vocab_size, np.int64)
    for start in range(0, num_rows, _COUNT_CHUNK_ROWS):
      index = np.arange(start, min(start + _COUNT_CHUNK_ROWS, num_rows))
      chunk = np.asarray(self.rows[start:index[-1] + 1])
      if self.lengths is not None:
        chunk = chunk[self.attention_mask(index).astype(bool)]
      counts += np.bincount(chunk.ravel(), minlength=self.model_vocab_size)
    return counts

  def token_counts(self, num_rows: int | None = None) -> np.ndarray:
    """int64 [model_vocab_size] counts of non-pad tokens (cached on disk for all rows)."""
    if num_rows is not None and num_rows < self.num_rows:
      return self._count(num_rows)
    if self.counts_path is not None and self.counts_path.is_file():
      return np.load(self.counts_path)
    counts = self._count(self.num_rows)
    if self.counts_path is not None:
      tmp = self.counts_path.with_name(f"{self.counts_path.name}.{os.getpid()}.tmp.npy")
      np.save(tmp, counts)
      os.replace(tmp, self.counts_path)
    return counts


def cache_key(doc_identity: dict, tokenizer: Tokenizer, seq_len: int, wrap: bool) -> str:
  """Hash of everything that determines the rows of a split."""
  material = {"format": CACHE_FORMAT_VERSION, "docs": doc_identity,
              "tokenizer": tokenizer.fingerprint, "seq_len": seq_len, "wrap": wrap}
  return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def _cache_paths(cache_dir: pathlib.Path, stem: str) -> dict:
  """Paths of the files of one cached split."""
  return {k: cache_dir / f"{stem}.{k}.npy" for k in ("rows", "lengths", "counts")} | {
      "meta": cache_dir / f"{stem}.meta.json"}


def _build_split(docs: sources.DocSource, tokenizer: Tokenizer, seq_len: int, wrap: bool,
                 paths: dict, describe: str) -> dict:
  """Tokenizes a split into the cache files and returns its metadata."""
  dtype = row_dtype(tokenizer.model_vocab_size)
  rows_out = _NpyWriter(paths["rows"], dtype, (seq_len,))
  lengths_out = None if wrap else _NpyWriter(paths["lengths"], np.int32, ())
  packer = WrapPacker(tokenizer, seq_len)
  start, last_log, num_docs, num_tokens = time.time(), time.time(), 0, 0
  try:
    for texts in _batched(docs, TOKENIZE_BATCH_DOCS):
      num_docs += len(texts)
      if wrap:
        block = packer.pack(texts)
        rows_out.append(block)
        num_tokens += block.size
      else:
        block, lengths = padded_rows(texts, tokenizer, seq_len)
        rows_out.append(block)
        lengths_out.append(lengths)
        num_tokens += int(lengths.sum())
      if time.time() - last_log > 30:
        last_log = time.time()
        log.info("tokenizing %s: %d docs, %d rows so far", describe, num_docs,
                 rows_out.num_rows)
    if rows_out.num_rows == 0:
      raise ValueError(f"{describe}: {num_docs} documents gave no rows of length "
                       f"{seq_len}; use more data or a smaller data.seq_len")
    rows_out.finish()
    if lengths_out is not None:
      lengths_out.finish()
  except BaseException:
    rows_out.discard()
    if lengths_out is not None:
      lengths_out.discard()
    raise
  return {"num_docs": num_docs, "num_rows": rows_out.num_rows, "num_tokens": num_tokens,
          "seconds": round(time.time() - start, 3)}


def _resolve_cache_dir(cache_dir: str) -> pathlib.Path:
  """The expanded cache folder (created if needed)."""
  path = pathlib.Path(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))
  path.mkdir(parents=True, exist_ok=True)
  return path


def _read_meta(paths: dict, wrap: bool) -> dict | None:
  """The metadata of a complete cached split, or None when it must be (re)built."""
  needed = [paths["meta"], paths["rows"]] + ([] if wrap else [paths["lengths"]])
  if not all(p.is_file() for p in needed):
    return None
  return json.loads(paths["meta"].read_text())


def load_split(data_cfg, tokenizer: Tokenizer, split: str) -> TokenRows:
  """The cached rows of `split` ("train"/"validation"), tokenizing them on a cache miss."""
  seq_len, wrap = int(data_cfg.seq_len), bool(data_cfg.wrap)
  if seq_len < 3:
    raise ValueError(f"data.seq_len={seq_len} is too short: rows need [BOS], a token, [EOS]")
  docs = get_doc_source(data_cfg, split)
  key = cache_key(docs.identity, tokenizer, seq_len, wrap)
  stem = f"{data_cfg.source}-{split}-L{seq_len}-{'wrap' if wrap else 'pad'}-{key}"
  paths = _cache_paths(_resolve_cache_dir(data_cfg.cache_dir), stem)
  meta = _read_meta(paths, wrap)
  if meta is None:
    describe = f"{data_cfg.source}/{split} ({tokenizer.name}, L={seq_len}, wrap={wrap})"
    log.info("tokenizing %s into %s", describe, paths["rows"])
    stats = _build_split(docs, tokenizer, seq_len, wrap, paths, describe)
    rows = np.load(paths["rows"], mmap_mode="r")
    lengths = None if wrap else np.load(paths["lengths"], mmap_mode="r")
    meta = {"key": key, "identity": docs.identity, "tokenizer": tokenizer.name,
            "seq_len": seq_len, "wrap": wrap, **stats,
            "fingerprint": _content_fingerprint(rows, lengths)}
    _atomic_write_json(paths["meta"], meta)
    log.info("%s: %d docs -> %d rows, %d tokens in %.1f s", describe, stats["num_docs"],
             stats["num_rows"], stats["num_tokens"], stats["seconds"])
  rows = np.load(paths["rows"], mmap_mode="r")
  lengths = None if wrap else np.load(paths["lengths"], mmap_mode="r")
  return TokenRows(rows, lengths, tokenizer.pad_id, tokenizer.model_vocab_size,
                   meta["fingerprint"], paths["counts"], info=meta)


# ------------------------------------------------------------------ dispatch


def get_doc_source(data_cfg, split: str) -> sources.DocSource:
  """The DocSource of `split` for the `config.data` fields."""
  max_docs = int(data_cfg.max_train_docs) if split == "train" else 0
  source = data_cfg.source
  if source == "embedded":
    return sources.embedded_source(data_cfg.embedded_corpora, split, max_docs)
  if source == "text_files":
    return sources.text_files_source(data_cfg.path, split, max_docs)
  if source == "tfds_lm1b":
    return sources.tfds_lm1b_source(data_cfg.tfds_data_dir, split, max_docs)
  if source == "owt":
    return sources.owt_source(data_cfg.path, split, int(data_cfg.owt_val_docs), max_docs)
  if source == "synthetic_hmm":  # seeded HMM with exact likelihoods (data/synthetic.py)
    return synthetic.doc_source(data_cfg, split)
  if source == "reasoning":
    raise ValueError('data.source "reasoning" has prompt/response rows, not documents: '
                     "use pipeline.get_datasets or reasoning.config_split")
  raise ValueError(f"unknown data.source {source!r}: expected one of "
                   "'embedded', 'text_files', 'tfds_lm1b', 'owt', 'synthetic_hmm'")


def unigram_baseline(train, val) -> float:
  """Cross-entropy (nats/token) of the validation tokens under the add-one-smoothed train
  unigram over the model vocabulary, non-pad tokens only (the corpus unigram baseline)."""
  train_counts, val_counts = train.token_counts(), val.token_counts()
  log_p = np.log(train_counts + 1.0) - np.log(train_counts.sum() + len(train_counts))
  return float(-(val_counts * log_p).sum() / val_counts.sum())


def get_datasets(data_cfg, tokenizer: Tokenizer | str, *, global_batch_size: int,
                 eval_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> tuple[TrainIterator, EvalSplit]:
  """The training iterator and validation split described by `config.data`."""
  if isinstance(tokenizer, str):
    tokenizer = get_tokenizer(tokenizer)
  if data_cfg.source == "reasoning":  # generated prompt/response rows, no document cache
    train_rows, val_rows = (reasoning.config_split(data_cfg, tokenizer, s)[0]
                            for s in ("train", "test"))
  else:
    train_rows, val_rows = (load_split(data_cfg, tokenizer, s) for s in ("train", "validation"))
  where = dict(process_index=process_index, process_count=process_count)
  train = TrainIterator(train_rows, global_batch_size=global_batch_size, seed=data_cfg.seed,
                        shuffle=data_cfg.shuffle, **where, **reading(data_cfg))
  val = EvalSplit(val_rows, batch_size=eval_batch_size, max_rows=int(data_cfg.max_val_rows),
                  **where, **reading(data_cfg, workers=False))
  return train, val


def reading(data_cfg, workers: bool = True) -> dict:
  """The grain read-ahead arguments of the iterators from `config.data` (data/loader.py)."""
  out = {"prefetch": int(data_cfg.prefetch), "read_threads": int(data_cfg.read_threads)}
  return {**out, "workers": int(data_cfg.workers)} if workers else out
