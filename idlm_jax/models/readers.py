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
  - The authors' distilled students (docs/converting.md): an IDLM run's Lightning file
    (`backbone.` student, `fake_model.` fake model, EMA lists `ema` and `ema_fake`) or HF folder;
    DiDi-Instruct's HF folder (model.safetensors = the student_ema, discriminator.safetensors)
    or Lightning file (`student_ema.`, `discriminator.`). The second network (AUX_NETS) is
    kept apart by `extract_backbone` and read by `extract_aux`.

Safetensors files are read with NumPy only (8-byte little-endian header length, JSON header,
raw little-endian buffers; BF16 through ml_dtypes). `.ckpt`/`.bin`/`.pt` (torch.save's zip
format) are read by `models.torch_pickle` without PyTorch: a checkpoint is untrusted input, so
only tensor-building globals are resolved and every other pickled object (Lightning
hyper-parameters, OmegaConf configs, tokenizers) stays an inert record; nothing is executed.
Both readers check every size, offset and stride against the bytes the file holds before any
array is made (`read_safetensors`, `models.torch_pickle`); a malformed or crafted file raises
`CheckpointFormatError` (`UnsafeTensorError` for a tensor's geometry), both ConversionErrors.

`extract_backbone` picks the DDiT's key prefix and strips it; keys outside the prefix are
ignored only when they match `IGNORED_PREFIXES` (each ignored key is reported), anything else
is an error through `models.from_torch_state_dict`, which checks names and shapes. Entries
of a Lightning file that are not converted (hyper_parameters, callbacks, optimizer states,
...) are listed in `Loaded.ignored_objects` and logged. The number of attention heads, which
no weight shape shows, must be verifiable (`check_head_count`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import pathlib
import re
from typing import Any, Optional

import ml_dtypes
import numpy as np

from idlm_jax.models import torch_pickle
from idlm_jax.models.dit import rotary_inv_freq
from idlm_jax.models.torch_pickle import (  # noqa: F401 (the conversion errors live there)
    CheckpointFormatError, ConversionError, UnsafeTensorError)

# Prefixes of the DDiT inside the published containers, most specific first (DiDi-Instruct's
# `student_ema.` before `backbone.`: its released sampler reads the EMA module).
KNOWN_PREFIXES = ("student_ema.", "backbone.backbone.", "model.backbone.", "backbone.", "model.",
                  "")
# The other trained networks of a distillation checkpoint: prefix -> (aux net name of the
# objective that trains it, what it is). Kept apart from the model (`extract_backbone`) and
# written as that objective's aux NetState (convert.py).
AUX_NETS = {
    "fake_model.": ("fake", "IDLM's fake model"),
    "discriminator.": ("disc", "DiDi-Instruct's discriminator"),
}
# Lightning EMA entries per prefix (IDLM's MDLM.on_save_checkpoint adds `ema_fake`); DiDi's
# `student_ema.` is itself the EMA (no list), its discriminator has none.
EMA_ENTRIES = {"fake_model.": "ema_fake", "student_ema.": None, "discriminator.": None}
# `backbone.*` beside another chosen network of the same file: why it is not converted.
BACKBONE_BESIDE = {
    "student_ema.": "DiDi-Instruct's live student (its EMA 'student_ema.' is converted; "
                    "--prefix=backbone. takes the live one)",
    "fake_model.": "IDLM's student (the model converted without --prefix)",
}
DIDI_DISCRIMINATOR_FILE = "discriminator.safetensors"  # beside model.safetensors (HF release)
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
MAX_SAFETENSORS_HEADER = 100 << 20  # bytes of JSON header (the format's own reader: 100 MB)
MAX_NDIM = torch_pickle.MAX_NDIM
MAX_NESTING = 200  # containers inside containers in a torch file
# Entries of a Lightning checkpoint dict that conversion reads; everything else is reported.
LIGHTNING_USED = ("state_dict", "ema", "ema_fake")
EMA_USED = ("shadow_params", "decay", "num_updates")

log = logging.getLogger(__name__)


_short = torch_pickle.safe_repr  # bounded repr of untrusted values (never raises)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


# ---------------------------------------------------------------------------- safetensors


def _json_object(pairs):
  """json object_pairs_hook: a dict, refusing duplicate keys (which JSON would resolve
  silently to the last one)."""
  out = {}
  for k, v in pairs:
    if k in out:
      raise ValueError(f"duplicate key {_short(k)}")
    out[k] = v
  return out


def read_safetensors(path) -> dict[str, np.ndarray]:
  """name -> NumPy array of a .safetensors file (no torch, no safetensors package).

  The file is untrusted: the header length must lie within the file and MAX_SAFETENSORS_HEADER,
  the header must be a JSON object without duplicate keys, every tensor must have a known
  dtype, a shape of at most MAX_NDIM non-negative integers and data_offsets [begin, end] of
  non-negative integers inside the data section with end - begin = prod(shape) * itemsize,
  and no two tensors' byte ranges may overlap. Anything else raises CheckpointFormatError
  (UnsafeTensorError for a tensor's geometry). The arrays are read-only views of the file's
  bytes.
  """
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise ConversionError(f"{path}: cannot read it ({e})") from None
  if len(data) < 8:
    raise CheckpointFormatError(f"{path}: not a safetensors file (shorter than its 8-byte "
                                f"header length)")
  n = int.from_bytes(data[:8], "little")
  if n > len(data) - 8:
    raise CheckpointFormatError(f"{path}: not a safetensors file (header length {n} exceeds "
                                f"the file's {len(data) - 8} bytes after it)")
  if n > MAX_SAFETENSORS_HEADER:
    raise CheckpointFormatError(f"{path}: safetensors header of {n} bytes (at most "
                                f"{MAX_SAFETENSORS_HEADER})")
  try:
    header = json.loads(data[8:8 + n], object_pairs_hook=_json_object)
  except RecursionError:
    raise CheckpointFormatError(f"{path}: not a safetensors file (JSON header nested too "
                                f"deeply)") from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, duplicate keys, huge ints
    raise CheckpointFormatError(f"{path}: not a safetensors file (bad JSON header: "
                                f"{torch_pickle.error_summary(e)})") from None
  if not isinstance(header, dict):
    raise CheckpointFormatError(f"{path}: not a safetensors file (the header is a JSON "
                                f"{type(header).__name__}, not an object)")
  meta = header.get("__metadata__", {})
  if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
    raise CheckpointFormatError(f"{path}: __metadata__ must map names to strings, got "
                                f"{_short(meta)}")
  buf = memoryview(data)[8 + n:]
  entries = []
  for name, info in header.items():
    if name == "__metadata__":
      continue
    where = f"{path}: tensor {_short(name)}"
    if not isinstance(info, dict):
      raise CheckpointFormatError(f"{where}: header entry {_short(info)} is not an object")
    dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype_name, str) or dtype_name not in _ST_DTYPES:
      raise CheckpointFormatError(f"{where} has unsupported dtype {_short(dtype_name)} "
                                  f"(supported: {', '.join(_ST_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM or
        not all(_is_int(d) and d >= 0 for d in shape)):
      raise UnsafeTensorError(f"{where}: shape {_short(shape)} is not a list of at most "
                              f"{MAX_NDIM} non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or
        not all(_is_int(o) and o >= 0 for o in offsets)):
      raise UnsafeTensorError(f"{where}: data_offsets {_short(offsets)} is not a pair of "
                              f"non-negative integers")
    dtype, (begin, end) = _ST_DTYPES[dtype_name], offsets
    nbytes = math.prod(shape) * dtype.itemsize
    if not begin <= end <= len(buf) or end - begin != nbytes:
      raise UnsafeTensorError(
          f"{where} ({dtype_name} {_short(shape)}, {_short(nbytes)} bytes) has inconsistent "
          f"data offsets {_short(offsets)} (the data section holds {len(buf)} bytes)")
    if nbytes == 0 and math.prod(d for d in shape if d) * dtype.itemsize >= 1 << 62:
      raise UnsafeTensorError(f"{where}: empty shape {_short(shape)} too large for an array")
    entries.append((begin, end, name, dtype, tuple(shape)))
  previous = None
  for begin, end, name, _, _ in sorted(entries, key=lambda e: e[:2]):
    if begin == end:
      continue
    if previous is not None and begin < previous[1]:
      raise UnsafeTensorError(f"{path}: tensors {_short(previous[0])} and {_short(name)} "
                              f"overlap (bytes {previous[1] - begin} of their data ranges)")
    previous = (name, end)
  return {name: np.frombuffer(buf[begin:end], dtype=dtype).reshape(shape)
          for begin, end, name, dtype, shape in entries}


def write_safetensors(path, tensors: dict, metadata: Optional[dict] = None) -> None:
  """Write name -> array as a .safetensors file (BF16 for ml_dtypes.bfloat16 arrays)."""
  header, chunks, offset = {}, [], 0
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  for name, value in tensors.items():
    value = np.asarray(value)  # (np.ascontiguousarray would make a 0-d array 1-d)
    dtype = value.dtype.newbyteorder("<") if value.dtype.itemsize > 1 else value.dtype
    if dtype not in _ST_NAMES:
      raise ValueError(f"tensor '{name}': dtype {value.dtype} has no safetensors name")
    raw = value.astype(dtype, copy=False).tobytes(order="C")
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
  """Containers copied to plain dicts/lists/tuples; NumPy tensors and Opaque records kept.

  Shared sub-objects stay shared (memo by id, so a pickle's repeated references cannot blow
  up), cycles are kept, and nesting deeper than MAX_NESTING is a CheckpointFormatError.
  """
  memo = {}

  def walk(o, depth):
    if not isinstance(o, (dict, list, tuple)):
      return o
    if id(o) in memo:
      return memo[id(o)]
    if depth > MAX_NESTING:
      raise CheckpointFormatError(f"containers nested more than {MAX_NESTING} deep")
    if isinstance(o, dict):
      out = memo[id(o)] = {}
      for k, v in o.items():
        out[k] = walk(v, depth + 1)
      return out
    if isinstance(o, list):
      out = memo[id(o)] = []
      out.extend(walk(v, depth + 1) for v in o)
      return out
    out = memo[id(o)] = tuple(walk(v, depth + 1) for v in o)
    return out

  return walk(obj, 0)


def read_torch_file(path) -> Any:
  """The object torch.save wrote at `path`, tensors as NumPy, read without torch or code.

  `models.torch_pickle` resolves only the tensor-building globals; Lightning's pickled
  hyper-parameters, OmegaConf configs or tokenizers become inert `Opaque` records. Every
  tensor's geometry is checked against its storage first: a malformed or crafted file raises
  CheckpointFormatError (UnsafeTensorError for a tensor that would read outside its storage).
  """
  try:
    obj = torch_pickle.load(path)  # its errors name the file and the tensor
  except OSError as e:
    raise ConversionError(f"{path}: cannot read it ({e})") from None
  try:
    return _to_plain(obj)
  except CheckpointFormatError as e:
    raise CheckpointFormatError(f"{path}: {e}") from None
  except RecursionError:
    raise CheckpointFormatError(f"{path}: containers nested too deeply") from None


def describe(value, budget: int = 100_000) -> str:
  """A one-line description of a checkpoint entry that is not converted: its type and size,
  and the tensors and pickled objects (kept as inert records, never executed) inside it."""
  if isinstance(value, np.ndarray):
    return f"tensor {value.dtype} {list(value.shape)}"
  if isinstance(value, torch_pickle.Opaque):
    head = f"pickled object {str(value.name)[:120]}"
  elif isinstance(value, (dict, list, tuple)):
    head = f"{type(value).__name__} of {len(value)} entries"
  elif isinstance(value, str):
    head = f"str {_short(value, 60)}"
  else:
    head = f"{type(value).__name__} {_short(value, 60)}"
  tensors, objects, seen, stack = 0, collections.Counter(), set(), [value]
  while stack and budget > 0:
    budget -= 1
    o = stack.pop()
    if id(o) in seen:
      continue
    seen.add(id(o))
    if isinstance(o, np.ndarray):
      tensors += 1
    elif isinstance(o, torch_pickle.Opaque):
      if o is not value:
        objects[o.name] += 1
      stack += [*o.args, *o.kwargs.values(), o.state]
    elif isinstance(o, dict):
      stack += [*o.keys(), *o.values()]
    elif isinstance(o, (list, tuple)):
      stack += o
  parts = [head]
  if tensors:
    parts.append(f"{tensors} tensor{'s' if tensors > 1 else ''} inside")
  if objects:
    names = [str(n)[:80] for n, _ in objects.most_common(4)]
    parts.append(f"pickled objects inside: {', '.join(names)}"
                 f"{', ...' if len(objects) > 4 else ''}")
  return "; ".join(parts)


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
  # entries of the file that are not converted (Lightning hyper_parameters, callbacks,
  # optimizer states, ...): name -> what it is (`describe`); reported, never executed
  ignored_objects: dict[str, str] = dataclasses.field(default_factory=dict)


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
  if not isinstance(obj, dict):
    raise ConversionError(f"{path}: expected a flat state dict of tensors, got "
                          f"{type(obj).__name__}")
  bad = [(k, v) for k, v in obj.items() if not isinstance(k, str) or
         not isinstance(v, np.ndarray)]
  if bad:
    listed = ", ".join(f"{_short(k, 60)}: {describe(v)}" for k, v in bad[:3])
    raise ConversionError(f"{path}: expected a flat state dict of tensors under string keys; "
                          f"{len(bad)} entries are not ({listed}{', ...' if len(bad) > 3 else ''})")
  return obj


def _read_json(path) -> dict:
  """A JSON object from a file of the checkpoint folder (untrusted: errors are ConversionError)."""
  try:
    value = json.loads(pathlib.Path(path).read_bytes())
  except RecursionError:
    raise CheckpointFormatError(f"{path}: JSON nested too deeply") from None
  except (OSError, ValueError) as e:
    raise CheckpointFormatError(f"{path}: not readable JSON "
                                f"({torch_pickle.error_summary(e)})") from None
  if not isinstance(value, dict):
    raise CheckpointFormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
  return value


def _hf_folder(folder: pathlib.Path) -> Loaded:
  config = {}
  if (folder / "config.json").is_file():
    config = _read_json(folder / "config.json")
  if (folder / "model.safetensors").is_file():
    files = [folder / "model.safetensors"]
    return Loaded(read_safetensors(files[0]), "hf_safetensors", "published", files, config)
  if (folder / "model.safetensors.index.json").is_file():
    index_path = folder / "model.safetensors.index.json"
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(f, str) and re.fullmatch(r"[\w.-]+\.safetensors", f)
        for f in weight_map.values()):
      raise CheckpointFormatError(f"{index_path}: 'weight_map' must map tensor names to "
                                  f".safetensors file names in the same folder")
    files = [folder / f for f in sorted(set(weight_map.values()))]
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


