"""Chunked MDLM cross-entropy (model.loss_chunk, issue #10): the output projection, log-softmax
and SUBS loss taken a chunk of positions at a time (diffusion/chunks.chunk_sum) give the
unchunked loss and gradients (and so do Duo's curriculum and UDLM losses), and a train step's
compiled memory plan no longer holds the full [B, L, V] float32 logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax.diffusion.schedules import get_schedule
from idlm_jax.models import DIT
from idlm_jax.diffusion import duo_integral
from idlm_jax.diffusion.processes import MDLM, Duo

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


def _check_chunked_equals_full(loss, params, chunk):
  """loss(params, chunk) and its gradient at `chunk` equal those at 0 (unchunked); returns
  the unchunked gradient."""
  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  (v_full, g_full), (v_chunk, g_chunk) = value_and_grad(params, 0), value_and_grad(params, chunk)
  assert float(v_full) > 0
  np.testing.assert_allclose(float(v_chunk), float(v_full), rtol=1e-6)
  for (path, a), (_, b) in zip(nnx.to_flat_state(g_chunk), nnx.to_flat_state(g_full)):
    np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), rtol=1e-5, atol=1e-7,
                               err_msg=str(path))
  return g_full


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

  _check_chunked_equals_full(loss, params, chunk)


@pytest.mark.parametrize("step,chunk,dropout", [(0, 5, 0.1),
                                                pytest.param(20, 5, 0.1, marks=pytest.mark.slow)])
def test_chunked_duo_nelbo_and_grads_equal_unchunked(step, chunk, dropout, tmp_path):
  """Duo's teacher loss over chunks: the curriculum (step 0: soft input softmax(w / tau)
  embedded a chunk at a time, the same Gaussian noise) and, after it (step 20), the plain
  UDLM NELBO; both losses and every gradient equal the unchunked ones."""
  model = make(vocab_pad_multiple=16, dropout=dropout)
  randomize(model)
  graphdef, params = nnx.split(model)
  ids, _ = inputs()
  batch, key = _batch(ids), jax.random.key(5)
  vocab = TINY["vocab_size"]
  transform = duo_integral.DuoTransform.create(vocab, -3.55, -1.85, cache_dir=str(tmp_path),
                                               num_points=201)

  def loss(p, c):
    proc = Duo(SCHEDULE, vocab_size=vocab, transform_fn=lambda: transform, curriculum=(0, 10),
               loss_chunk=c)
    sums = proc.loss_sums(nnx.merge(graphdef, p), batch, key, train=True,
                          step=jnp.asarray(step))
    return sums["nelbo_sum"] / sums["tokens"]

  g_full = _check_chunked_equals_full(loss, params, chunk)
  embedding = g_full["vocab_embed"]["embedding"][...]
  assert float(jnp.max(jnp.abs(embedding))) > 0  # the soft input's path is covered


def _step_temp_bytes(chunk: int, vocab: int = 8192, L: int = 256, B: int = 4,
                     algo: str = "mdlm") -> int:
  """XLA's planned temporary bytes of a jitted loss + gradient + SGD step (params donated);
  algo "duo": Duo's curriculum loss (soft inputs)."""
  model = DIT(vocab_size=vocab, hidden_size=32, n_blocks=1, n_heads=2, cond_dim=16,
              rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  batch = {"input_ids": jnp.zeros((B, L), jnp.int32),
           "attention_mask": jnp.ones((B, L), jnp.int32)}
  if algo == "duo":
    transform = duo_integral.DuoTransform.create(vocab, -3.55, -1.85, num_points=201)
    proc = Duo(SCHEDULE, vocab_size=vocab, transform_fn=lambda: transform, curriculum=(0, 10),
               loss_chunk=chunk)
  else:
    proc = MDLM(SCHEDULE, mask_id=vocab - 1, vocab_size=vocab, antithetic=True,
                loss_chunk=chunk)

  def step(p, batch, key):
    loss = lambda p: proc.loss_sums(nnx.merge(graphdef, p), batch, key, train=True,
                                    step=jnp.asarray(0))["nelbo_sum"]
    value, grads = jax.value_and_grad(loss)(p)
    return jax.tree.map(lambda a, g: a - 1e-3 * g, p, grads), value

  compiled = jax.jit(step, donate_argnums=0).lower(params, batch, jax.random.key(0)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("algo", ["mdlm", pytest.param("duo", marks=pytest.mark.slow)])
def test_chunked_loss_cuts_compiled_temp_memory(algo):
  """V=8192, L=256, B=4, d=32: logits dominate (one [B, L, V] float32 array is 32 MiB).
  Measured (jax 0.10.2, CPU) at chunk 32: MDLM 74 -> 19 MiB; Duo (the curriculum's lax.cond
  with both branches: the soft input, and the UDLM NELBO) 169 -> 26 MiB."""
  logits_bytes = 4 * 256 * 8192 * 4
  full, chunked = _step_temp_bytes(0, algo=algo), _step_temp_bytes(32, algo=algo)
  assert full > 2 * logits_bytes  # the unchunked step keeps logits-sized buffers
  assert chunked < logits_bytes < full and chunked < 0.5 * full, (full, chunked)


def test_loss_chunk_config_validation():
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", ["model.loss_chunk=16"])
  assert cfg.model.loss_chunk == 16
  with pytest.raises(config_lib.ConfigError, match="model.loss_chunk"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["model.loss_chunk=-1"])
  with pytest.raises(config_lib.ConfigError, match="model.loss_chunk.*'sdtt'"):
    config_lib.load_config("configs/sdtt_mdlm_owt.py:smoke",
                           ["model.loss_chunk=16", "distill.teacher=demo"])
  udlm = ["diffusion.algo=udlm", "diffusion.process=uniform", "diffusion.parameterization=mean",
          "model.time_conditioning=True"]
  assert config_lib.load_config("configs/demo_teacher.py:smoke",
                                ["model.loss_chunk=16", *udlm]).model.loss_chunk == 16
  assert config_lib.load_config("configs/duo_lm1b.py:smoke",
                                ["model.loss_chunk=16"]).model.loss_chunk == 16
  with pytest.raises(config_lib.ConfigError, match="model.loss_chunk.*'sedd'"):
    config_lib.load_config("configs/sedd_owt.py:smoke", ["model.loss_chunk=16"])
