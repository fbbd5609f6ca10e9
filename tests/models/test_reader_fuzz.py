"""The torch-free readers on malformed and crafted files (issue #19, item 9).

  - regression tests of the two reported exploits (a tensor reading past its storage; a
    size of 2^28 that crashed the process) and of every check the readers make;
  - a seeded fuzz run (tests/models/reader_fuzz.py) over mutated .ckpt, .bin and .safetensors
    files in a subprocess worker: FUZZ_CASES cases per format in CI (deterministic, ~1-2 s
    after the worker has started); IDLM_FUZZ_SECONDS=300 runs for that long instead,
    IDLM_FUZZ_SEED picks the seed, IDLM_FUZZ_CASE=fmt:index reruns one case.

The hand-made files are written without torch; the fuzz fixtures need torch (skipped without).
"""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from idlm_jax.models import readers as conv
from idlm_jax.models import gpt2, torch_pickle
from tests.models import reader_fuzz as fuzz

FUZZ_CASES = 300  # per format, in CI


def _storage(values, dtype=np.float32) -> bytes:
  return np.asarray(values, dtype).tobytes()


def _write(path, tensors, records, **kw):
  """A torch zip with `tensors` {name: (key, kind, numel, offset, size, stride)}."""
  fuzz.write_torch_zip(path, fuzz.tensor_pickle(tensors), records, **kw)
  return path


def _one_tensor(tmp_path, offset=0, size=(4,), stride=(1,), numel=4, data=None,
                kind="FloatStorage", name="t.bin"):
  data = _storage(np.arange(1, 5)) if data is None else data
  return _write(tmp_path / name, {"w": ("0", kind, numel, offset, size, stride)}, {"0": data})


# ---------------------------------------------------------------------------- the exploits


def test_valid_hand_made_file_loads(tmp_path):
  """The hand-made writer matches the reader: views at offsets and strides load exactly."""
  base = np.arange(12, dtype=np.float32) * 1.5
  path = _write(tmp_path / "ok.bin", {
      "m": ("0", "FloatStorage", 12, 0, (3, 4), (4, 1)),
      "t": ("0", "FloatStorage", 12, 1, (3, 2), (1, 4)),  # transposed view at offset 1
      "row": ("0", "FloatStorage", 12, 8, (4,), (1,)),
      "s": ("0", "FloatStorage", 12, 11, (), ()),  # a 0-d tensor is a 0-d array
      "x": ("0", "FloatStorage", 12, 3, (5,), (0,)),  # an expanded (stride-0) view
      "e": ("0", "FloatStorage", 12, 12, (0, 7), (7, 1)),
  }, {"0": base.tobytes()})
  out = conv.read_torch_file(path)
  np.testing.assert_array_equal(out["m"], base.reshape(3, 4))
  np.testing.assert_array_equal(out["t"], [[base[1 + i + 4 * j] for j in range(2)]
                                          for i in range(3)])
  np.testing.assert_array_equal(out["row"], base[8:])
  assert isinstance(out["s"], np.ndarray) and out["s"].shape == () and out["s"] == base[11]
  np.testing.assert_array_equal(out["x"], np.full(5, base[3]))
  assert out["e"].shape == (0, 7)


def test_read_past_the_buffer_is_refused(tmp_path):
  """Reported: size (8,) on a 4-element storage silently loaded 4 floats of leftover memory
  (values like 4.3e24). Now a named error with the storage and the numbers."""
  path = _one_tensor(tmp_path, size=(8,))
  with pytest.raises(conv.UnsafeTensorError,
                     match=r"storage '0' \(float32\): size \(8,\), stride \(1,\) at offset 0 "
                           r"reach element 7, but the storage holds 4 elements"):
    conv.read_torch_file(path)
  with pytest.raises(conv.UnsafeTensorError, match="at offset 3 reach element 4"):
    conv.read_torch_file(_one_tensor(tmp_path, offset=3, size=(2,), name="off.bin"))
  with pytest.raises(conv.UnsafeTensorError, match=r"stride \(1, 3\) .* reach element 4,"):
    conv.read_torch_file(_one_tensor(tmp_path, size=(2, 2), stride=(1, 3), name="st.bin"))
  assert issubclass(conv.UnsafeTensorError, conv.ConversionError)


