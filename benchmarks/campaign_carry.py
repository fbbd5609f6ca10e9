"""Builds the folder the GPU campaign carries to the device (benchmarks/gpu_campaign.md).

  python benchmarks/campaign_carry.py                      # -> .campaign (git-ignored)
  python benchmarks/campaign_carry.py --out=/tmp/c --corpora=idlm_jax/data/assets/corpora \
      --max-passages=200 --no-wheels                       # the smoke test's tiny version

Downloads nothing but the wheels the device lacks (`pip download` for CPython 3.12 on x86-64
from PyPI, or copies from a local wheel folder): ml_collections, tensorboardX, and grain with
array_record and portpicker (`WHEELS`). Then:
  text/{teacher,evaluator}/<corpus>.txt.gz  the public-domain corpora as passages (16
      non-empty lines joined, the embedded source's unit), one per line, each passage in
      exactly one half by crc32("evaluator:" + text) % 2: the teacher and the AR evaluator
      never see the same document (and this rule is independent of the pipeline's own
      validation rule, crc32(text) % 100 < 5, applied inside each half);
  torch/ddit_torch_reference.py  the PyTorch reference (../shared/bench), which the device's
      python runs with torch.compile;
  whl/  the wheels.
The device tokenizes the text itself (the GPT-2 rows of both halves took 14 s on 2 CPU cores
here; carrying them took 35 MB). The tracked tree plus this folder must stay under the 64 MiB
a device call carries (`check_size`).
"""

import argparse
import gzip
import pathlib
import shutil
import subprocess
import sys
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import gpu_campaign  # noqa: E402
from idlm_jax.data import sources  # noqa: E402

# what the device image lacks (/work/.library/device/KINDS.md lists its packages): grain, which
# data/loader.py imports, with its two missing requirements (array_record is a compiled
# wheel: downloaded for the device's CPython 3.12 on x86-64), ml_collections, tensorboardX
WHEELS = ("ml_collections==1.1.0", "tensorboardX==2.6.5", "grain==0.2.18",
          "array_record==0.8.6", "portpicker==1.6.0")
# the device image's distributions (/work/.library/device/KINDS.md, as read on 2026-11-17);
# tests/benchmarks/test_gpu_campaign.py checks that every third-party module the package and
# the benchmarks import at module level is here or in WHEELS
DEVICE_IMAGE = frozenset("""
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub
    humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
    lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
    markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy
    numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
    nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
    packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
    pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
    sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
    tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
    urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# import name -> distribution name, where they differ
DISTRIBUTION = {"absl": "absl-py", "orbax": "orbax-checkpoint", "ml_collections":
                "ml_collections", "ml_dtypes": "ml-dtypes", "yaml": "pyyaml", "sklearn":
                "scikit-learn", "PIL": "pillow", "google": "protobuf"}
DEVICE_PIP = ("--python-version", "3.12", "--implementation", "cp", "--platform",
              "manylinux_2_28_x86_64", "--platform", "manylinux_2_24_x86_64", "--platform",
              "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64")
# corpora left out of the carry (none since the token rows stopped travelling: with gcide, a
# 7.7 MB dictionary, tree + carry is ~54 of the 64 MiB)
EXCLUDE = ()


def evaluator_half(text: str) -> bool:
  """The fixed rule that puts a passage in the evaluator's half (else the teacher's)."""
  return zlib.crc32(("evaluator:" + text).encode("utf-8")) % 2 == 1


def write_halves(corpora: pathlib.Path, out: pathlib.Path, max_passages: int = 0) -> dict:
  """text/{teacher,evaluator}/<name>.txt.gz from every corpus file; returns passage counts."""
  counts = {"teacher": 0, "evaluator": 0}
  for path in sorted(corpora.glob("*.txt.gz")):
    name = path.name[:-len(".txt.gz")]
    if name in EXCLUDE:
      continue
    halves = {"teacher": [], "evaluator": []}
    for i, passage in enumerate(sources.iter_passages(path, sources.PASSAGE_LINES)):
      if max_passages and i >= max_passages:
        break
      halves["evaluator" if evaluator_half(passage) else "teacher"].append(passage)
    for half, passages in halves.items():
      (out / "text" / half).mkdir(parents=True, exist_ok=True)
      with open(out / "text" / half / f"{name}.txt.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # byte-identical rebuilds
          f.write(("\n".join(passages) + "\n").encode("utf-8"))
      counts[half] += len(passages)
  return counts


def wheels(out: pathlib.Path, local: str) -> None:
  """The wheels into out/whl: from a local folder when there, else pip download."""
  (out / "whl").mkdir(parents=True, exist_ok=True)
  for spec in WHEELS:
    name, version = spec.split("==")
    found = sorted(pathlib.Path(local).glob(f"{name}-{version}-*.whl")) if local else []
    found = [f for f in found if f.name.endswith("-py3-none-any.whl")  # or the device's build
             or ("-cp312-cp312-manylinux" in f.name and f.name.endswith("x86_64.whl"))]
    if found:
      shutil.copy(found[0], out / "whl")
      continue
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    *DEVICE_PIP, "-d", str(out / "whl"), spec], check=True)


def size_mib(path: pathlib.Path) -> float:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def tree_mib() -> float:
  """MiB of the files git tracks (what a device call sends besides the carried folders)."""
  out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
  if out.returncode:  # not a git checkout: no device call can send it anyway
    return 0.0
  return sum((ROOT / f).stat().st_size for f in out.stdout.decode().split("\0")
             if f and (ROOT / f).is_file()) / 2**20


def check_size(carry_mib: float, limit_mib: float = 64.0, margin_mib: float = 2.0) -> float:
  """The tree plus the carry in MiB; SystemExit when over the device call's limit."""
  total = tree_mib() + carry_mib
  if total > limit_mib - margin_mib:
    raise SystemExit(f"tracked tree + carry = {total:.1f} MiB > {limit_mib - margin_mib} MiB "
                     "(a device call carries 64 MiB): carry less")
  return total


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=".campaign")
  ap.add_argument("--corpora", default="/work/shared/data/corpora")
  ap.add_argument("--torch-ref", default="/work/shared/bench/ddit_torch_reference.py")
  ap.add_argument("--local-wheels", default="/opt/pypi/files")
  ap.add_argument("--max-passages", type=int, default=0, help=">0: per corpus file (tests)")
  ap.add_argument("--no-wheels", action="store_true")
  args = ap.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  counts = write_halves(pathlib.Path(args.corpora), out, args.max_passages)
  print(f"passages: {counts}", flush=True)
  if pathlib.Path(args.torch_ref).is_file():
    (out / "torch").mkdir(exist_ok=True)
    shutil.copy(args.torch_ref, out / "torch" / "ddit_torch_reference.py")
  if not args.no_wheels:
    wheels(out, args.local_wheels)
  mib = size_mib(out)
  total = check_size(mib)
  print(f"{out}: {mib:.1f} MiB; with the tracked tree {total:.1f} MiB of 64", flush=True)
  return dict(passages=counts, mib=mib, total_mib=total)


if __name__ == "__main__":
  main()