def ignored_entries(obj: dict, used) -> dict[str, str]:
  """name -> `describe(value)` for the entries of a Lightning checkpoint dict not in `used`
  (and those of its `ema` dict beyond EMA_USED, as 'ema.<name>')."""
  out = {}
  for key, value in obj.items():
    name = key if isinstance(key, str) else _short(key, 60)
    if key in ("ema", "ema_fake") and key in used and isinstance(value, dict):
      out.update({f"{key}.{k if isinstance(k, str) else _short(k, 60)}": describe(v)
                  for k, v in value.items() if k not in EMA_USED})
    elif key not in used:
      out[name] = describe(value)
  return out


def _ema_weights(obj: dict, entry: str, sd: dict, prefix: str, path) -> tuple[dict, list, list]:
  """({state_dict name: EMA value} of the parameters under `prefix`, those names in order,
  notes): the Lightning EMA entry `entry` ('ema', or IDLM's 'ema_fake') matched to names."""
  ema = obj.get(entry)
  shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
  if shadow is None:
    raise ConversionError(
        f"{path}: this Lightning checkpoint has no EMA weights ('{entry}.shadow_params') for "
        f"the network under '{prefix}'; evaluation and sampling use EMA weights, so the raw "
        f"state_dict is converted only when asked for explicitly: --weights=state_dict")
  if (not isinstance(shadow, (list, tuple)) or
      not all(isinstance(v, np.ndarray) for v in shadow)):
    raise ConversionError(f"{path}: {entry}.shadow_params is not a list of tensors "
                          f"({describe(shadow)})")
  buffers = {prefix + b for b in BUFFERS}
  names = [k for k in sd if k.startswith(prefix) and k not in buffers]
  if prefix == "":
    names = [k for k in names if not k.startswith(tuple(IGNORED_PREFIXES) + tuple(AUX_NETS))]
  noise = [k for k in sd if k.startswith("noise.")] if entry == "ema" else []
  if len(shadow) not in (len(names), len(names) + len(noise)):
    raise ConversionError(
        f"{path}: {entry}.shadow_params has {len(shadow)} tensors but the state_dict has "
        f"{len(names)} parameters under '{prefix}' (+{len(noise)} noise.* entries); "
        f"the EMA list cannot be matched to parameter names")
  out = {}
  for i, (name, value) in enumerate(zip(names, shadow)):
    value = np.asarray(value)
    if value.shape != sd[name].shape:
      raise ConversionError(
          f"{path}: {entry}.shadow_params[{i}] has shape {value.shape} but the state_dict's "
          f"parameter #{i} in module order, '{name}', has shape {sd[name].shape}: the EMA list "
          f"is not in parameters() order")
    out[name] = value
  notes = [f"'{prefix}': EMA weights of '{entry}' (decay {_short(ema.get('decay'), 40)}, "
           f"{_short(ema.get('num_updates'), 40)} updates)"]
  if len(shadow) > len(names):
    notes.append(f"{len(shadow) - len(names)} EMA tensors of the noise schedule ignored")
  return out, names, notes


