"""Read PyTorch zip checkpoints (`torch.save`, torch >= 1.6) without torch and without code.

A checkpoint is untrusted input: unpickling it normally can run arbitrary code. This reader
resolves only the handful of globals that build tensors (`torch._utils._rebuild_tensor_v2`,
`_rebuild_parameter`, the typed storages) and `collections.OrderedDict`, all implemented here
with NumPy. Every other global (Lightning hyper-parameters, OmegaConf configs, tokenizers,
`builtins.eval`, `os.system`, ...) becomes an inert `Opaque` record of its name and
arguments: no module is imported and nothing is called. Tensors come back as NumPy arrays
(bfloat16 as ml_dtypes.bfloat16), bit-exact.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class Opaque:
  """Stand-in for any object the checkpoint names but that is not a tensor: never executed.

  `name` is the global the pickle asked for; `args`/`kwargs` what it would have been called
  with; `state` what would have been set on it.
  """

  name = "?"
  args, kwargs, state = (), {}, None

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.state = state

  def __repr__(self) -> str:
    return f"Opaque({self.name})"


def _stub(module: str, name: str) -> type:
  """A subclass of Opaque standing for `module.name` (calls and __new__ give Opaques)."""
  return type(f"Opaque_{name}", (Opaque,), {"name": f"{module}.{name}"})


class _Storage:
  """A lazily read, flat storage of one dtype from the archive's data/ folder."""

  def __init__(self, data: bytes, dtype):
    self.array = np.frombuffer(data, dtype=np.dtype(dtype))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """torch._utils._rebuild_tensor_v2 for NumPy: a strided view copied to a fresh array."""
  del requires_grad, backward_hooks, metadata
  flat = storage.array
  itemsize = flat.dtype.itemsize
  if not size:
    return flat[storage_offset].copy()
  view = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride),
                                         writeable=False)
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
  del requires_grad, backward_hooks, rest
  return data


class _StorageType:
  def __init__(self, name: str):
    self.dtype = _STORAGE_DTYPES[name]


_SAFE = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix, self._storages = archive, prefix, {}

  def find_class(self, module, name):
    if (module, name) in _SAFE:
      return _SAFE[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    return _stub(module, name)

  def persistent_load(self, pid):
    kind, storage_type, key, _location, _numel = pid
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    if key not in self._storages:
      data = self._archive.read(f"{self._prefix}data/{key}")
      self._storages[key] = _Storage(data, storage_type.dtype)
    return self._storages[key]


def load(path) -> Any:
  """The object saved by torch.save at `path`, tensors as NumPy arrays, other objects Opaque."""
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    raise ValueError(f"{path}: not a zip-format PyTorch checkpoint (torch.save since 1.6 writes "
                     "zip files; re-save older files with a recent torch)") from None
  with archive:
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
    prefix = pkl[0][:-len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
      raise ValueError(f"{path}: big-endian checkpoints are not supported")
    with archive.open(pkl[0]) as f:
      return _Unpickler(f, archive, prefix).load()
