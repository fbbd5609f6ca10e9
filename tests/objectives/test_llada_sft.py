"""LLaDA's SFT loss (objectives/llada_sft.py): prompt never masked, loss on the response only,
normalised per row by the response length and averaged over rows; the trainer trains the
LLaDA-architecture model with it on data.source "reasoning"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.diffusion.schedules import sample_t
from idlm_jax.objectives import llada_sft
from idlm_jax.train import loop

MASK = 7


class TableModel:
  """logits = a fixed table [B, L, V] plus a per-token bias, whatever the input."""

  def __init__(self, logits):
    self.logits = logits

  def __call__(self, x, sigma=None, *, dropout_key=None, attention_mask=None):
    return self.logits + 0.5 * jax.nn.one_hot(x, self.logits.shape[-1])


def _batch():
  ids = jnp.asarray(np.random.default_rng(0).integers(0, MASK, (4, 10)), jnp.int32)
  prompt_len = jnp.array([3, 0, 9, 5])
  prompt = (jnp.arange(10)[None] < prompt_len[:, None]).astype(jnp.int32)
  return {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "prompt_mask": prompt}


def test_prompt_never_masked_and_rate_is_t():
  x0 = jnp.zeros((3, 4000), jnp.int32)
  resp = jnp.ones((3, 4000)).at[:, :1000].set(0.0)
  t = jnp.array([0.1, 0.5, 0.9])
  xt = llada_sft.forward_process(jax.random.key(0), x0, resp, t, MASK)
  masked = np.asarray(xt == MASK)
  assert not masked[:, :1000].any()
  np.testing.assert_allclose(masked[:, 1000:].mean(1), t, atol=0.02)


@pytest.mark.parametrize("antithetic", [True, False])
def test_sums_equal_llada_formula(antithetic):
  """Brute force per row: sum over masked response positions of CE / t, divided by |r_b|."""
  batch, key = _batch(), jax.random.key(3)
  logits = jax.random.normal(jax.random.key(1), (4, 10, MASK + 1))
  model = TableModel(logits)
  sums = llada_sft.sft_sums(model, batch, key, mask_id=MASK, eps=1e-3, antithetic=antithetic)
  k_t, k_mask = jax.random.split(key)
  t = np.asarray(sample_t(k_t, 4, 1e-3, antithetic))
  resp = 1 - np.asarray(batch["prompt_mask"])
  xt = np.asarray(llada_sft.forward_process(k_mask, batch["input_ids"], jnp.asarray(resp, float),
                                            jnp.asarray(t), MASK))
  x0 = np.asarray(batch["input_ids"])
  full = np.asarray(model(jnp.asarray(xt)), np.float64)
  row_sum = nelbo = 0.0
  for b in range(4):
    total = 0.0
    for i in range(10):
      if resp[b, i] and xt[b, i] == MASK:
        lse = np.log(np.exp(full[b, i]).sum())
        total += (lse - full[b, i, x0[b, i]]) / t[b]
    nelbo += total
    row_sum += total / resp[b].sum()
  assert float(sums["row_sum"]) == pytest.approx(row_sum, rel=1e-5)
  assert float(sums["nelbo_sum"]) == pytest.approx(nelbo, rel=1e-5)
  assert float(sums["tokens"]) == resp.sum() and float(sums["rows"]) == 4


def test_prompt_logits_get_no_gradient_and_weight_zero_rows_count_nothing():
  batch = _batch()
  batch["weight"] = jnp.array([1.0, 1.0, 1.0, 0.0])
  logits = jax.random.normal(jax.random.key(1), (4, 10, MASK + 1))

  def loss(lg):
    s = llada_sft.sft_sums(TableModel(lg), batch, jax.random.key(5), mask_id=MASK, eps=0.5,
                           antithetic=False)
    return s["row_sum"], s
  grad, sums = jax.grad(loss, has_aux=True)(logits)
  g = np.abs(np.asarray(grad)).sum(-1)
  prompt = np.asarray(batch["prompt_mask"]).astype(bool)
  assert (g[prompt] == 0).all() and (g[3] == 0).all() and g[~prompt].sum() > 0
  assert float(sums["rows"]) == 3


@pytest.mark.slow
def test_trainer_trains_llada_on_reasoning(tmp_path):
  """The :smoke config through the normal trainer: loss finite and decreasing, the
  validation split carries the prompt mask."""
  cfg = config_lib.load_config("configs/reasoning_llada.py:smoke", [
      "train.steps=30", "train.log_every=10", "optim.lr=3e-3", "ckpt.async_save=False"])
  run = loop.build(cfg, tmp_path, devices=jax.devices()[:1])
  batch = run.val_split.batch(0)
  assert "prompt_mask" in batch and batch["prompt_mask"].sum() > 0
  run.state, first = run.p_train_step(run.state, None, next(run.train_iter))  # donates
  first = jax.device_get(first)
  out = loop.train(run)
  run.close()
  last = [float(m["loss"]) for _, m in out["history"][-10:]]
  assert np.isfinite(first["loss"]) and np.isfinite(last).all()
  assert np.mean(last) < float(first["loss"])
