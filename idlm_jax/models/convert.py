"""Reading published PyTorch DDiT checkpoints (MDLM, SEDD, Duo, Duo-DCD, SDTT; teachers.md §1.5).

Containers understood (`load_source`):
  - Lightning `.ckpt` (MDLM / Duo / SEDD-in-MDLM Google-Drive files): `state_dict` with the
    `backbone.` prefix and `ema.shadow_params`, a plain list in `backbone.parameters()` order
    (then `noise.parameters()`, empty for the log-linear schedule). The EMA list is converted;
    `state_dict` weights only with weights="state_dict" (evaluation always uses EMA).
  - Hugging Face model folders: `model.safetensors` (or a sharded `model.safetensors.index.json`)
    or `pytorch_model.bin`, plus an optional `config.json`. MDLM / Duo / Duo-DCD (`backbone.`),
    SDTT (`backbone.backbone.`), SEDD (no prefix).
  - A single `.safetensors`, `.bin`, `.pt` or `.pth` file holding a flat state dict.

Safetensors files are read with NumPy only (8-byte little-endian header length, JSON header,
raw little-endian buffers; BF16 through ml_dtypes). `.ckpt`/`.bin`/`.pt` (torch.save's zip
format) are read by `models.torch_pickle` without PyTorch: a checkpoint is untrusted input, so
only tensor-building globals are resolved and every other pickled object (Lightning
hyper-parameters, OmegaConf configs, tokenizers) stays an inert record; nothing is executed.

`extract_backbone` picks the DDiT's key prefix and strips it; keys outside the prefix are
ignored only when they match `IGNORED_PREFIXES` (each ignored key is reported), anything else
is an error through `models.from_torch_state_dict`, which checks names and shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import pickle
import re
from typing import Any, Optional

import ml_dtypes
import numpy as np

from idlm_jax.models import torch_pickle

# Prefixes of the DDiT inside the published containers, most specific first.
KNOWN_PREFIXES = ("backbone.backbone.", "model.backbone.", "backbone.", "model.", "")
ANCHOR = "vocab_embed.embedding"
BUFFERS = ("rotary_emb.inv_freq",)
# Keys outside the DDiT prefix that are dropped on purpose (and listed in the conversion meta).
IGNORED_PREFIXES = {
    "teacher.": "frozen teacher copy of a distillation run (Duo-DCD, SDTT)",
    "teacher_backbone.": "frozen teacher copy of a distillation run",
    "noise.": "noise-schedule module (no weights for the log-linear schedule)",
    "ema.": "EMA copy stored as module state (the weights under the DDiT prefix are taken; "
            "pass prefix='ema.backbone.' or similar to take it instead)",
    "ema_backbone.": "EMA copy stored as module state (pass its prefix to take it instead)",
}
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TORCH_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")

_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class ConversionError(ValueError):
  """A checkpoint cannot be read or does not fit the configured model (the message says why)."""


# ---------------------------------------------------------------------------- safetensors


def read_safetensors(path) -> dict[str, np.ndarray]:
  """name -> NumPy array of a .safetensors file (no torch, no safetensors package)."""
  path = pathlib.Path(path)
  data = path.read_bytes()
  if len(data) < 8:
    raise ConversionError(f"{path}: not a safetensors file (shorter than its 8-byte header)")
  n = int.from_bytes(data[:8], "little")
  if n > len(data) - 8:
    raise ConversionError(f"{path}: not a safetensors file (header length {n} exceeds the file)")
  try:
    header = json.loads(data[8:8 + n])
  except ValueError as e:
    raise ConversionError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
  buf = memoryview(data)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info.get("dtype") not in _ST_DTYPES:
      raise ConversionError(f"{path}: tensor '{name}' has unsupported dtype {info.get('dtype')!r}")
    dtype, shape = _ST_DTYPES[info["dtype"]], tuple(info["shape"])
    begin, end = info["data_offsets"]
    if not 0 <= begin <= end <= len(buf) or end - begin != math.prod(shape) * dtype.itemsize:
      raise ConversionError(f"{path}: tensor '{name}' ({info['dtype']} {list(shape)}) has "
                            f"inconsistent data offsets {[begin, end]}")
    out[name] = np.frombuffer(buf[begin:end], dtype=dtype).reshape(shape)
  return out


def write_safetensors(path, tensors: dict, metadata: Optional[dict] = None) -> None:
  """Write name -> array as a .safetensors file (BF16 for ml_dtypes.bfloat16 arrays)."""
  header, chunks, offset = {}, [], 0
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  for name, value in tensors.items():
    value = np.ascontiguousarray(value)
    dtype = value.dtype.newbyteorder("<") if value.dtype.itemsize > 1 else value.dtype
    if dtype not in _ST_NAMES:
      raise ValueError(f"tensor '{name}': dtype {value.dtype} has no safetensors name")
    raw = value.astype(dtype, copy=False).tobytes()
    header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(value.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  head = json.dumps(header, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes with spaces
  with open(path, "wb") as f:
    f.write(len(head).to_bytes(8, "little"))
    f.write(head)
    for chunk in chunks:
      f.write(chunk)


# ---------------------------------------------------------------------------- torch files


def _to_plain(obj):
  """Containers recursed into dicts/lists; NumPy tensors kept; other objects kept as Opaque."""
  if isinstance(obj, dict):
    return {k: _to_plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_plain(v) for v in obj)
  return obj


def read_torch_file(path) -> Any:
  """The object torch.save wrote at `path`, tensors as NumPy, read without torch or code.

  `models.torch_pickle` resolves only the tensor-building globals; Lightning's pickled
  hyper-parameters, OmegaConf configs or tokenizers become inert `Opaque` records.
  """
  try:
    return _to_plain(torch_pickle.load(path))
  except (ValueError, pickle.UnpicklingError, KeyError, EOFError) as e:
    raise ConversionError(f"{path}: cannot read it as a PyTorch checkpoint: {e}") from None


# ---------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Loaded:
  """A checkpoint read from disk: a flat (still prefixed) state dict and where it came from."""

  state_dict: dict[str, np.ndarray]
  format: str  # "lightning", "hf_safetensors", "hf_bin", "safetensors", "torch"
  weights: str  # "ema" (Lightning EMA shadow params), "state_dict", or "published" (HF/file)
  files: list[pathlib.Path]
  hf_config: dict = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)
  # Lightning EMA: the state_dict names the shadow_params list was matched to, in order
  param_order: list[str] = dataclasses.field(default_factory=list)


def is_hub_name(source: str) -> bool:
  """'owner/name' or 'owner/name@revision' that is not an existing local path or file name."""
  if source.endswith(TORCH_SUFFIXES + (".safetensors", ".json")):
    return False
  return bool(HUB_NAME.match(source)) and not pathlib.Path(source).expanduser().exists()


def download(source: str, cache_dir: Optional[str] = None) -> pathlib.Path:
  """A local snapshot of the hub model `owner/name[@revision]` (huggingface_hub, cached)."""
  repo_id, _, revision = source.partition("@")
  how = (f"download it on a machine with internet (huggingface-cli download {repo_id}"
         f"{' --revision ' + revision if revision else ''} --local-dir DIR) and pass "
         f"--source=DIR")
  try:
    import huggingface_hub  # noqa: PLC0415 (optional)
  except ImportError:
    raise ConversionError(f"source {source!r} looks like a Hugging Face hub name, but "
                          f"huggingface_hub is not installed (pip install huggingface_hub); "
                          f"or {how}") from None
  try:
    path = huggingface_hub.snapshot_download(
        repo_id, revision=revision or None, cache_dir=cache_dir,
        allow_patterns=["*.safetensors", "*.json", "*.bin"])
  except Exception as e:  # offline mode, no network, unknown repo, ...
    raise ConversionError(f"no local path {source!r}, and cannot get hub model {source!r} "
                          f"({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}); "
                          f"offline or without access, {how}") from None
  return pathlib.Path(path)


def sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      h.update(block)
  return h.hexdigest()


def _flat_tensors(obj, path) -> dict[str, np.ndarray]:
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    keys = f" with keys {list(obj)[:8]}" if isinstance(obj, dict) else ""
    raise ConversionError(f"{path}: expected a flat state dict of tensors, got "
                          f"{type(obj).__name__}{keys}")
  return obj


def _hf_folder(folder: pathlib.Path) -> Loaded:
  config = {}
  if (folder / "config.json").is_file():
    config = json.loads((folder / "config.json").read_text())
  if (folder / "model.safetensors").is_file():
    files = [folder / "model.safetensors"]
    return Loaded(read_safetensors(files[0]), "hf_safetensors", "published", files, config)
  if (folder / "model.safetensors.index.json").is_file():
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = [folder / f for f in sorted(set(index["weight_map"].values()))]
    sd = {}
    for f in files:
      sd.update(read_safetensors(f))
    return Loaded(sd, "hf_safetensors", "published", files, config)
  if (folder / "pytorch_model.bin").is_file():
    files = [folder / "pytorch_model.bin"]
    obj = read_torch_file(files[0])
    return Loaded(_flat_tensors(obj, files[0]), "hf_bin", "published", files, config)
  raise ConversionError(f"{folder}: no weights found; a Hugging Face model folder needs one of "
                        f"{', '.join(HF_WEIGHT_FILES)}")


def _lightning(obj: dict, path, weights: str, prefix: Optional[str]) -> Loaded:
  """EMA (default) or raw weights of a Lightning checkpoint dict."""
  sd = _flat_tensors(obj["state_dict"], path)
  files = [pathlib.Path(path)]
  if weights == "state_dict":
    return Loaded(dict(sd), "lightning", "state_dict", files,
                  notes=["state_dict (raw, non-EMA) weights taken on request"])
  ema = obj.get("ema")
  shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
  if shadow is None:
    raise ConversionError(
        f"{path}: this Lightning checkpoint has no EMA weights ('ema.shadow_params'); "
        f"evaluation and sampling use EMA weights, so the raw state_dict is converted only when "
        f"asked for explicitly: --weights=state_dict")
  prefix = choose_prefix(sd, prefix)
  buffers = {prefix + b for b in BUFFERS}
  names = [k for k in sd if k.startswith(prefix) and k not in buffers]
  if prefix == "":
    names = [k for k in names if not k.startswith(tuple(IGNORED_PREFIXES))]
  noise = [k for k in sd if k.startswith("noise.")]
  if len(shadow) not in (len(names), len(names) + len(noise)):
    raise ConversionError(
        f"{path}: ema.shadow_params has {len(shadow)} tensors but the state_dict has "
        f"{len(names)} backbone parameters under '{prefix}' (+{len(noise)} noise.* entries); "
        f"the EMA list cannot be matched to parameter names")
  out = {}
  for i, (name, value) in enumerate(zip(names, shadow)):
    value = np.asarray(value)
    if value.shape != sd[name].shape:
      raise ConversionError(
          f"{path}: ema.shadow_params[{i}] has shape {value.shape} but the state_dict's "
          f"parameter #{i} in module order, '{name}', has shape {sd[name].shape}: the EMA list "
          f"is not in backbone.parameters() order")
    out[name] = value
  out.update({k: sd[k] for k in buffers if k in sd})
  # keys outside the backbone go through extract_backbone's ignore list as usual
  out.update({k: v for k, v in sd.items() if not k.startswith(prefix)})
  notes = [f"EMA weights (decay {ema.get('decay')}, {ema.get('num_updates')} updates)"]
  if len(shadow) > len(names):
    notes.append(f"{len(shadow) - len(names)} EMA tensors of the noise schedule ignored")
  return Loaded(out, "lightning", "ema", files, notes=notes, param_order=names)


def load_source(path, weights: str = "ema", prefix: Optional[str] = None) -> Loaded:
  """Read a local Lightning .ckpt, HF model folder, .safetensors or torch state-dict file.

  `prefix` (default: detected) is the DDiT's key prefix, needed here to match a Lightning EMA
  list to names.
  """
  if weights not in ("ema", "state_dict"):
    raise ValueError(f"weights must be 'ema' or 'state_dict', got {weights!r}")
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    loaded = _hf_folder(path)
  elif not path.exists():
    raise ConversionError(f"source {str(path)!r} does not exist (expected a .ckpt/.bin/"
                          f".safetensors file, a Hugging Face model folder or a hub name "
                          f"'owner/name[@revision]')")
  elif path.suffix == ".safetensors":
    loaded = Loaded(read_safetensors(path), "safetensors", "published", [path])
  elif path.suffix in TORCH_SUFFIXES:
    obj = read_torch_file(path)
    if isinstance(obj, dict) and "state_dict" in obj:
      loaded = _lightning(obj, path, weights, prefix)
    else:
      loaded = Loaded(_flat_tensors(obj, path), "torch", "published", [path])
  else:
    raise ConversionError(f"{path}: unknown checkpoint type {path.suffix!r} (expected .ckpt, "
                          f".bin, .pt, .pth, .safetensors or a model folder)")
  if weights == "state_dict" and loaded.format != "lightning":
    loaded.notes.append("weights='state_dict' has no effect: only Lightning files hold both")
  return loaded


# ---------------------------------------------------------------------------- keys


def choose_prefix(state_dict: dict, prefix: Optional[str] = None) -> str:
  """The prefix of the DDiT's keys: `prefix` if given, else found from 'vocab_embed.embedding'."""
  if prefix is not None:
    if prefix + ANCHOR not in state_dict:
      raise ConversionError(f"no key '{prefix}{ANCHOR}' under the requested prefix "
                            f"{prefix!r}; candidates: {_candidates(state_dict) or 'none'}")
    return prefix
  found = _candidates(state_dict)
  for p in KNOWN_PREFIXES:
    if p in found:
      return p
  if len(found) == 1:
    return found[0]
  if not found:
    raise ConversionError(f"no DDiT found: no key ends in '{ANCHOR}' (first keys: "
                          f"{list(state_dict)[:6]})")
  raise ConversionError(f"several DDiTs in the checkpoint, under prefixes {found}; pick one "
                        f"with --prefix")


