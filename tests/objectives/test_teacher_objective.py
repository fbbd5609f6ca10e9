"""The teacher loss is the process of diffusion.algo's (diffusion/processes); Duo switches from
the curriculum to the UDLM NELBO at curriculum_end; every teacher's eval step gives additive
sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.diffusion import processes


class ToyModel:
  """A deterministic stand-in for the DIT: logits from the (one-hot or soft) input and sigma."""
  vocab_size = 2048

  def __init__(self):
    self.w = jax.random.normal(jax.random.key(0), (self.vocab_size,)) * 0.1

  def __call__(self, x, sigma, dropout_key=None):
    if x.ndim == 2:
      x = jax.nn.one_hot(x, self.vocab_size)
    return 3.0 * x + self.w + 0.1 * sigma[:, None, None]


def _batch():
  ids = jax.random.randint(jax.random.key(1), (4, 8), 0, 2048)
  return {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}


def teacher_losses(cfg, mask_id):
  """(train_sums(model, batch, key, step), eval_sums(model, batch, key)) of cfg's process."""
  proc = processes.get(cfg, vocab_size=2048, mask_id=mask_id)
  return (lambda m, b, k, step: proc.loss_sums(m, b, k, train=True, step=step)), proc.eval_sums


def _cfg(spec, tmp_path, *extra):
  return config_lib.load_config(spec, [f"data.cache_dir='{tmp_path}'",
                                       "data.tokenizer='demo-bpe-2048'", *extra])


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_duo_curriculum_then_udlm(tmp_path):
  cfg = _cfg("configs/duo_owt.py:smoke", tmp_path, "diffusion.curriculum_start=2",
             "diffusion.curriculum_end=5")
  train_sums, eval_sums = teacher_losses(cfg, mask_id=3)
  model, batch, key = ToyModel(), _batch(), jax.random.key(2)
  udlm = teacher_losses(_cfg("configs/udlm_lm1b.py:smoke", tmp_path), 3)[1]
  step_fn = jax.jit(lambda step: train_sums(model, batch, key, step)["nelbo_sum"])
  curr = [float(step_fn(jnp.int32(s))) for s in range(7)]
  plain = float(udlm(model, batch, key)["nelbo_sum"])
  for s in (0, 1, 5, 6):
    assert curr[s] == pytest.approx(plain, rel=1e-6)
  for s in (2, 3, 4):
    assert curr[s] != pytest.approx(plain, rel=1e-3)
  assert curr[2] == pytest.approx(curr[4], rel=1e-6)  # same key, same curriculum loss
  assert float(eval_sums(model, batch, key)["nelbo_sum"]) == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("spec", ["configs/demo_teacher.py", "configs/sedd_owt.py:smoke",
                                  "configs/sedd_owt.py:uniform_smoke",
                                  "configs/udlm_lm1b.py:smoke", "configs/duo_lm1b.py:smoke"])
def test_eval_sums_are_additive_and_positive(spec, tmp_path):
  cfg = _cfg(spec, tmp_path)
  _, eval_sums = teacher_losses(cfg, mask_id=3)
  batch = _batch()
  batch["weight"] = jnp.array([1.0, 1.0, 1.0, 0.0])
  out = eval_sums(ToyModel(), batch, jax.random.key(3))
  assert float(out["tokens"]) == 3 * 8
  assert np.isfinite(float(out["nelbo_sum"])) and float(out["nelbo_sum"]) > 0
