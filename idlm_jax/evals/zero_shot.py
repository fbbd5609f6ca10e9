"""Zero-shot likelihood: the validation NELBO / perplexity bound of a checkpoint on whole text files.

`--config.mode=eval --config.eval.zero_shot_path=file.txt` (a file, folder or glob of
.txt/.txt.gz, one document per line, or .jsonl(.gz) with a "text" field) evaluates the latest
checkpoint of the workdir on EVERY document of those files (no train/validation hash split),
tokenized with the model's tokenizer and `data.seq_len` / `data.wrap` exactly as training
data, through the objective's eval_step (so every teacher reports its own bound).
"""

import logging

import numpy as np

from idlm_jax.data import pipeline, sources

log = logging.getLogger("idlm_jax")


def whole_files_source(path: str) -> sources.DocSource:
  """Every document of the text files at `path`, in order."""
  files = sources.resolve_files(path, sources.TEXT_FILE_SUFFIXES, "zero_shot")
  identity = {"source": "zero_shot", "files": sources._file_stats(files)}

  def docs():
    for f in files:
      yield from sources._iter_file_docs(f)

  return sources.DocSource(identity, docs)


def text_rows(data_cfg, tokenizer, path: str) -> pipeline.TokenRows:
  """Cached token rows of all documents in `path` (same row format as the data pipeline)."""
  seq_len, wrap = int(data_cfg.seq_len), bool(data_cfg.wrap)
  docs = whole_files_source(path)
  key = pipeline.cache_key(docs.identity, tokenizer, seq_len, wrap)
  stem = f"zero_shot-L{seq_len}-{'wrap' if wrap else 'pad'}-{key}"
  paths = pipeline._cache_paths(pipeline._resolve_cache_dir(data_cfg.cache_dir), stem)
  meta = pipeline._read_meta(paths, wrap)
  if meta is None:
    describe = f"zero-shot {path} ({tokenizer.name}, L={seq_len}, wrap={wrap})"
    stats = pipeline._build_split(docs, tokenizer, seq_len, wrap, paths, describe)
    rows = np.load(paths["rows"], mmap_mode="r")
    lengths = None if wrap else np.load(paths["lengths"], mmap_mode="r")
    meta = {"key": key, "identity": docs.identity, "tokenizer": tokenizer.name,
            "seq_len": seq_len, "wrap": wrap, **stats,
            "fingerprint": pipeline._content_fingerprint(rows, lengths)}
    pipeline._atomic_write_json(paths["meta"], meta)
    log.info("%s: %d docs -> %d rows", describe, stats["num_docs"], stats["num_rows"])
  rows = np.load(paths["rows"], mmap_mode="r")
  lengths = None if wrap else np.load(paths["lengths"], mmap_mode="r")
  return pipeline.TokenRows(rows, lengths, tokenizer.pad_id, tokenizer.model_vocab_size,
                            meta["fingerprint"], paths["counts"], info=meta)


def text_split(config, tokenizer, path: str, process_index: int = 0,
               process_count: int = 1) -> pipeline.EvalSplit:
  """An EvalSplit over every row of the text files (eval.batch_size rows per batch)."""
  return pipeline.EvalSplit(text_rows(config.data, tokenizer, path),
                            batch_size=config.eval.batch_size, process_index=process_index,
                            process_count=process_count)
