"""Every shipped config's `:smoke` variant runs alone from an empty workdir exactly as a new
user runs it: `python -m idlm_jax.main --config=configs/X.py:smoke --workdir=...` in a fresh
process with one CPU device and the user's XLA flags (not the suite's compile-time tuning,
whose unoptimised code made the longest smokes 2.4x slower in-process: idlm_duo_owt 134 s
against 56 s, 2026-12-07). The distillation smokes train their own matching smoke teacher
first.

Opt-in: `python -m pytest --smoke-configs -m smoke_configs tests/test_smoke_configs.py`; CI
(.ci/run) runs it after the suite."""

import json
import math
import os
import pathlib
import subprocess
import sys
import time

import pytest

from idlm_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKES = [path for path, variants, _ in config_lib.shipped_configs() if "smoke" in variants]


def user_env() -> dict:
  """The suite's environment with the user's XLA flags: one CPU device, XLA's default code
  generation (the persistent compilation cache stays: it changes compile time, not results)."""
  return dict(os.environ, XLA_FLAGS=os.environ["IDLM_JAX_USER_XLA_FLAGS"], JAX_PLATFORMS="cpu")


@pytest.mark.smoke_configs
@pytest.mark.parametrize("path", SMOKES)
def test_smoke_variant_runs_alone_from_an_empty_workdir(path, tmp_path):
  t0 = time.time()
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "idlm_jax.main", f"--config={path}:smoke", f"--workdir={workdir}"],
      cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, f"{path}:smoke exited {proc.returncode}:\n{proc.stderr[-4000:]}"
  config = config_lib.load_config(f"{path}:smoke")
  if config.mode == "eval_prompted":  # configs/llada_8b.py: evaluation only
    assert json.loads((workdir / "prompted_eval.json").read_text())["n"] > 0
  else:
    results = json.loads((workdir / "results.json").read_text())
    assert results["step"] == config.train.steps
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses and all(math.isfinite(v) for v in losses), losses
  print(f"{path}:smoke {time.time() - t0:.0f} s")
