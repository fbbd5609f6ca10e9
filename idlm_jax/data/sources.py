"""Document sources: where the text of each split comes from, as an iterator of strings.

Each source yields the documents of one split ("train" or "validation") in a fixed order and
describes itself with a JSON-able `identity` (everything that changes the documents: files
with sizes and mtimes, split rule, limits) that keys the token cache.

* "embedded": the public-domain corpus shipped in `assets/corpora`. Its files are hard-wrapped
  prose (~70 characters a line), so one doc is a PASSAGE: PASSAGE_LINES consecutive non-empty
  lines of one file (the last passage of a file may be shorter), stripped and joined with
  single spaces. One line per doc would put an [EOS] mid-sentence every ~20 tokens.
* "text_files": local .txt/.txt.gz (one line = one doc, unlike "embedded") and
  .jsonl/.jsonl.gz (field "text").
* "tfds_lm1b": TFDS lm1b (validation = its "test" split), with MDLM's LM1B detokenizer.
* "owt": OpenWebText from local files or "hf:openwebtext"; the last `owt_val_docs`
  documents are the validation split (MDLM's openwebtext-split).

Embedded passages and text_files documents go to validation when crc32(text) % 100 < 5: a
fixed rule, never random per run, so a document and all its duplicates are always on the same
side (a line belongs to exactly one passage, so no line is on both sides).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import itertools
import json
import os
import pathlib
import re
import zlib
from typing import Callable, Iterable, Iterator

SPLITS = ("train", "validation")
VALIDATION_PERCENT = 5
PASSAGE_LINES = 16  # lines per embedded-corpus document (part of the cache key)
CORPORA_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "corpora"
EMBEDDED_CORPORA = ("austen", "shakespeare_milton", "devil", "jargon")
TEXT_FILE_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
OWT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
LM1B_DETOKENIZER_VERSION = 1
TFDS_PREPARE_HINT = (
    "run `python -c 'import tensorflow_datasets as tfds; tfds.load(\"lm1b\")'` on a machine "
    "with internet and copy ~/tensorflow_datasets/lm1b, or set data.tfds_data_dir")


class DataNotFoundError(FileNotFoundError):
  """Data for a source is missing; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class DocSource:
  """The documents of one split: what identifies them and how to iterate them."""
  identity: dict
  iter_docs: Callable[[], Iterator[str]]

  def __iter__(self) -> Iterator[str]:
    return self.iter_docs()


def is_validation_text(text: str) -> bool:
  """The fixed hash split rule: True when `text` belongs to the validation split."""
  return zlib.crc32(text.encode("utf-8")) % 100 < VALIDATION_PERCENT


def in_split(text: str, split: str) -> bool:
  """True when `text` belongs to `split` under the hash split rule."""
  return is_validation_text(text) == (split == "validation")