def _lightning(obj: dict, path, weights: str, prefix: Optional[str]) -> Loaded:
  """EMA (default) or raw weights of a Lightning checkpoint dict.

  The model's EMA list is `ema` (IDLM's fake model under prefix 'fake_model.': `ema_fake`);
  DiDi-Instruct's `student_ema.` module is an EMA itself and its state_dict weights are taken.
  The aux networks (AUX_NETS) come along: IDLM's fake model as its `ema_fake` EMA when the file
  has one (else its state_dict weights, noted), DiDi's discriminator as stored.
  """
  sd = _flat_tensors(obj["state_dict"], path)
  files = [pathlib.Path(path)]
  if weights == "state_dict":
    return Loaded(dict(sd), "lightning", "state_dict", files,
                  notes=["state_dict (raw, non-EMA) weights taken on request"],
                  ignored_objects=ignored_entries(obj, ("state_dict",)))
  prefix = choose_prefix(sd, prefix)
  out, notes, used, names = dict(sd), [], ["state_dict"], []
  entry = EMA_ENTRIES.get(prefix, "ema")
  if entry is None:
    notes.append(f"'{prefix}': its state_dict weights (DiDi-Instruct's student_ema module, "
                 f"the student's EMA, what its sampler reads)")
  else:
    ema_out, names, ema_notes = _ema_weights(obj, entry, sd, prefix, path)
    out.update(ema_out)
    notes += ema_notes
    used.append(entry)
  for aux_prefix in AUX_NETS:
    aux_entry = EMA_ENTRIES.get(aux_prefix)
    if aux_prefix == prefix or not any(k.startswith(aux_prefix) for k in sd) or not aux_entry:
      continue
    if isinstance(obj.get(aux_entry), dict):
      out.update(_ema_weights(obj, aux_entry, sd, aux_prefix, path)[0])
      notes.append(f"'{aux_prefix}': EMA weights of '{aux_entry}'")
      used.append(aux_entry)
    else:
      notes.append(f"'{aux_prefix}': no '{aux_entry}' in the file, its state_dict weights taken")
  weights_taken = "ema" if entry else "student_ema"
  return Loaded(out, "lightning", weights_taken, files, notes=notes, param_order=names,
                ignored_objects=ignored_entries(obj, tuple(used)))


