"""Read PyTorch zip checkpoints (`torch.save`, torch >= 1.6) without torch and without code.

A checkpoint is untrusted input: unpickling it normally can run arbitrary code. This reader
resolves only the handful of globals that build tensors (`torch._utils._rebuild_tensor_v2`,
`_rebuild_parameter`, the typed storages) and `collections.OrderedDict`, all implemented here
with NumPy. Every other global (Lightning hyper-parameters, OmegaConf configs, tokenizers,
`builtins.eval`, `os.system`, ...) becomes an inert `Opaque` record of its name and
arguments: no module is imported and nothing is called. Tensors come back as NumPy arrays
(bfloat16 as ml_dtypes.bfloat16), bit-exact.

Nothing in the file is trusted either, so before anything is allocated or any view is made:
  - the archive: one `data.pkl` (at most MAX_PICKLE_BYTES), no duplicate entry names, every
    storage record present, of exactly the byte length the pickle declares for it (numel x
    dtype size), stored or deflated (no other compression; deflated entries declaring at most
    2 x the file size + 64 MiB in all), read with a bounded read whose CRC zipfile checks;
  - the pickle, scanned opcode by opcode before it is unpickled (`pickletools.genops`, which
    allocates nothing a truncated file does not hold): protocol <= 5, no opcode this reader
    does not support (PERSID, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER), memo indices bounded
    by the number of opcodes (a huge BINPUT index would make the C unpickler allocate and
    zero a memo table of that size);
  - each storage: a supported typed storage, a plain key, a non-negative element count, one
    dtype per key;
  - each tensor (`_rebuild_tensor_v2`): sizes and strides non-negative integers of equal
    length (at most MAX_NDIM), offset >= 0, and, when it has elements, the largest element it
    reaches, offset + sum((size_i - 1) * stride_i), inside its storage; an empty tensor's
    offset at most the storage length; the bytes of all tensors built (each is a copy of its
    view) at most MAX_COPY_FACTOR x the storage bytes read + MAX_EXPANDED_BYTES, so neither
    stride-0 expansion nor a view rebuilt again and again can exhaust memory.
A violation raises `UnsafeTensorError` (tensor geometry) or `CheckpointFormatError` (anything
else), naming the storage key and the numbers; any error of the zip or pickle machinery on a
malformed file is reported as a `CheckpointFormatError` too.
"""

from __future__ import annotations

import collections
import io
import lzma
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

MAX_PICKLE_BYTES = 1 << 30  # data.pkl (a Lightning file's is a few MB)
MAX_NDIM = 32
# Tensors are copies of views: their bytes, over the whole file, may exceed the storages' by
# this factor (views of one storage) plus this many bytes (stride-0 expansions); more is a
# memory bomb (a few pickle bytes can rebuild the same large view again and again).
MAX_COPY_FACTOR = 4
MAX_EXPANDED_BYTES = 1 << 28
MAX_GLOBALS = 10_000  # distinct globals named by one pickle (each becomes a stub class)
# Deflated entries (torch writes none) may declare at most this many bytes in all: twice the
# file's size plus 64 MiB; more is a zip bomb (deflate reaches ~1000:1).
MAX_INFLATE_FACTOR, MAX_INFLATE_EXTRA = 2, 64 << 20
# Opcodes the restricted unpickler does not support: text persistent ids (torch writes
# BINPERSID), the copyreg extension registry, out-of-band buffers.
UNSUPPORTED_OPCODES = frozenset({"PERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER",
                                 "READONLY_BUFFER"})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConversionError(ValueError):
  """A checkpoint cannot be read or does not fit the configured model (the message says why)."""


class CheckpointFormatError(ConversionError):
  """The file is not a well-formed checkpoint of its format (damaged, truncated or crafted)."""


class UnsafeTensorError(CheckpointFormatError):
  """A tensor's declared geometry (shape, offsets, strides) does not fit the data it names."""


def _num(x) -> str:
  """An untrusted number for a message (str() of a 5000-digit int raises in Python >= 3.11)."""
  if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 10 ** 30:
    return f"{'-' if x < 0 else ''}<{abs(x).bit_length()}-bit integer>"
  return safe_repr(x)