def _check_split(split: str) -> None:
  """Raises ValueError for a split name other than train/validation."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")


def _file_stats(paths: Iterable[pathlib.Path]) -> list:
  """[path, size, mtime_ns] for each file (cache-key material)."""
  stats = []
  for p in paths:
    st = p.stat()
    stats.append([str(p), st.st_size, st.st_mtime_ns])
  return stats


def _open_text(path: pathlib.Path):
  """Opens a text file, transparently gunzipping *.gz."""
  if path.name.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8", errors="replace")
  return open(path, "rt", encoding="utf-8", errors="replace")


def iter_text_lines(path: pathlib.Path) -> Iterator[str]:
  """Stripped, non-empty lines of a .txt / .txt.gz file."""
  with _open_text(path) as f:
    for line in f:
      line = line.strip()
      if line:
        yield line


def iter_jsonl_texts(path: pathlib.Path) -> Iterator[str]:
  """The "text" field of each non-empty line of a .jsonl / .jsonl.gz file."""
  with _open_text(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      record = json.loads(line)
      if not isinstance(record, dict) or "text" not in record:
        raise ValueError(f"{path}:{lineno}: expected a JSON object with a \"text\" field")
      yield record["text"]


def _has_suffix(path: pathlib.Path, suffixes: tuple[str, ...]) -> bool:
  """True when the file name ends with one of `suffixes`."""
  return path.name.endswith(suffixes)


def resolve_files(path: str, suffixes: tuple[str, ...], source: str) -> list[pathlib.Path]:
  """Sorted data files named by a file, folder (recursive) or glob; errors if there are none."""
  if not path:
    raise DataNotFoundError(f"data.source={source!r} needs data.path: a file, folder or glob "
                            f"of {'/'.join(suffixes)} files")
  expanded = os.path.expanduser(path)
  candidates = [pathlib.Path(p) for p in sorted(glob.glob(expanded, recursive=True))]
  files = []
  for c in candidates:
    if c.is_dir():
      files.extend(p for p in sorted(c.rglob("*")) if p.is_file() and _has_suffix(p, suffixes))
    elif c.is_file() and _has_suffix(c, suffixes):
      files.append(c)
  if not files:
    what = "does not exist" if not candidates else "contains no matching files"
    raise DataNotFoundError(f"data.path={path!r} for data.source={source!r} {what} "
                            f"(accepted files: {', '.join(suffixes)})")
  return sorted({f.resolve() for f in files})


def _limit(docs: Iterator[str], max_docs: int) -> Iterator[str]:
  """The first `max_docs` documents (all when max_docs <= 0)."""
  return itertools.islice(docs, max_docs) if max_docs > 0 else docs


# ------------------------------------------------------------------ embedded / text files


def embedded_paths(names: str | Iterable[str],
                   corpora_dir: pathlib.Path = CORPORA_DIR) -> list[pathlib.Path]:
  """Paths of the named embedded corpora (comma-separated string or list)."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  names = list(names)
  unknown = [n for n in names if n not in EMBEDDED_CORPORA]
  if unknown or not names:
    raise ValueError(f"data.embedded_corpora: unknown or empty {unknown or names!r}; "
                     f"expected a comma-separated subset of {EMBEDDED_CORPORA}")
  paths = [corpora_dir / f"{n}.txt.gz" for n in names]
  for p in paths:
    if not p.is_file():
      raise DataNotFoundError(f"embedded corpus file missing: {p} (rebuild the shipped "
                              "assets with `python -m idlm_jax.data.build_assets`)")
  return paths


def iter_passages(path: pathlib.Path, passage_lines: int) -> Iterator[str]:
  """Runs of `passage_lines` consecutive non-empty stripped lines, joined with spaces."""
  lines = iter_text_lines(path)
  while chunk := list(itertools.islice(lines, passage_lines)):
    yield " ".join(chunk)


def iter_split_passages(paths: Iterable[pathlib.Path], split: str,
                        passage_lines: int = PASSAGE_LINES) -> Iterator[str]:
  """Passages of .txt(.gz) files that fall in `split` under the hash rule."""
  for path in paths:
    yield from (p for p in iter_passages(path, passage_lines) if in_split(p, split))


def embedded_source(names: str, split: str, max_docs: int = 0) -> DocSource:
  """The shipped public-domain corpus as passages, split by passage hash."""
  _check_split(split)
  paths, passage_lines = embedded_paths(names), PASSAGE_LINES
  identity = {"source": "embedded", "split": split, "files": _file_stats(paths),
              "passage_lines": passage_lines, "max_docs": max_docs}
  return DocSource(identity, lambda: _limit(
      iter_split_passages(paths, split, passage_lines), max_docs))


def _iter_file_docs(path: pathlib.Path) -> Iterator[str]:
  """Documents of one text_files file: lines of .txt(.gz), records of .jsonl(.gz)."""
  if _has_suffix(path, (".jsonl", ".jsonl.gz")):
    return (t for t in iter_jsonl_texts(path) if t.strip())
  return iter_text_lines(path)


def text_files_source(path: str, split: str, max_docs: int = 0) -> DocSource:
  """Local .txt/.jsonl files, one doc per line/record, split by the hash rule."""
  _check_split(split)
  files = resolve_files(path, TEXT_FILE_SUFFIXES, "text_files")
  identity = {"source": "text_files", "split": split, "files": _file_stats(files),
              "max_docs": max_docs}

  def docs() -> Iterator[str]:
    for f in files:
      yield from (d for d in _iter_file_docs(f) if in_split(d, split))

  return DocSource(identity, lambda: _limit(docs(), max_docs))