def _candidates(state_dict) -> list[str]:
  return [k[:-len(ANCHOR)] for k in state_dict if k.endswith(ANCHOR)]


def extract_backbone(state_dict: dict, prefix: Optional[str] = None
                     ) -> tuple[dict[str, np.ndarray], str, dict[str, list[str]]]:
  """(DDiT state dict without prefix, the prefix, {reason: ignored keys}).

  Keys outside the prefix are dropped when they start with one of IGNORED_PREFIXES; any other
  key is kept under its full name, so that `from_torch_state_dict` reports it as unexpected.
  """
  prefix = choose_prefix(state_dict, prefix)
  out, ignored = {}, {}
  for key, value in state_dict.items():
    if prefix and key.startswith(prefix):
      out[key[len(prefix):]] = value
      continue
    reason = next((r for p, r in IGNORED_PREFIXES.items() if key.startswith(p)), None)
    if reason is not None:
      ignored.setdefault(reason, []).append(key)
    else:
      out[key] = value
  return out, prefix, ignored


def check_parameter_order(param_order: list[str], prefix: str, expected: list[str]) -> None:
  """The EMA list was matched to state_dict names in state_dict order; that order must be the
  DDiT's `parameters()` order (`models.torch_param_names`), or same-shaped tensors (norm1 /
  norm2, ...) could be swapped silently."""
  got = [k[len(prefix):] for k in param_order][:len(expected)]
  if got != expected:
    bad = next(i for i, (a, b) in enumerate(zip(got + [None] * len(expected), expected))
               if a != b)
    raise ConversionError(f"the state_dict's parameters are not in the DDiT's parameters() "
                          f"order (position {bad}: '{got[bad] if bad < len(got) else None}' "
                          f"where '{expected[bad]}' is expected), so ema.shadow_params cannot "
                          f"be matched to names")