def safe_repr(x, limit: int = 80) -> str:
  """repr of an untrusted object, bounded (and never raising)."""
  if isinstance(x, (tuple, list)) and len(x) <= 8:
    inner = ", ".join(_num(v) for v in x)
    text = f"({inner}{',' if len(x) == 1 else ''})" if isinstance(x, tuple) else f"[{inner}]"
  else:
    try:
      text = repr(x)
    except Exception:  # noqa: BLE001 (a repr of a malformed object: describe by type)
      text = f"<{type(x).__name__}>"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


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


class _Frozen:
  """Objects of the reader itself: a pickle's BUILD/SETITEM must not rewrite them."""

  __slots__ = ()

  def __setstate__(self, state):
    raise CheckpointFormatError(f"the pickle sets state on a {type(self).__name__.lstrip('_')}")


class _Storage(_Frozen):
  """A flat storage of one dtype, read from the archive's data/ folder."""

  __slots__ = ("key", "array")

  def __init__(self, key: str, data: bytes, dtype):
    self.key, self.array = key, np.frombuffer(data, dtype=np.dtype(dtype))


class _StorageType(_Frozen):
  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def check_view(storage_numel: int, itemsize: int, offset, size, stride, where: str) -> int:
  """Validate a strided view of a flat storage; its element count. Raises UnsafeTensorError.

  Sizes and strides are element counts (torch's convention); `where` names the tensor.
  """
  if not _is_int(offset) or offset < 0:
    raise UnsafeTensorError(f"{where}: storage offset {_num(offset)} is not a non-negative "
                            f"integer")
  if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
    raise UnsafeTensorError(f"{where}: size {safe_repr(size)} and stride {safe_repr(stride)} must "
                            f"be tuples")
  if len(size) != len(stride) or len(size) > MAX_NDIM:
    raise UnsafeTensorError(f"{where}: size {safe_repr(size)} and stride {safe_repr(stride)} must "
                            f"have the same length (at most {MAX_NDIM})")
  for name, values in (("size", size), ("stride", stride)):
    if not all(_is_int(v) and v >= 0 for v in values):
      raise UnsafeTensorError(f"{where}: {name} {safe_repr(values)} is not a tuple of "
                              f"non-negative integers")
  numel = math.prod(size)
  if numel == 0:
    if offset > storage_numel:
      raise UnsafeTensorError(f"{where}: empty tensor at storage offset {_num(offset)}, past "
                              f"the end of its storage of {storage_numel} elements")
    if math.prod(n for n in size if n) * itemsize >= 1 << 62:
      raise UnsafeTensorError(f"{where}: empty tensor of size {safe_repr(size)} has dimensions "
                              f"too large for an array")
    return 0
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage_numel:
    raise UnsafeTensorError(
        f"{where}: size {safe_repr(size)}, stride {safe_repr(stride)} at offset "
        f"{_num(offset)} reach element {_num(last)}, but the storage holds {storage_numel} "
        f"elements (a read past its buffer)")
  return numel


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, entries: dict, where: str):
    super().__init__(file)
    self._archive, self._prefix, self._entries, self._where = archive, prefix, entries, where
    self._storages: dict[str, _Storage] = {}
    self._stubs: dict[tuple, type] = {}
    self._storage_bytes = 0
    self._copied_bytes = 0
    self._tensors = 0

  def find_class(self, module, name):
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return self._rebuild_tensor_v2
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return _rebuild_parameter
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    key = (module, name)
    if key not in self._stubs:
      if len(self._stubs) >= MAX_GLOBALS:
        raise CheckpointFormatError(f"{self._where}: the pickle names more than {MAX_GLOBALS} "
                                    f"distinct globals")
      self._stubs[key] = _stub(module, name)
    return self._stubs[key]

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise CheckpointFormatError(f"{self._where}: unsupported persistent id {safe_repr(pid)} "
                                  f"(expected ('storage', type, key, location, numel))")
    _, storage_type, key, _location, numel = pid
    if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
      raise CheckpointFormatError(f"{self._where}: storage key {safe_repr(key)} is not a plain "
                                  f"name")
    if not isinstance(storage_type, _StorageType):
      kind = getattr(storage_type, "name", type(storage_type).__name__)
      raise CheckpointFormatError(
          f"{self._where}: storage '{key}' has unsupported type {safe_repr(kind)} (supported: "
          f"{', '.join('torch.' + n for n in _STORAGE_DTYPES)})")
    if not _is_int(numel) or numel < 0:
      raise CheckpointFormatError(f"{self._where}: storage '{key}' declares "
                                  f"{_num(numel)} elements")
    cached = self._storages.get(key)
    if cached is not None:
      if cached.array.dtype != storage_type.dtype or cached.array.size != numel:
        raise CheckpointFormatError(
            f"{self._where}: storage '{key}' is declared as {cached.array.size} x "
            f"{cached.array.dtype} and again as {_num(numel)} x {storage_type.dtype}")
      return cached
    record = f"{self._prefix}data/{key}"
    info = self._entries.get(record)
    if info is None:
      raise CheckpointFormatError(f"{self._where}: storage '{key}': the archive has no "
                                  f"record {record!r}")
    nbytes = numel * storage_type.dtype.itemsize
    if info.file_size != nbytes:
      raise CheckpointFormatError(
          f"{self._where}: storage '{key}' declares {_num(numel)} x {storage_type.dtype} "
          f"({_num(nbytes)} bytes) but its record {record!r} holds {info.file_size} bytes")
    self._storages[key] = _Storage(key, _read_entry(self._archive, info, self._where),
                                   storage_type.dtype)
    self._storage_bytes += nbytes
    return self._storages[key]

  def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                         backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 for NumPy: a checked strided view, copied."""
    del requires_grad, backward_hooks, metadata
    self._tensors += 1
    if not isinstance(storage, _Storage):
      raise UnsafeTensorError(f"{self._where}: tensor #{self._tensors} is built on "
                              f"{safe_repr(storage)}, not on a storage")
    flat = storage.array
    where = f"{self._where}: tensor #{self._tensors} on storage '{storage.key}' ({flat.dtype})"
    numel = check_view(flat.size, flat.itemsize, storage_offset, size, stride, where)
    if numel == 0:
      return np.empty(tuple(size), flat.dtype)
    self._copied_bytes += numel * flat.itemsize
    if self._copied_bytes > MAX_COPY_FACTOR * self._storage_bytes + MAX_EXPANDED_BYTES:
      raise UnsafeTensorError(
          f"{where}: size {safe_repr(size)}, stride {safe_repr(stride)} ({numel} elements): the "
          f"tensors built so far hold {self._copied_bytes} bytes, more than "
          f"{MAX_COPY_FACTOR} x the {self._storage_bytes} bytes of storage read plus "
          f"{MAX_EXPANDED_BYTES} (views repeated or expanded beyond their storage)")
    if not size:
      return np.array(flat[storage_offset])
    # a dimension of size 1 never moves: its stride may be anything, so use 0
    strides = tuple(0 if n == 1 else s * flat.itemsize for n, s in zip(size, stride))
    view = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=tuple(size),
                                           strides=strides, writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
  del requires_grad, backward_hooks, rest
  return data


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
  """The bytes of one archive entry, read within its declared size (zipfile checks the CRC)."""
  if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
    raise CheckpointFormatError(f"{where}: record {info.filename!r} uses compression "
                                f"{info.compress_type} (torch.save stores records uncompressed)")
  with archive.open(info) as f:
    data = f.read(info.file_size + 1)
  if len(data) != info.file_size:
    raise CheckpointFormatError(f"{where}: record {info.filename!r} holds {len(data)} bytes, "
                                f"not the {info.file_size} its header declares")
  return data


def scan_pickle(data: bytes, where: str = "pickle") -> int:
  """Check every opcode of a pickle before unpickling it; the number of opcodes.

  Raises CheckpointFormatError for a malformed or truncated pickle, a protocol above 5, an
  unsupported opcode, or a memo index beyond the number of opcodes.
  """
  count, max_put = 0, -1
  try:
    for op, arg, pos in pickletools.genops(io.BytesIO(data)):
      count += 1
      if op.name in UNSUPPORTED_OPCODES:
        raise CheckpointFormatError(f"{where}: opcode {op.name} at byte {pos} is not supported "
                                    f"by the restricted unpickler")
      if op.name == "PROTO" and arg > pickle.HIGHEST_PROTOCOL:
        raise CheckpointFormatError(f"{where}: pickle protocol {arg} (at most "
                                    f"{pickle.HIGHEST_PROTOCOL} is supported)")
      if op.name in _MEMO_PUTS:
        if not _is_int(arg) or arg < 0 or arg > len(data):
          raise CheckpointFormatError(f"{where}: memo index {_num(arg)} at byte {pos} is out "
                                      f"of range")
        max_put = max(max_put, arg)
  except CheckpointFormatError:
    raise
  except (ValueError, struct.error, EOFError) as e:  # genops: bad opcode, truncated, bad text
    raise CheckpointFormatError(f"{where}: malformed pickle ({error_summary(e)})") from None
  if max_put >= count:
    raise CheckpointFormatError(f"{where}: memo index {max_put} but only {count} opcodes")
  return count


def error_summary(e: BaseException) -> str:
  try:
    text = str(e)
  except Exception:  # noqa: BLE001
    text = ""
  text = text.strip().splitlines()[0] if text.strip() else ""
  return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


# Errors the zip and pickle machinery raise on malformed input; reported as format errors.
_DECODE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError,
                  EOFError, struct.error, NotImplementedError, pickle.UnpicklingError,
                  ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError,
                  RuntimeError, MemoryError, UnicodeError)


def load(path) -> Any:
  """The object saved by torch.save at `path`, tensors as NumPy arrays, other objects Opaque.

  Raises CheckpointFormatError (UnsafeTensorError for bad tensor geometry) for anything that is
  not a well-formed checkpoint; OSError if the file cannot be opened.
  """
  with open(path, "rb") as f:  # OSError here: the file cannot be read at all
    try:
      archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, EOFError, OSError, struct.error, ValueError, zlib.error,
            NotImplementedError, UnicodeError, OverflowError):
      raise CheckpointFormatError(
          f"{path}: not a zip-format PyTorch checkpoint (torch.save since 1.6 writes zip "
          f"files; re-save older files with a recent torch)") from None
    try:
      with archive:
        return _load(archive, str(path), os.fstat(f.fileno()).st_size)
    except CheckpointFormatError:
      raise
    except RecursionError:
      raise CheckpointFormatError(f"{path}: objects nested too deeply") from None
    except (*_DECODE_ERRORS, OSError) as e:  # OSError: a seek outside the file, ...
      raise CheckpointFormatError(f"{path}: malformed checkpoint "
                                  f"({error_summary(e)})") from None


def _load(archive: zipfile.ZipFile, where: str, file_size: int) -> Any:
  infos = archive.infolist()
  inflated = sum(i.file_size for i in infos if i.compress_type != zipfile.ZIP_STORED)
  if inflated > MAX_INFLATE_FACTOR * file_size + MAX_INFLATE_EXTRA:
    raise CheckpointFormatError(f"{where}: compressed entries declare {inflated} bytes, from a "
                                f"file of {file_size} bytes (a zip bomb?)")
  names = [i.filename for i in infos]
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})[:3]
    raise CheckpointFormatError(f"{where}: duplicate archive entries {dup}")
  entries = {i.filename: i for i in infos}
  pkl = [n for n in names if n.rsplit("/", 1)[-1] == "data.pkl" and n.count("/") <= 1]
  if len(pkl) != 1:
    raise CheckpointFormatError(f"{where}: expected one data.pkl in the archive, found "
                                f"{pkl[:4] or 'none'}")
  prefix = pkl[0][:-len("data.pkl")]
  info = entries[pkl[0]]
  if info.file_size > MAX_PICKLE_BYTES:
    raise CheckpointFormatError(f"{where}: {pkl[0]} declares {info.file_size} bytes (at most "
                                f"{MAX_PICKLE_BYTES})")
  byteorder = entries.get(f"{prefix}byteorder")
  if byteorder is not None:
    if byteorder.file_size > 16 or _read_entry(archive, byteorder, where).strip() != b"little":
      raise CheckpointFormatError(f"{where}: big-endian (or unknown byte order) checkpoints "
                                  f"are not supported")
  data = _read_entry(archive, info, where)
  scan_pickle(data, f"{where}: {pkl[0]}")
  return _Unpickler(io.BytesIO(data), archive, prefix, entries, where).load()
