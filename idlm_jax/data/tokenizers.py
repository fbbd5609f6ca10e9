"""Tokenizers with the special ids and vocabulary sizes of the MDLM conventions.

`get_tokenizer(name)` returns a cached `Tokenizer` for one of the shipped vocabularies
("bert-base-uncased", "gpt2", "demo-bpe-2048", "reasoning") or for a `tokenizer.json` path. The Rust
`tokenizers` library does the work; this wrapper only adds the ids the diffusion model needs:

| name              | vocab_size | bos   | eos   | pad   | mask  | model_vocab_size |
|-------------------|-----------:|------:|------:|------:|------:|-----------------:|
| bert-base-uncased |     30522  |   101 |   102 |     0 |   103 |           30522  |
| gpt2              |     50257  | 50256 | 50256 | 50256 | 50257 |           50258  |
| demo-bpe-2048     |      2048  |     1 |     2 |     0 |     3 |            2048  |
| reasoning         |       208  |     1 |     2 |     0 |     3 |             208  |

GPT-2 has no mask token, so (as in MDLM) the mask id is appended after the vocabulary.
"reasoning" is the word-level vocabulary of the prompted-reasoning benchmark
(data/reasoning.py; rebuilt with `python -m idlm_jax.data.reasoning build-tokenizer`).
"""

from __future__ import annotations

import functools
import json
import hashlib
import os
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np
import tokenizers as hf_tokenizers

from idlm_jax.fields import ConfigError

ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "assets"
SHIPPED_TOKENIZERS = ("bert-base-uncased", "gpt2", "demo-bpe-2048", "reasoning")
REASONING_FILE = "reasoning-tokenizer.json"  # built by `python -m idlm_jax.data.reasoning`
DEMO_SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]")
GPT2_EOT = "<|endoftext|>"
MASK_TOKEN = "[MASK]"
_REBUILD_HINT = "rebuild the shipped assets with `python -m idlm_jax.data.build_assets`"

# Special-token spellings looked up (in order) in an arbitrary tokenizer.json.
_BOS_NAMES = ("[BOS]", "<s>", "<bos>", "<|begin_of_text|>", "[CLS]", GPT2_EOT)
_EOS_NAMES = ("[EOS]", "</s>", "<eos>", "<|end_of_text|>", "[SEP]", GPT2_EOT)
_PAD_NAMES = ("[PAD]", "<pad>", "<|pad|>")
_MASK_NAMES = ("[MASK]", "<mask>", "<|mask|>")

# transformers' `PreTrainedTokenizerBase.clean_up_tokenization` (v4.38: ten `str.replace` calls
# applied once, in this order, to the decoded text). `decode(..., clean_up_tokenization_spaces=True)`
# applies it as transformers 4.38 `batch_decode` does by default for every tokenizer (GPT-2's too).
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
             (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
             (" 're", "'re"))
_BERT_CLEANUP = _CLEAN_UP


def clean_up_tokenization(text: str) -> str:
  """The string replacements of transformers 4.38 `clean_up_tokenization` (spaces before
  . ? ! , and contractions), applied once: not idempotent ("a  ." -> "a ." -> "a.")."""
  for old, new in _CLEAN_UP:
    text = text.replace(old, new)
  return text


