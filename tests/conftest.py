"""Test setup: 8 fake CPU devices before JAX initialises, the repo root on sys.path."""

import os
import pathlib
import sys

# 8 fake CPU devices; XLA:CPU's backend optimisation level 0: the tests' tiny steps are
# compile-bound, and level 0 compiles ~20% faster (same semantics, fewer LLVM passes). An
# explicit level in $XLA_FLAGS wins (e.g. XLA_FLAGS=--xla_backend_optimization_level=3, XLA's
# default, to check that numerical tolerances do not depend on it).
_XLA = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if "--xla_backend_optimization_level" not in _XLA:
  _XLA += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _XLA.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
assert jax.device_count() == 8, jax.devices()

# Many tests build the same tiny models and steps again (train, resume, evaluate): a persistent
# compilation cache turns the repeated XLA compilations into cache hits.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("IDLM_JAX_TEST_CACHE", "/tmp/idlm_jax_test_xla_cache"))
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