# ------------------------------------------------------------------ LM1B (TFDS)

_LM1B_DETOKENIZER_RULES = [
    (re.compile(pattern), repl) for pattern, repl in (
        (re.escape("http : / / "), "http://"),
        (re.escape("https : / / "), "https://"),
        (r" '(\w+)", r"'\1"),
        (r" (\w+) \. ", r" \1. "),
        (r" (\w+) \.$", r" \1."),
        (re.escape(" ? "), "? "),
        (r" \?$", "?"),
        (re.escape(" ! "), "! "),
        (r" !$", "!"),
        (re.escape(" , "), ", "),
        (re.escape(" : "), ": "),
        (re.escape(" ; "), "; "),
        (re.escape(" / "), "/"),
        (r'" ([^"]+) "', r'"\1"'),
        (r"' ([^']+) '", r"'\1'"),
        (r"\( ([^()]+) \)", r"(\1)"),
        (r"\[ ([^\[\]]+) \]", r"[\1]"),
        (re.escape("$ "), "$"),
        (re.escape("£ "), "£"),
    )
]


def lm1b_detokenize(text: str) -> str:
  """Undoes LM1B's space-separated tokenization (the rules of MDLM's lm1b_detokenizer)."""
  for pattern, repl in _LM1B_DETOKENIZER_RULES:
    text = pattern.sub(repl, text)
  return text


def tfds_data_dir(data_dir: str) -> pathlib.Path:
  """The TFDS data dir: data.tfds_data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  path = data_dir or os.environ.get("TFDS_DATA_DIR", "") or "~/tensorflow_datasets"
  return pathlib.Path(os.path.expanduser(path)).resolve()


def import_tfds():
  """Imports tensorflow_datasets lazily, with GPUs hidden from TensorFlow."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataNotFoundError("data.source='tfds_lm1b' needs tensorflow-datasets and "
                            "tensorflow (pip install 'idlm_jax[tfds]')") from e
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices; keep going.
    pass
  return tfds


def _iter_lm1b(data_dir: pathlib.Path, tfds_split: str) -> Iterator[str]:
  """Detokenized LM1B sentences of one TFDS split, in TFDS's fixed (unshuffled) order."""
  tfds = import_tfds()
  builder = tfds.builder("lm1b", data_dir=str(data_dir))
  try:
    dataset = builder.as_dataset(split=tfds_split, shuffle_files=False)
  except AssertionError as e:  # TFDS's "could not find data in ..." error.
    raise DataNotFoundError(f"TFDS lm1b is not prepared in {data_dir}: "
                            f"{TFDS_PREPARE_HINT}") from e
  for example in tfds.as_numpy(dataset):
    yield lm1b_detokenize(example["text"].decode("utf-8"))


def tfds_lm1b_source(data_dir: str, split: str, max_docs: int = 0) -> DocSource:
  """TFDS lm1b sentences; validation is lm1b's "test" split (MDLM convention)."""
  _check_split(split)
  root = tfds_data_dir(data_dir)
  tfds_split = "train" if split == "train" else "test"
  lm1b_dir = root / "lm1b"
  files = sorted(p for p in lm1b_dir.rglob("*") if p.is_file()) if lm1b_dir.is_dir() else []
  identity = {"source": "tfds_lm1b", "split": tfds_split, "data_dir": str(root),
              "files": _file_stats(files), "detokenizer": LM1B_DETOKENIZER_VERSION,
              "max_docs": max_docs}
  return DocSource(identity, lambda: _limit(_iter_lm1b(root, tfds_split), max_docs))


# ------------------------------------------------------------------ OpenWebText


def _import_pyarrow_parquet():
  """Imports pyarrow.parquet lazily, with a clear error when pyarrow is missing."""
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataNotFoundError("reading .parquet files needs pyarrow (pip install pyarrow)") from e
  return pq


