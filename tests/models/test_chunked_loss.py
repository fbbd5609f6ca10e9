"""Chunked MDLM cross-entropy (model.loss_chunk, issue #10): the output projection, log-softmax
and SUBS loss taken a chunk of positions at a time (diffusion/chunks.chunk_sum) give the
unchunked loss and gradients, and a train step's compiled memory plan no longer holds the full
[B, L, V] float32 logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax.diffusion.schedules import get_schedule
from idlm_jax.models import DIT
from idlm_jax.diffusion.processes import MDLM

from tests.models.test_dit import TINY, inputs, make, randomize

MASK = TINY["vocab_size"] - 1
SCHEDULE = get_schedule("loglinear", 1e-3)


def _nelbo(model, batch, key, chunk: int) -> jax.Array:
  """Per-token MDLM NELBO of one batch (train mode), as the teacher objective computes it."""
  proc = MDLM(SCHEDULE, mask_id=MASK, vocab_size=MASK + 1, antithetic=True, loss_chunk=chunk)
  sums = proc.loss_sums(model, batch, key, train=True)
  return sums["nelbo_sum"] / sums["tokens"]


def _batch(ids) -> dict:
  return {"input_ids": ids, "attention_mask": jnp.ones_like(ids).at[0, -2:].set(0)}


@pytest.mark.slow
def test_features_and_project_compose_to_call():
  model = make(vocab_pad_multiple=16)
  randomize(model)
  ids, sigma = inputs()
  np.testing.assert_array_equal(np.asarray(model.project(model.features(ids, sigma))),
                                np.asarray(model(ids, sigma)))


@pytest.mark.parametrize("chunk,dropout", [pytest.param(1, 0.0, marks=pytest.mark.slow),
                                           (4, 0.0), (5, 0.1), (12, 0.0), (16, 0.0)])
def test_chunked_nelbo_and_grads_equal_unchunked(chunk, dropout):
  model = make(vocab_pad_multiple=16, dropout=dropout)
  randomize(model)
  graphdef, params = nnx.split(model)
  ids, _ = inputs()
  batch, key = _batch(jnp.where(ids == MASK, 0, ids)), jax.random.key(5)

  def loss(p, c):
    return _nelbo(nnx.merge(graphdef, p), batch, key, c)

  v_full, g_full = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, 0)
  v_chunk, g_chunk = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, chunk)
  assert float(v_full) > 0
  np.testing.assert_allclose(float(v_chunk), float(v_full), rtol=1e-6)
  for (path, a), (_, b) in zip(nnx.to_flat_state(g_chunk), nnx.to_flat_state(g_full)):
    np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), rtol=1e-5, atol=1e-7,
                               err_msg=str(path))


def _step_temp_bytes(chunk: int, vocab: int = 8192, L: int = 256, B: int = 4) -> int:
  """XLA's planned temporary bytes of a jitted loss + gradient + SGD step (params donated)."""
  model = DIT(vocab_size=vocab, hidden_size=32, n_blocks=1, n_heads=2, cond_dim=16,
              rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  batch = {"input_ids": jnp.zeros((B, L), jnp.int32),
           "attention_mask": jnp.ones((B, L), jnp.int32)}

  def step(p, batch, key):
    proc = MDLM(SCHEDULE, mask_id=vocab - 1, vocab_size=vocab, antithetic=True,
                loss_chunk=chunk)
    loss = lambda p: proc.loss_sums(nnx.merge(graphdef, p), batch, key, train=True)["nelbo_sum"]
    value, grads = jax.value_and_grad(loss)(p)
    return jax.tree.map(lambda a, g: a - 1e-3 * g, p, grads), value

  compiled = jax.jit(step, donate_argnums=0).lower(params, batch, jax.random.key(0)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_loss_cuts_compiled_temp_memory():
  """V=8192, L=256, B=4, d=32: logits dominate (one [B, L, V] float32 array is 32 MiB)."""
  logits_bytes = 4 * 256 * 8192 * 4
  full, chunked = _step_temp_bytes(0), _step_temp_bytes(32)
  assert full > 2 * logits_bytes  # the unchunked step keeps logits-sized buffers
  assert chunked < logits_bytes < full and chunked < 0.5 * full, (full, chunked)


def test_loss_chunk_config_validation():
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", ["model.loss_chunk=16"])
  assert cfg.model.loss_chunk == 16
  with pytest.raises(config_lib.ConfigError, match="model.loss_chunk"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["model.loss_chunk=-1"])
  with pytest.raises(config_lib.ConfigError, match="model.loss_chunk.*MDLM"):
    config_lib.load_config("configs/sdtt_mdlm_owt.py:smoke",
                           ["model.loss_chunk=16", "distill.teacher=demo"])
  with pytest.raises(config_lib.ConfigError, match="model.loss_chunk.*'udlm'"):
    config_lib.load_config("configs/demo_teacher.py:smoke",
                           ["model.loss_chunk=16", "diffusion.algo=udlm",
                            "diffusion.process=uniform", "diffusion.parameterization=mean",
                            "model.time_conditioning=True"])