def check_half_precision_buffer(sd: dict, head_dim: int) -> list[str]:
  """Check a 16-bit `rotary_emb.inv_freq` buffer to its own precision and drop it from `sd`.

  (A model saved in bf16/fp16 stores the buffer rounded; `from_torch_state_dict` checks
  float32 buffers exactly.) Returns notes for the conversion record.
  """
  value = sd.get(BUFFERS[0])
  if value is None or np.dtype(value.dtype).itemsize > 2:
    return []
  from idlm_jax.models import rotary_inv_freq  # noqa: PLC0415

  expected = rotary_inv_freq(head_dim)
  rtol = float(ml_dtypes.finfo(value.dtype).eps)
  if value.shape != expected.shape or not np.allclose(
      np.asarray(value, np.float64), expected, rtol=rtol, atol=0.0):
    raise ConversionError(f"key '{BUFFERS[0]}' ({value.dtype} {value.shape}) is not "
                          f"1/10000^(arange(0, {head_dim}, 2)/{head_dim}) (head_dim {head_dim}"
                          f"): check --config.model.n_heads")
  del sd[BUFFERS[0]]
  return [f"{BUFFERS[0]} stored in {value.dtype}: checked to that precision"]


# ---------------------------------------------------------------------------- config check


def infer_architecture(sd: dict, hf_config: Optional[dict] = None) -> dict:
  """Sizes read from the weights' shapes (and config.json for the number of heads)."""
  arch = {}
  if ANCHOR in sd and np.ndim(sd[ANCHOR]) == 2:
    arch["vocab_size"], arch["hidden_size"] = map(int, np.shape(sd[ANCHOR]))
  blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
  if blocks:
    arch["n_blocks"] = max(blocks) + 1
  if np.ndim(sd.get("sigma_map.mlp.0.weight")) == 2:
    arch["cond_dim"] = int(np.shape(sd["sigma_map.mlp.0.weight"])[0])
  if "hidden_size" in arch and np.ndim(sd.get("blocks.0.mlp.0.weight")) == 2:
    width = int(np.shape(sd["blocks.0.mlp.0.weight"])[0])
    if width % arch["hidden_size"] == 0:
      arch["mlp_ratio"] = width // arch["hidden_size"]
  if "hidden_size" in arch and np.ndim(sd.get("rotary_emb.inv_freq")) == 1:
    head_dim = 2 * int(np.shape(sd["rotary_emb.inv_freq"])[0])
    if head_dim and arch["hidden_size"] % head_dim == 0:
      arch["n_heads"] = arch["hidden_size"] // head_dim
  cfg = dict(hf_config or {})
  cfg.update(cfg.get("model", {}) if isinstance(cfg.get("model"), dict) else {})
  for name in ("n_heads", "num_heads", "n_head"):
    if isinstance(cfg.get(name), int):
      arch.setdefault("n_heads", cfg[name])
      break
  if isinstance(cfg.get("time_conditioning"), bool):
    arch["time_conditioning"] = cfg["time_conditioning"]
  return arch