def _add_didi_discriminator(folder: pathlib.Path, loaded: Loaded) -> Loaded:
  """DiDi-Instruct's HF release: `discriminator.safetensors` beside `model.safetensors` (the
  student_ema); its keys join the state dict under 'discriminator.' (as models/hf_to_ckpt.py
  of the DiDi repository rebuilds its Lightning file)."""
  disc = folder / DIDI_DISCRIMINATOR_FILE
  if not disc.is_file():
    return loaded
  clash = [k for k in loaded.state_dict if k.startswith("discriminator.")]
  if clash:
    raise ConversionError(f"{folder}: both {DIDI_DISCRIMINATOR_FILE} and 'discriminator.*' "
                          f"keys in the model weights ({clash[0]}, ...): which one is meant?")
  loaded.state_dict.update({f"discriminator.{k}": v for k, v in read_safetensors(disc).items()})
  loaded.files.append(disc)
  loaded.notes.append(f"{DIDI_DISCRIMINATOR_FILE}: DiDi-Instruct's discriminator")
  return loaded


def load_source(path, weights: str = "ema", prefix: Optional[str] = None) -> Loaded:
  """Read a local Lightning .ckpt, HF model folder, .safetensors or torch state-dict file.

  `prefix` (default: detected) is the DDiT's key prefix, needed here to match a Lightning EMA
  list to names.
  """
  if weights not in ("ema", "state_dict"):
    raise ValueError(f"weights must be 'ema' or 'state_dict', got {weights!r}")
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    loaded = _add_didi_discriminator(path, _hf_folder(path))
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
  if loaded.ignored_objects:
    log.info("%s: %d entries not converted (kept as records, never executed): %s", path,
             len(loaded.ignored_objects), "; ".join(f"{k} ({v})" for k, v in
                                                    loaded.ignored_objects.items()))
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

  Keys outside the prefix are dropped when they start with one of IGNORED_PREFIXES or belong
  to an aux network (AUX_NETS, read by `extract_aux`); any other key is kept under its full
  name, so that `from_torch_state_dict` reports it as unexpected.
  """
  prefix = choose_prefix(state_dict, prefix)
  out, ignored = {}, {}
  aux = tuple(p for p in AUX_NETS if p != prefix)
  for key, value in state_dict.items():
    if prefix and key.startswith(prefix):
      out[key[len(prefix):]] = value
      continue
    if key.startswith(aux):
      continue
    reason = next((r for p, r in IGNORED_PREFIXES.items() if key.startswith(p)), None)
    if prefix in BACKBONE_BESIDE and key.startswith("backbone."):
      reason = BACKBONE_BESIDE[prefix]
    if reason is not None:
      ignored.setdefault(reason, []).append(key)
    else:
      out[key] = value
  return out, prefix, ignored


def extract_aux(state_dict: dict, prefix: str) -> dict[str, dict[str, np.ndarray]]:
  """{aux net name ('fake', 'disc'): its state dict without prefix} for the AUX_NETS present
  in `state_dict` other than the model's own `prefix`."""
  out: dict = {}
  for aux_prefix, (name, _) in AUX_NETS.items():
    if aux_prefix == prefix:
      continue
    sd = {k[len(aux_prefix):]: v for k, v in state_dict.items() if k.startswith(aux_prefix)}
    if sd:
      out[name] = sd
  return out


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
  if value is None:
    return []
  if value.dtype not in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
    raise ConversionError(f"key '{BUFFERS[0]}' has dtype {value.dtype}; the RoPE buffer is "
                          f"floating point")
  if value.dtype.itemsize > 2:
    return []

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
    if _is_int(cfg.get(name)):
      if "n_heads" in arch and arch["n_heads"] != cfg[name]:
        raise ConversionError(f"the checkpoint contradicts itself: its {BUFFERS[0]} buffer "
                              f"gives head_dim {2 * int(np.shape(sd[BUFFERS[0]])[0])}, so "
                              f"{arch['n_heads']} heads, but config.json says {name}="
                              f"{_short(cfg[name])}")
      arch.setdefault("n_heads", cfg[name])
      break
  if isinstance(cfg.get("time_conditioning"), bool):
    arch["time_conditioning"] = cfg["time_conditioning"]
  return arch