def test_size_2_pow_28_is_an_error_not_a_segfault(tmp_path):
  """Reported: size 2^28 on a small storage crashed the process with SIGSEGV. Run in a
  subprocess, so that a regression fails this test instead of killing pytest."""
  path = _one_tensor(tmp_path, size=(2**28,))
  code = ("import sys; from idlm_jax.models import readers as conv\n"
          "try:\n  conv.read_torch_file(sys.argv[1])\n"
          "except conv.UnsafeTensorError as e:\n  print('refused:', e)\n")
  out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=fuzz.ROOT,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
  assert "refused:" in out.stdout and "size (268435456,)" in out.stdout
  assert "reach element 268435455, but the storage holds 4 elements" in out.stdout


# ---------------------------------------------------------------------------- torch checks


@pytest.mark.parametrize("offset,size,stride,match", [
    (-1, (4,), (1,), "storage offset -1 is not a non-negative integer"),
    (0, (2, 2), (1,), "must have the same length"),
    (0, (2,), (-1,), r"stride \(-1,\) is not a tuple of non-negative integers"),
    (0, (-2,), (1,), r"size \(-2,\) is not a tuple of non-negative integers"),
    (0, (1,) * 33, (1,) * 33, "at most 32"),
    (5, (0,), (1,), "empty tensor at storage offset 5, past the end"),
    (4, (), (), "at offset 4 reach element 4"),
    (0, (2**64, 2), (1, 2**64), "reach element"),
    (0, (1, 2), (2**70, 1), None),  # a size-1 dimension never moves: any stride is fine
])
def test_tensor_geometry_checks(tmp_path, offset, size, stride, match):
  path = _one_tensor(tmp_path, offset=offset, size=size, stride=stride)
  if match is None:
    np.testing.assert_array_equal(conv.read_torch_file(path)["w"], [[1, 2]])
    return
  with pytest.raises(conv.UnsafeTensorError, match=match):
    conv.read_torch_file(path)


@pytest.mark.parametrize("offset,size,stride", [
    (1.5, (2,), (1,)), (True, (2,), (1,)), (0, (True,), (1,)), (0, (2,), (1.0,)),
    (0, [2], "1"), (0, None, None), (0, (2,), (np.int64(1),)),
])
def test_geometry_must_be_plain_integers(offset, size, stride):
  with pytest.raises(torch_pickle.UnsafeTensorError, match="integer|tuples"):
    torch_pickle.check_view(4, 4, offset, size, stride, "t")


