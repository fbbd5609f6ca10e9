"""Test setup: 8 fake CPU devices before JAX initialises, the repo root on sys.path."""

import importlib.metadata
import os
import pathlib
import sys

# The flags as the user gave them, for the subprocesses that run exactly as a user's job does
# (tests/test_smoke_configs.py): the compile-time tuning below makes run time 2-3x slower.
os.environ.setdefault("IDLM_JAX_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))

# 8 fake CPU devices, and XLA:CPU code generation tuned for compile time: the tests' tiny
# steps are compile-bound. Backend optimisation level 0 (fewer LLVM passes), the elemental IR
# emitters instead of the MLIR fusion emitters, and one codegen partition (2 cores have
# nothing to parallelise) compile the DiDi training step in 7.5 s instead of 11.5 s (level 0
# alone) and ~20 s (XLA's defaults); same HLO, same semantics. A flag already in $XLA_FLAGS
# wins (e.g. XLA_FLAGS=--xla_backend_optimization_level=3 to check that numerical tolerances
# do not depend on it).
# XLA aborts the process on a flag it does not know ("Unknown flag in XLA_FLAGS"), and
# jaxlib 0.11.2's XLA no longer knows the emitter switch: it is set for jaxlib < 0.11 only.
_XLA = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
_FLAGS = ["--xla_backend_optimization_level=0", "--xla_cpu_parallel_codegen_split_count=1"]
if tuple(int(v) for v in importlib.metadata.version("jaxlib").split(".")[:2]) < (0, 11):
  _FLAGS.append("--xla_cpu_use_fusion_emitters=false")
for _flag in _FLAGS:
  if _flag.split("=")[0] not in _XLA:
    _XLA += " " + _flag
os.environ["XLA_FLAGS"] = _XLA.strip()
# the same flags for a subprocess with one CPU device (a user's run: CLI and notebook tests)
os.environ["IDLM_JAX_TEST_XLA_FLAGS_1"] = _XLA.replace(
    "--xla_force_host_platform_device_count=8", "").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
assert jax.device_count() == 8, jax.devices()

# Many tests build the same tiny models and steps again (train, resume, evaluate): a persistent
# compilation cache turns the repeated XLA compilations into cache hits. The same settings go
# into the environment, so that the subprocesses of the CLI, notebook and multi-host tests
# (`python -m idlm_jax.main` launched again to resume, a second job, ...) share the cache.
CACHE = os.environ.get("IDLM_JAX_TEST_CACHE", "/tmp/idlm_jax_test_xla_cache")
os.environ.update(JAX_COMPILATION_CACHE_DIR=CACHE,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_addoption(parser):
  parser.addoption("--smoke-configs", action="store_true",
                   help="run every shipped config's :smoke variant (tests/test_smoke_configs.py)")


def pytest_collection_modifyitems(config, items):
  """The :smoke-variant runs are opt-in (--smoke-configs): deselected otherwise."""
  if config.getoption("--smoke-configs"):
    return
  keep = [i for i in items if "smoke_configs" not in i.keywords]
  if len(keep) != len(items):
    config.hook.pytest_deselected(items=[i for i in items if "smoke_configs" in i.keywords])
    items[:] = keep
