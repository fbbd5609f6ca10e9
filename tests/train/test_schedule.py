"""The learning-rate schedules of train/state.learning_rate: warm-up, then constant, cosine or
linear decay to final_lr_fraction * lr at train.steps."""

import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.objectives import state as state_lib


def _optim(decay: str, warmup: int = 10):
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", [
      f"optim.decay={decay}", "optim.lr=1e-3", f"optim.warmup_steps={warmup}",
      "optim.final_lr_fraction=0.01"])
  return cfg.optim


def test_linear_decay_by_hand():
  lr = state_lib.learning_rate(_optim("linear"), 110)  # 10 warm-up + 100 decay steps
  want = {0: 0.0, 5: 5e-4, 10: 1e-3, 35: 1e-3 - 0.25 * (1e-3 - 1e-5), 60: 0.5 * (1e-3 + 1e-5),
          110: 1e-5, 200: 1e-5}
  for step, value in want.items():
    np.testing.assert_allclose(float(lr(step)), value, rtol=1e-5, atol=1e-12, err_msg=step)
  no_warm = state_lib.learning_rate(_optim("linear", warmup=0), 100)
  np.testing.assert_allclose([float(no_warm(s)) for s in (0, 50, 100)],
                             [1e-3, 0.5 * (1e-3 + 1e-5), 1e-5], rtol=1e-5)


def test_constant_and_cosine_schedules():
  const = state_lib.learning_rate(_optim("constant"), 110)
  np.testing.assert_allclose([float(const(s)) for s in (5, 10, 110)], [5e-4, 1e-3, 1e-3],
                             rtol=1e-6)
  cos = state_lib.learning_rate(_optim("cosine"), 110)
  mid = 1e-5 + 0.5 * (1e-3 - 1e-5)  # halfway through the decay
  np.testing.assert_allclose([float(cos(s)) for s in (10, 60, 110)], [1e-3, mid, 1e-5],
                             rtol=1e-5)


def test_unknown_decay_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match="optim.decay"):
    _optim("exponential")