def test_storage_and_archive_checks(tmp_path):
  # the record holds 16 bytes, the pickle declares 5 float32 elements
  with pytest.raises(conv.CheckpointFormatError, match=r"storage '0' declares 5 x float32 "
                                                       r"\(20 bytes\) but its record .* 16"):
    conv.read_torch_file(_one_tensor(tmp_path, numel=5))
  with pytest.raises(conv.CheckpointFormatError, match="declares 18446744073709551616 x float32"):
    conv.read_torch_file(_one_tensor(tmp_path, numel=2**64, name="huge.bin"))
  with pytest.raises(conv.CheckpointFormatError,
                     match="unsupported type 'torch.ComplexFloatStorage'"):
    conv.read_torch_file(_one_tensor(tmp_path, kind="ComplexFloatStorage", name="c.bin"))
  path = _write(tmp_path / "norec.bin", {"w": ("7", "FloatStorage", 4, 0, (4,), (1,))},
                {"0": _storage([1, 2, 3, 4])})
  with pytest.raises(conv.CheckpointFormatError, match="no record 'archive/data/7'"):
    conv.read_torch_file(path)
  path = _write(tmp_path / "key.bin", {"w": ("../0", "FloatStorage", 4, 0, (4,), (1,))},
                {"0": _storage([1, 2, 3, 4])})
  with pytest.raises(conv.CheckpointFormatError, match="storage key '../0' is not a plain"):
    conv.read_torch_file(path)
  # the same storage key as two dtypes
  path = _write(tmp_path / "twice.bin", {"a": ("0", "FloatStorage", 4, 0, (4,), (1,)),
                                         "b": ("0", "IntStorage", 4, 0, (4,), (1,))},
                {"0": _storage([1, 2, 3, 4])})
  with pytest.raises(conv.CheckpointFormatError, match="declared as 4 x float32 and again"):
    conv.read_torch_file(path)
  # no data.pkl / two of them / duplicate entries / big-endian
  with zipfile.ZipFile(tmp_path / "nopkl.bin", "w") as z:
    z.writestr("archive/data/0", _storage([1]))
  with pytest.raises(conv.CheckpointFormatError, match="expected one data.pkl.*none"):
    conv.read_torch_file(tmp_path / "nopkl.bin")
  pkl = fuzz.tensor_pickle({"w": ("0", "FloatStorage", 1, 0, (1,), (1,))})
  with zipfile.ZipFile(tmp_path / "two.bin", "w") as z:
    z.writestr("a/data.pkl", pkl)
    z.writestr("b/data.pkl", pkl)
  with pytest.raises(conv.CheckpointFormatError, match="expected one data.pkl"):
    conv.read_torch_file(tmp_path / "two.bin")
  with pytest.warns(UserWarning), zipfile.ZipFile(tmp_path / "dup.bin", "w") as z:
    z.writestr("a/data.pkl", pkl)
    z.writestr("a/data/0", _storage([1]))
    z.writestr("a/data/0", _storage([2]))
  with pytest.raises(conv.CheckpointFormatError, match="duplicate archive entries"):
    conv.read_torch_file(tmp_path / "dup.bin")
  with zipfile.ZipFile(tmp_path / "big.bin", "w") as z:
    z.writestr("a/data.pkl", pkl)
    z.writestr("a/byteorder", "big")
    z.writestr("a/data/0", _storage([1]))
  with pytest.raises(conv.CheckpointFormatError, match="big-endian"):
    conv.read_torch_file(tmp_path / "big.bin")


def test_absurd_declared_sizes_in_the_zip(tmp_path):
  """A central-directory size of 4 GiB for a 16-byte record: refused before any allocation."""
  data = bytearray(_one_tensor(tmp_path).read_bytes())
  central = data.rfind(b"PK\x01\x02")  # the central entry of the last record, data/0
  assert data[central + 46:central + 60] == b"archive/data/0"
  data[central + 24:central + 28] = (2**32 - 1).to_bytes(4, "little")  # uncompressed size
  (tmp_path / "absurd.bin").write_bytes(bytes(data))
  with pytest.raises(conv.CheckpointFormatError, match="4294967295 bytes"):
    conv.read_torch_file(tmp_path / "absurd.bin")