def _iter_owt_file(path: pathlib.Path) -> Iterator[str]:
  """Documents of one OWT file: a whole .txt(.gz) file, .jsonl records or parquet rows."""
  if _has_suffix(path, (".txt", ".txt.gz")):
    with _open_text(path) as f:
      yield f.read()
  elif _has_suffix(path, (".jsonl", ".jsonl.gz")):
    yield from iter_jsonl_texts(path)
  else:
    parquet = _import_pyarrow_parquet().ParquetFile(path)
    for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
      yield from batch.column(0).to_pylist()


def _count_owt_docs(path: pathlib.Path) -> int:
  """Number of documents `_iter_owt_file` yields for `path` (cheap for txt/parquet)."""
  if _has_suffix(path, (".txt", ".txt.gz")):
    return 1
  if _has_suffix(path, (".jsonl", ".jsonl.gz")):
    with _open_text(path) as f:
      return sum(1 for line in f if line.strip())
  return _import_pyarrow_parquet().ParquetFile(path).metadata.num_rows


def _owt_range(split: str, total: int, val_docs: int, path: str) -> tuple[int, int]:
  """[start, stop) document range of `split`: validation = the last `val_docs` docs."""
  if not 0 < val_docs < total:
    raise ValueError(f"OWT at {path!r} has {total} documents; data.owt_val_docs={val_docs} "
                     "must be at least 1 and leave some documents for training")
  return (0, total - val_docs) if split == "train" else (total - val_docs, total)


def _owt_files_source(path: str, split: str, val_docs: int, max_docs: int) -> DocSource:
  """OWT documents from local files (.txt = one doc per file, .jsonl, .parquet)."""
  files = resolve_files(path, OWT_SUFFIXES, "owt")
  stats = _file_stats(files)

  def docs() -> Iterator[str]:
    total = sum(_count_owt_docs(f) for f in files)
    start, stop = _owt_range(split, total, val_docs, path)
    all_docs = itertools.chain.from_iterable(_iter_owt_file(f) for f in files)
    yield from itertools.islice(all_docs, start, stop)

  identity = {"source": "owt", "split": split, "files": stats, "owt_val_docs": val_docs,
              "max_docs": max_docs}
  return DocSource(identity, lambda: _limit(docs(), max_docs))


def _load_hf_split(name: str, split: str, val_docs: int):
  """The Hugging Face dataset slice of `split` (lazy `datasets` import)."""
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataNotFoundError(f"data.path='hf:{name}' needs the `datasets` package "
                            "(pip install 'idlm_jax[hf]'), or point data.path at local "
                            "OpenWebText .txt/.jsonl/.parquet files") from e
  hf_split = f"train[:-{val_docs}]" if split == "train" else f"train[-{val_docs}:]"
  try:
    return datasets.load_dataset(name, split=hf_split)
  except Exception as e:  # offline / not cached: datasets raises many kinds of errors.
    raise DataNotFoundError(f"could not load Hugging Face dataset {name!r} ({e}); run "
                            f"`python -c 'import datasets; datasets.load_dataset(\"{name}\")'`"
                            " on a machine with internet (and copy ~/.cache/huggingface), "
                            "or point data.path at local OpenWebText files") from e


def _owt_hf_source(name: str, split: str, val_docs: int, max_docs: int) -> DocSource:
  """OWT from the Hugging Face hub: train[:-val_docs] / train[-val_docs:]."""
  dataset = _load_hf_split(name, split, val_docs)
  identity = {"source": "owt", "split": split, "hf": name,
              "fingerprint": getattr(dataset, "_fingerprint", ""), "owt_val_docs": val_docs,
              "max_docs": max_docs}

  def docs() -> Iterator[str]:
    for batch in dataset.iter(batch_size=1000):
      yield from batch["text"]

  return DocSource(identity, lambda: _limit(docs(), max_docs))


def owt_source(path: str, split: str, val_docs: int, max_docs: int = 0) -> DocSource:
  """OpenWebText: local files or "hf:<name>"; validation = the last `val_docs` documents."""
  _check_split(split)
  if path.startswith("hf:"):
    return _owt_hf_source(path[3:], split, val_docs, max_docs)
  return _owt_files_source(path, split, val_docs, max_docs)