def check_head_count(sd: dict, hf_config: Optional[dict], config_n_heads: int,
                     n_heads: Optional[int] = None) -> str:
  """Where the number of attention heads is verified from; raises ConversionError if nowhere.

  The attention weights have the same shapes for any head count, so a wrong
  config.model.n_heads converts silently into a model with wrong outputs. The head count is
  verified by the `rotary_emb.inv_freq` buffer (length head_dim/2, checked against
  hidden_size/n_heads when the weights are loaded) or by a head count in the model's
  config.json (compared by `check_config`); with neither, conversion needs `n_heads` given
  explicitly (the CLI's --n_heads), which must equal config.model.n_heads.
  """
  if n_heads is not None:
    if not _is_int(n_heads) or n_heads != config_n_heads:
      raise ConversionError(f"n_heads={_short(n_heads)} was given explicitly but "
                            f"config.model.n_heads={config_n_heads}: set "
                            f"--config.model.n_heads={_short(n_heads)} as well (or drop "
                            f"--n_heads)")
  if BUFFERS[0] in sd:
    return f"{BUFFERS[0]} buffer (head_dim = 2 x its length)"
  cfg = dict(hf_config or {})
  cfg.update(cfg.get("model", {}) if isinstance(cfg.get("model"), dict) else {})
  if any(_is_int(cfg.get(name)) for name in ("n_heads", "num_heads", "n_head")):
    return "config.json"
  if n_heads is not None:
    return "given explicitly (n_heads / --n_heads); not verifiable from the checkpoint"
  raise ConversionError(
      f"cannot verify the number of attention heads: the checkpoint has no '{BUFFERS[0]}' "
      f"buffer (its length is head_dim/2) and no config.json with a head count, and the "
      f"attention weights have the same shapes for any head count, so a wrong "
      f"config.model.n_heads={config_n_heads} would convert silently into a model with wrong "
      f"outputs; if {config_n_heads} heads is right, confirm it with --n_heads={config_n_heads} "
      f"(convert_weights(..., n_heads={config_n_heads}))")


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