class Tokenizer:
  """A `tokenizers.Tokenizer` plus the special ids and vocabulary sizes of the model."""

  def __init__(self, name: str, backend: hf_tokenizers.Tokenizer, *, vocab_size: int,
               bos_id: int, eos_id: int, pad_id: int, mask_id: int,
               model_vocab_size: int, bert_cleanup: bool = False):
    self.name = name
    self.backend = backend
    self.vocab_size = vocab_size
    self.bos_id = bos_id
    self.eos_id = eos_id
    self.pad_id = pad_id
    self.mask_id = mask_id
    self.model_vocab_size = model_vocab_size
    self._bert_cleanup = bert_cleanup
    self._fingerprint = None
    self._decoder_backend = None

  def __repr__(self) -> str:
    return (f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, "
            f"model_vocab_size={self.model_vocab_size}, bos={self.bos_id}, "
            f"eos={self.eos_id}, pad={self.pad_id}, mask={self.mask_id})")

  @property
  def fingerprint(self) -> str:
    """A hash of the full tokenizer definition and special ids (used in cache keys)."""
    if self._fingerprint is None:
      h = hashlib.sha256(self.backend.to_str().encode("utf-8"))
      h.update(repr((self.vocab_size, self.bos_id, self.eos_id, self.pad_id, self.mask_id,
                     self.model_vocab_size)).encode())
      self._fingerprint = h.hexdigest()
    return self._fingerprint

  def _with_special(self, ids: list[int]) -> list[int]:
    """Wraps ids as BOS ... EOS ([CLS] ... [SEP] for BERT)."""
    return [self.bos_id, *ids, self.eos_id]

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of one text, optionally wrapped in BOS/EOS."""
    ids = self.backend.encode(text, add_special_tokens=False).ids
    return self._with_special(ids) if add_special_tokens else ids

  def encode_batch(self, texts: Sequence[str],
                   add_special_tokens: bool = False) -> list[list[int]]:
    """Token ids of many texts with the parallel Rust batch encoder."""
    texts = list(texts)
    encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
    ids = [e.ids for e in encode(texts, add_special_tokens=False)]
    if add_special_tokens:
      ids = [self._with_special(x) for x in ids]
    return ids

  def _decoder(self) -> hf_tokenizers.Tokenizer:
    """The backend, extended with a [MASK] token when the mask id is outside it."""
    if self.mask_id < self.backend.get_vocab_size(with_added_tokens=True):
      return self.backend
    if self._decoder_backend is None:
      backend = hf_tokenizers.Tokenizer.from_str(self.backend.to_str())
      backend.add_special_tokens([MASK_TOKEN])
      if backend.token_to_id(MASK_TOKEN) != self.mask_id:
        raise ValueError(f"cannot decode mask id {self.mask_id} for tokenizer {self.name}")
      self._decoder_backend = backend
    return self._decoder_backend

  def _cleanup(self, text: str) -> str:
    """Applies the HF BERT decoding clean-up of spaces before punctuation."""
    return clean_up_tokenization(text) if self._bert_cleanup else text

  def _wordpiece_join(self, ids: list[int], skip_special_tokens: bool) -> str:
    """WordPiece ids as transformers' slow `BertTokenizer` (v4.38) decodes them before its
    clean-up: the tokens joined by single spaces, " ##" removed, stripped. (The Rust WordPiece
    decoder differs: it also rewrites " do not" and cleans per token.)"""
    decoder = self._decoder()
    special = {self.bos_id, self.eos_id, self.pad_id, self.mask_id,
               decoder.token_to_id("[UNK]")} if skip_special_tokens else set()
    tokens = [decoder.id_to_token(i) for i in ids if i not in special]
    return " ".join("[UNK]" if t is None else t for t in tokens).replace(" ##", "").strip()

  def _decode_hf(self, batch: list[list[int]], skip_special_tokens: bool,
                 clean_up: bool) -> list[str]:
    """transformers 4.38 `batch_decode(ids, clean_up_tokenization_spaces=clean_up)`: the slow
    BertTokenizer join for bert-base-uncased (the class Duo's dataloader builds for it), the
    Rust decoder otherwise (GPT2TokenizerFast), then `clean_up_tokenization` once if asked."""
    if self._bert_cleanup:
      texts = [self._wordpiece_join(ids, skip_special_tokens) for ids in batch]
    else:
      texts = self._decoder().decode_batch(batch, skip_special_tokens=skip_special_tokens)
    return [clean_up_tokenization(t) for t in texts] if clean_up else list(texts)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False,
             clean_up_tokenization_spaces: bool | None = None) -> str:
    """Text of one id sequence (the mask id decodes as "[MASK]"); see `decode_batch`."""
    return self.decode_batch([ids], skip_special_tokens, clean_up_tokenization_spaces)[0]

  def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = False,
                   clean_up_tokenization_spaces: bool | None = None) -> list[str]:
    """Texts of many id sequences.

    clean_up_tokenization_spaces: None (default) keeps the project's decoding (the HF BERT
    clean-up for bert-base-uncased only; GPT-2 text keeps its spaces before punctuation);
    True/False decode as transformers 4.38 `batch_decode` with that flag (its default is True,
    what Duo/MDLM use to decode samples for Gen PPL: " ." -> ".", " n't" -> "n't", ...).
    """
    batch = [[int(i) for i in ids] for ids in batch]
    if clean_up_tokenization_spaces is not None:
      return self._decode_hf(batch, skip_special_tokens, bool(clean_up_tokenization_spaces))
    texts = self._decoder().decode_batch(batch, skip_special_tokens=skip_special_tokens)
    return [self._cleanup(t) for t in texts]


def _require_file(path: pathlib.Path, what: str) -> str:
  """Returns str(path) or raises FileNotFoundError naming the missing file."""
  if not path.is_file():
    hint = _REBUILD_HINT if path.is_relative_to(ASSETS_DIR) else "check the path"
    raise FileNotFoundError(f"{what}: file not found: {path} ({hint})")
  return str(path)


def _bert_base_uncased(assets_dir: pathlib.Path) -> Tokenizer:
  """bert-base-uncased WordPiece (lowercase), BOS/EOS = [CLS]/[SEP], mask = [MASK]."""
  vocab = _require_file(assets_dir / "bert-base-uncased" / "vocab.txt",
                        "bert-base-uncased vocabulary")
  backend = hf_tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)._tokenizer
  ids = {t: backend.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")}
  size = backend.get_vocab_size()
  return Tokenizer("bert-base-uncased", backend, vocab_size=size, bos_id=ids["[CLS]"],
                   eos_id=ids["[SEP]"], pad_id=ids["[PAD]"], mask_id=ids["[MASK]"],
                   model_vocab_size=size, bert_cleanup=True)


def _gpt2(assets_dir: pathlib.Path) -> Tokenizer:
  """GPT-2 byte-level BPE; BOS = EOS = PAD = <|endoftext|>, mask appended after the vocab."""
  encoder = _require_file(assets_dir / "gpt2" / "encoder.json", "gpt2 encoder")
  merges = _require_file(assets_dir / "gpt2" / "vocab.bpe", "gpt2 merges")
  backend = hf_tokenizers.ByteLevelBPETokenizer(encoder, merges, add_prefix_space=False)
  backend = backend._tokenizer
  backend.add_special_tokens([GPT2_EOT])  # already id 50256; marks it special, as in HF.
  eot = backend.token_to_id(GPT2_EOT)
  size = backend.get_vocab_size()
  return Tokenizer("gpt2", backend, vocab_size=size, bos_id=eot, eos_id=eot, pad_id=eot,
                   mask_id=size, model_vocab_size=size + 1)


def _find_token(backend: hf_tokenizers.Tokenizer, names: Sequence[str]) -> int | None:
  """Id of the first of `names` present in the vocabulary, or None."""
  for name in names:
    token_id = backend.token_to_id(name)
    if token_id is not None:
      return token_id
  return None


def from_tokenizer_json(path: str | os.PathLike, name: str | None = None) -> Tokenizer:
  """Loads a tokenizer.json, finding BOS/EOS/PAD/[MASK] among common spellings."""
  path = pathlib.Path(path)
  file = _require_file(path, "tokenizer.json")
  try:
    backend = hf_tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # the tokenizers library raises a bare Exception with serde's text
    raise TokenizerFileError(f"{file} is not a readable tokenizer.json ({e})") from None
  return _from_backend(backend, name or str(path))


SYMBOLS_NAME = re.compile(r"^symbols-(\d+)$")
SYMBOL_SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]")


def symbols_tokenizer_json(num_symbols: int) -> dict:
  """A word-level tokenizer.json: "s{i}" -> i for i < num_symbols, then the special tokens.

  The tokenizer of synthetic languages (`symbols-<N>`, e.g. data.source="synthetic_hmm").
  """
  vocab = {f"s{i}": i for i in range(num_symbols)}
  added = []
  for j, token in enumerate(SYMBOL_SPECIALS):
    vocab[token] = num_symbols + j
    added.append({"id": num_symbols + j, "content": token, "single_word": False,
                  "lstrip": False, "rstrip": False, "normalized": False, "special": True})
  return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
          "post_processor": None, "decoder": None,
          "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[PAD]"}}


def _from_backend(backend, name: str) -> Tokenizer:
  """Wraps a `tokenizers.Tokenizer`, finding BOS/EOS/PAD/[MASK] among common spellings."""
  size = backend.get_vocab_size(with_added_tokens=True)
  bos, eos = _find_token(backend, _BOS_NAMES), _find_token(backend, _EOS_NAMES)
  if bos is None or eos is None:
    raise ValueError(f"tokenizer {name} needs a BOS and an EOS token: looked for "
                     f"{_BOS_NAMES} and {_EOS_NAMES}")
  pad = _find_token(backend, _PAD_NAMES)
  mask = _find_token(backend, _MASK_NAMES)
  return Tokenizer(name, backend, vocab_size=size, bos_id=bos, eos_id=eos,
                   pad_id=eos if pad is None else pad,
                   mask_id=size if mask is None else mask,
                   model_vocab_size=size + 1 if mask is None else size)


@functools.lru_cache(maxsize=None)
def _load(name: str, assets_dir: str) -> Tokenizer:
  """Builds (once per process) the tokenizer called `name`."""
  assets = pathlib.Path(assets_dir)
  if name == "bert-base-uncased":
    return _bert_base_uncased(assets)
  if name == "gpt2":
    return _gpt2(assets)
  if name == "demo-bpe-2048":
    return from_tokenizer_json(assets / "demo-bpe-2048.json", name=name)
  if name == "reasoning":
    return from_tokenizer_json(assets / REASONING_FILE, name=name)
  if SYMBOLS_NAME.match(name):
    spec = json.dumps(symbols_tokenizer_json(int(SYMBOLS_NAME.match(name).group(1))))
    return _from_backend(hf_tokenizers.Tokenizer.from_str(spec), name)
  return from_tokenizer_json(name)


class TokenizerFileError(ValueError):
  """A tokenizer file exists but cannot be parsed (truncated, not JSON, wrong schema)."""


def get_tokenizer(name: str, *, assets_dir: str | os.PathLike | None = None,
                  field: str = "data.tokenizer") -> Tokenizer:
  """The cached tokenizer for a shipped name or a path to a tokenizer.json (or its folder).

  A file that cannot be parsed raises ConfigError naming `field`, its value and the file."""
  try:
    return _get_tokenizer(name, assets_dir)
  except TokenizerFileError as e:
    raise ConfigError(f"config.{field}={name!r}: {e}") from None


def _get_tokenizer(name: str, assets_dir) -> Tokenizer:
  if name not in SHIPPED_TOKENIZERS and not SYMBOLS_NAME.match(name):
    path = pathlib.Path(os.path.expanduser(name))
    if path.is_dir():
      path = path / "tokenizer.json"
    if not path.is_file():
      raise ValueError(f"unknown tokenizer {name!r}: expected one of {SHIPPED_TOKENIZERS} "
                       f", 'symbols-<N>' or the path of a tokenizer.json file (no file at "
                       f"{path.resolve()})")
    name = str(path.resolve())
  return _load(name, str(pathlib.Path(assets_dir or ASSETS_DIR).resolve()))


def row_dtype(model_vocab_size: int) -> np.dtype:
  """uint16 when every model id fits in 16 bits, else int32 (the dtype of stored rows)."""
  return np.dtype(np.uint16 if model_vocab_size <= 1 << 16 else np.int32)