def test_deflated_records_load_but_a_zip_bomb_is_refused(tmp_path, monkeypatch):
  pkl = fuzz.tensor_pickle({"w": ("0", "FloatStorage", 4096, 0, (4096,), (1,))})
  with zipfile.ZipFile(tmp_path / "deflated.bin", "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("a/data.pkl", pkl)
    z.writestr("a/data/0", bytes(4 * 4096))  # zeros: ~1000:1
  assert conv.read_torch_file(tmp_path / "deflated.bin")["w"].shape == (4096,)
  monkeypatch.setattr(torch_pickle, "MAX_INFLATE_EXTRA", 1024)
  with pytest.raises(conv.CheckpointFormatError, match="compressed entries declare 16.* bytes, "
                                                       "from a file of .* bytes"):
    conv.read_torch_file(tmp_path / "deflated.bin")


@pytest.mark.parametrize("snippet,match", [
    (b"\x82\x01", "opcode EXT1 at byte 2 is not supported"),
    (b"\x97", "opcode NEXT_BUFFER"),
    (b"P0\n", "opcode PERSID"),
    (b")r\xff\xff\xff\xff0", "memo index 4294967295 at byte 3 is out of range"),
    (b"\x8e" + (2**40).to_bytes(8, "little"), "malformed pickle"),  # BINBYTES8 of 1 TiB
    (b"L" + b"9" * 5000 + b"L\n", "malformed pickle"),  # an int over 4300 digits
])
def test_unsupported_or_malicious_opcodes_are_refused_before_unpickling(tmp_path, snippet,
                                                                        match):
  pkl = fuzz.tensor_pickle({"w": ("0", "FloatStorage", 1, 0, (1,), (1,))})
  fuzz.write_torch_zip(tmp_path / "op.bin", pkl[:2] + snippet + pkl[2:], {"0": _storage([1])})
  with pytest.raises(conv.CheckpointFormatError, match=match):
    conv.read_torch_file(tmp_path / "op.bin")


def test_protocol_and_nesting_and_memory_bombs(tmp_path, monkeypatch):
  fuzz.write_torch_zip(tmp_path / "p6.bin", b"\x80\x06N.", {})
  with pytest.raises(conv.CheckpointFormatError, match="protocol 6"):
    conv.read_torch_file(tmp_path / "p6.bin")
  deep = b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."  # lists nested 5000 deep
  fuzz.write_torch_zip(tmp_path / "deep.bin", deep, {})
  with pytest.raises(conv.CheckpointFormatError, match="nested"):
    conv.read_torch_file(tmp_path / "deep.bin")
  # the same list referenced twice at each of 60 levels: 2^60 paths, 60 objects
  laughs = b"\x80\x02]q\x00" + b"".join(
      b"]q" + bytes([i]) + b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e" for i in
      range(1, 60)) + b"."
  fuzz.write_torch_zip(tmp_path / "laughs.bin", laughs, {})
  assert isinstance(conv.read_torch_file(tmp_path / "laughs.bin"), list)
  # stride-0 views of 2^18 float32 (1 MiB each): refused once the copies exceed the budget
  # (the storage bytes x MAX_COPY_FACTOR + MAX_EXPANDED_BYTES, here made 2 MiB)
  monkeypatch.setattr(torch_pickle, "MAX_EXPANDED_BYTES", 2 << 20)
  tensors = {f"x{i}": ("0", "FloatStorage", 1, 0, (2**18,), (0,)) for i in range(3)}
  _write(tmp_path / "expand.bin", tensors, {"0": _storage([1])})
  with pytest.raises(conv.UnsafeTensorError, match="views repeated or expanded"):
    conv.read_torch_file(tmp_path / "expand.bin")


def test_pickled_code_is_still_inert_and_state_cannot_rewrite_storages(tmp_path):
  pkl = (b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touch\x85R.")
  fuzz.write_torch_zip(tmp_path / "sys.bin", pkl, {})
  obj = conv.read_torch_file(tmp_path / "sys.bin")
  assert isinstance(obj, torch_pickle.Opaque) and obj.name == "os.system"
  # BUILD on a storage type object (as if to swap its dtype): refused
  pkl = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeK\x01sb."
  fuzz.write_torch_zip(tmp_path / "build.bin", pkl, {})
  with pytest.raises(conv.CheckpointFormatError, match="sets state on a StorageType"):
    conv.read_torch_file(tmp_path / "build.bin")


def test_missing_file_is_a_conversion_error(tmp_path):
  with pytest.raises(conv.ConversionError):
    conv.read_torch_file(tmp_path / "nope.ckpt")
  (tmp_path / "x.ckpt").write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(conv.CheckpointFormatError, match="not a zip-format"):
    conv.read_torch_file(tmp_path / "x.ckpt")


# ---------------------------------------------------------------------------- safetensors


def _st(tmp_path, header, body=b"", length=None, name="x.safetensors"):
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  n = len(raw) if length is None else length
  (tmp_path / name).write_bytes(n.to_bytes(8, "little") + raw + body)
  return tmp_path / name


@pytest.mark.parametrize("header,match", [
    ([1, 2], "the header is a JSON list, not an object"),
    ({"a": 3}, "header entry 3 is not an object"),
    ({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, "unsupported dtype"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
     r"shape \[-1\] is not a list of at most 32 non-negative integers"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, "shape"),
    ({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, "shape"),
    ({"a": {"dtype": "F32", "shape": [1] * 33, "data_offsets": [0, 4]}}, "at most 32"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [1]}}, "data_offsets None"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
     r"inconsistent data offsets \[0, 16\] \(the data section holds 8 bytes\)"),
    ({"a": {"dtype": "F32", "shape": [2**62, 0], "data_offsets": [0, 0]}}, "too large"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "'a' and 'b' overlap"),
    ({"__metadata__": [1]}, "__metadata__ must map names to strings"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', "duplicate key 'a'"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a": 1' + b"1" * 5000 + b"}", "bad JSON header"),
    (b"\x80{}", "bad JSON header"),
])
def test_safetensors_header_checks(tmp_path, header, match):
  with pytest.raises(conv.CheckpointFormatError, match=match):
    conv.read_safetensors(_st(tmp_path, header, bytes(8)))


def test_safetensors_length_checks(tmp_path, monkeypatch):
  (tmp_path / "e.safetensors").write_bytes(b"\x01")
  with pytest.raises(conv.CheckpointFormatError, match="shorter than its 8-byte"):
    conv.read_safetensors(tmp_path / "e.safetensors")
  with pytest.raises(conv.CheckpointFormatError, match="header length 18446744073709551615 "
                                                       "exceeds"):
    conv.read_safetensors(_st(tmp_path, {}, length=2**64 - 1))
  monkeypatch.setattr(conv, "MAX_SAFETENSORS_HEADER", 16)
  with pytest.raises(conv.CheckpointFormatError, match="header of 40 bytes \\(at most 16\\)"):
    conv.read_safetensors(_st(tmp_path, b"{" + b" " * 38 + b"}"))


def test_safetensors_valid_edge_cases_and_one_shared_reader(tmp_path):
  tensors = {"z": np.zeros((0, 3), np.float32), "s": np.array(2.5, np.float64),
             "b": np.array([1.5, -2], ml_dtypes.bfloat16)}
  conv.write_safetensors(tmp_path / "v.safetensors", tensors)
  back = conv.read_safetensors(tmp_path / "v.safetensors")
  for k, v in tensors.items():
    assert back[k].shape == v.shape and back[k].dtype == v.dtype
    np.testing.assert_array_equal(back[k], v)
  # gpt2 reads through the same checked reader (BF16 widened) and writes with the same writer
  assert gpt2.write_safetensors is conv.write_safetensors
  assert gpt2.read_safetensors(tmp_path / "v.safetensors")["b"].dtype == np.float32
  bad = _st(tmp_path, {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, bytes(8))
  with pytest.raises(conv.UnsafeTensorError, match="inconsistent data offsets"):
    gpt2.read_safetensors(bad)
  assert not hasattr(gpt2, "_ST_DTYPES")


# ---------------------------------------------------------------------------- fuzz


@pytest.mark.slow
def test_fuzz_readers(tmp_path):
  """Mutated .ckpt/.bin/.safetensors files: every load returns exact, in-file tensors or
  raises a ConversionError; never another exception, a crash or a hang (see reader_fuzz)."""
  pytest.importorskip("torch")
  seconds = float(os.environ.get("IDLM_FUZZ_SECONDS", "0"))
  seed = int(os.environ.get("IDLM_FUZZ_SEED", "0"))
  summary = fuzz.run(tmp_path, seed=seed, cases=FUZZ_CASES, seconds=seconds,
                     only=os.environ.get("IDLM_FUZZ_CASE", ""))
  print(f"reader fuzz: seed {seed}, {summary['cases']} cases in {summary['seconds']:.1f} s; "
        f"outcomes {dict(summary['outcomes'])}")
  assert not summary["failures"], "\n".join(summary["failures"][:20])
  if not seconds and not os.environ.get("IDLM_FUZZ_CASE"):
    assert summary["cases"] == FUZZ_CASES * len(fuzz.FORMATS)
    # the mutations reach both outcomes in every format (the harness is not vacuous)
    for fmt in fuzz.FORMATS:
      kinds = {k for k in summary["outcomes"] if k.startswith(fmt)}
      assert any(k.endswith(": ok") for k in kinds), kinds
      assert any("UnsafeTensorError" in k for k in kinds), kinds


def test_fuzz_cases_are_reproducible(tmp_path):
  """Case i of a seed is the same file every time (IDLM_FUZZ_CASE reruns it alone)."""
  conv.write_safetensors(tmp_path / "a.safetensors", {"a": np.ones((2, 3), np.float32)})
  original = (tmp_path / "a.safetensors").read_bytes()
  cases = [fuzz.make_case(original, "safetensors", 3, i) for i in range(20)]
  assert cases == [fuzz.make_case(original, "safetensors", 3, i) for i in range(20)]
  assert len({c[0] for c in cases}) > 10
  assert pickle.loads(fuzz.tensor_pickle({})) == {}