KNOWN_VOCABS = {"gpt2": 50258, "bert-base-uncased": 30522, "demo-bpe-2048": 2048}
_FIELDS = {"hidden_size": "model.hidden_size", "n_blocks": "model.n_blocks",
           "n_heads": "model.n_heads", "cond_dim": "model.cond_dim",
           "mlp_ratio": "model.mlp_ratio", "time_conditioning": "model.time_conditioning"}


def check_config(arch: dict, model_cfg, tokenizer_name: str, model_vocab_size: int) -> None:
  """Raise ConversionError naming each config field that disagrees with the checkpoint."""
  problems = []
  vocab = arch.get("vocab_size")
  if vocab is not None and vocab != model_vocab_size:
    fits = [n for n, v in KNOWN_VOCABS.items() if v == vocab]
    hint = (f"set --config.data.tokenizer={fits[0]}" if fits else
            "set --config.data.tokenizer to the tokenizer the checkpoint was trained with")
    problems.append(f"vocabulary: checkpoint {vocab} rows, but config.data.tokenizer="
                    f"{tokenizer_name!r} gives a model vocabulary of {model_vocab_size}: {hint}")
  for key, field in _FIELDS.items():
    if key in arch and arch[key] != model_cfg[key]:
      problems.append(f"{key}: checkpoint {arch[key]}, config.{field}={model_cfg[key]}: set "
                      f"--config.{field}={arch[key]}")
  if problems:
    raise ConversionError("the checkpoint does not match the config:\n  " +
                          "\n  ".join(problems))
