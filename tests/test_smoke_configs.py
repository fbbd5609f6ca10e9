"""Every shipped config's `:smoke` variant runs alone from an empty workdir, as a new user
would run it (`python -m idlm_jax.main --config=configs/X.py:smoke --workdir=...`): the
distillation smokes train their own matching smoke teacher first.

Opt-in: `python -m pytest --smoke-configs -m smoke_configs tests/test_smoke_configs.py`; CI
(.ci/run) runs it after the suite. Measured one at a time on 2 idle cores (2026-12-06): 5-58 s
each, the distillation smokes over GPT-2/BERT vocabularies (which train their own teacher
first) 32-58 s."""

import time

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax import main

SMOKES = [path for path, variants, _ in config_lib.shipped_configs() if "smoke" in variants]


@pytest.mark.smoke_configs
@pytest.mark.parametrize("path", SMOKES)
def test_smoke_variant_runs_alone_from_an_empty_workdir(path, tmp_path):
  t0 = time.time()
  config = config_lib.load_config(f"{path}:smoke")
  run = main.run(config, tmp_path / "run", devices=jax.devices()[:1])
  if config.mode == "eval_prompted":  # configs/llada_8b.py: evaluation only
    assert run.results["prompted"]["n"] > 0
    assert (tmp_path / "run" / "prompted_eval.json").is_file()
    print(f"{path}:smoke {time.time() - t0:.0f} s")
    return
  history = run.results["train"]["history"]
  assert history and all(np.isfinite(m["loss"]) for _, m in history)
  assert (tmp_path / "run" / "results.json").is_file()
  print(f"{path}:smoke {time.time() - t0:.0f} s")
