"""IDLM-MDLM, IDLM-SEDD and IDLM-Duo over position chunks (model.loss_chunk > 0,
processes/chunked.py, diffusion/chunks.py): the re-noised draw, both losses and their
gradients equal the unchunked ones, so does a whole sharded train step (with and without
gradient accumulation), and the compiled loss holds no [B, L, V] buffer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import chunk_flops
from idlm_jax import config as config_lib
from idlm_jax.diffusion import chunks, processes, relax
from idlm_jax.diffusion.schedules import get_schedule
from idlm_jax.models import DIT
from idlm_jax.objectives import idlm

from tests.objectives import test_accumulation as acc
from tests.objectives.test_idlm import _batch, _config, _nets

L = 12


def _setup(tmp_path, extra=(), algo="mdlm"):
  config = _config(algo, tmp_path, extra)
  graphdef, teacher, tok = _nets(config)
  _, fake, _ = _nets(config, seed=1)
  _, student, _ = _nets(config, seed=2)
  batch = _batch(tok, length=L)
  batch["attention_mask"] = batch["attention_mask"].at[0, -3:].set(0)  # padded positions
  return config, functools.partial(nnx.merge, graphdef), (teacher, fake, student), tok, batch


def _parts(config, tok, chunk):
  config = config.copy_and_resolve_references()
  config.model.loss_chunk = chunk
  return idlm.parts(config, processes.get(config, vocab_size=tok.model_vocab_size,
                                          mask_id=tok.mask_id))


def _prompted(batch, n=3):
  """The batch with its first n positions a prompt (IDLM's conditional rows)."""
  prompt = jnp.zeros_like(batch["input_ids"]).at[:, :n].set(1)
  return {**batch, "prompt_mask": prompt}


SLOW = pytest.mark.slow  # the fast subset (-m 'not slow') keeps one MDLM and one Duo case


@pytest.mark.parametrize("algo,loss,chunk,dropout,prompt", [
    ("mdlm", "inverse", 5, 0.1, True),  # L = 12: the last chunk is padded
    pytest.param("mdlm", "fake", 5, 0.1, True, marks=SLOW),
    pytest.param("mdlm", "fake", 40, 0.0, False, marks=SLOW),  # chunk > L: one padded chunk
    # absorbing SEDD: log-scores, score entropies
    pytest.param("sedd", "inverse", 5, 0.1, False, marks=SLOW),
    pytest.param("sedd", "fake", 5, 0.1, False, marks=SLOW),
    # Duo: soft inputs embedded chunk by chunk, pathwise gradient through teacher and fake
    ("duo", "inverse", 5, 0.1, False),
    pytest.param("duo", "fake", 5, 0.1, False, marks=SLOW),
    # the ablation: no pathwise gradient
    pytest.param("duo-stop_path", "inverse", 40, 0.0, False, marks=SLOW),
])
def test_chunked_losses_and_gradients_equal_unchunked(algo, loss, chunk, dropout, prompt,
                                                      tmp_path):
  algo, _, flag = algo.partition("-")
  config, net, (teacher, fake, student), tok, batch = _setup(
      tmp_path, [f"model.dropout={dropout}"] + ([f"distill.{flag}=True"] if flag else []), algo)
  if prompt:
    batch = _prompted(batch)
  fn, args = {"inverse": (idlm.inverse_loss, (student, fake, teacher)),
              "fake": (idlm.fake_loss, (fake, student))}[loss]
  assert _parts(config, tok, chunk).chunked is not None and _parts(config, tok, 0).chunked is None
  out = {}
  for c in (0, chunk):
    grad = jax.jit(jax.value_and_grad(functools.partial(fn, _parts(config, tok, c), net),
                                      has_aux=True))
    out[c] = grad(*args, batch, jax.random.key(3))
  (v0, n0), g0 = out[0]
  (v1, n1), g1 = out[chunk]
  assert float(n1) == float(n0) == float(idlm.loss_weights(batch).sum())
  assert abs(float(v0)) > 1e-3
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
  flat0, flat1 = jax.tree_util.tree_leaves_with_path(g0), jax.tree_util.tree_leaves(g1)
  assert len(flat0) == len(flat1) and any(float(jnp.max(jnp.abs(a))) > 0 for _, a in flat0)
  for (path, a), b in zip(flat0, flat1):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))


def test_chunked_draw_of_x_t2_equals_unchunked(tmp_path):
  config, net, (_, _, student), tok, batch = _setup(tmp_path)
  proc, chunked = _parts(config, tok, 0), _parts(config, tok, 5)
  k_s, k_r = jax.random.key(4), jax.random.key(5)
  G, r = idlm.student_sample(proc, net, student, batch, k_s, k_r)
  _, _, r_chunked = idlm.chunked_student_sample(chunked, net(student), batch, k_s, k_r)
  np.testing.assert_array_equal(np.asarray(r_chunked.tokens), np.asarray(r.tokens))
  for a, b in zip(r_chunked[1:4], r[1:4]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  mask = tok.mask_id
  assert (np.asarray(r.tokens) == mask).any() and (np.asarray(r.tokens) != mask).any()
  assert G.shape == (*batch["input_ids"].shape, tok.model_vocab_size)


def test_chunked_duo_draws_and_network_inputs_equal_unchunked(tmp_path):
  """IDLM-Duo: the student's latent and the re-noised latent drawn a chunk at a time are the
  unchunked draws: the same argmax tokens, and the teacher's features of the soft input
  embedded chunk by chunk equal its features of the whole soft input."""
  config, net, (teacher, _, student), tok, batch = _setup(tmp_path, algo="duo")
  proc, chunked = _parts(config, tok, 0), _parts(config, tok, 5)
  k_s, k_r = jax.random.key(4), jax.random.key(5)
  G, r = idlm.student_sample(proc, net, student, batch, k_s, k_r)
  st, head, r_c = idlm.chunked_student_sample(chunked, net(student), batch, k_s, k_r)
  np.testing.assert_allclose(np.asarray(relax.simplex(net(student).project(st.h))),
                             np.asarray(G), rtol=1e-5, atol=1e-7)
  (h_t,), r_c = idlm.chunked_features(chunked, head, st, r_c, (net(teacher),), batch, (None,))
  np.testing.assert_array_equal(np.asarray(r_c.tokens), np.asarray(r.tokens))
  for a, b in zip(r_c[2:], r[2:]):  # sigma, weight, (alpha, alpha')
    jax.tree.map(np.testing.assert_array_equal, a, b)
  # rtol 1e-4: the soft input softmax(w / tau) at tau = 1e-3 amplifies float32 rounding
  want = net(teacher).features(r.net_in, r.sigma)
  np.testing.assert_allclose(np.asarray(h_t), np.asarray(want), rtol=1e-4, atol=1e-5)
  assert r.net_in.shape == G.shape
  assert not np.all(np.asarray(r.tokens) == np.asarray(batch["input_ids"]))


def test_chunk_sum_gradient_is_scaled_by_the_cotangent():
  """d(c * chunk_sum)/d(params, h) = c * the gradient of the unchunked sum (finite float64)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 5)))
    h = jnp.asarray(rng.normal(size=(2, 7, 3)))
    y = jnp.asarray(rng.integers(0, 5, size=(2, 7)))

    def fn(w, h_c, pp, shared):
      y_c, keep = pp
      logp = jax.nn.log_softmax(h_c @ w * shared, axis=-1)
      return -jnp.sum(keep * jnp.take_along_axis(logp, y_c[..., None], -1)[..., 0])

    keep = jnp.ones((2, 7))
    whole = lambda w, h: 2.5 * fn(w, h, (y, keep), 1.5)
    parts = lambda w, h: 2.5 * chunks.chunk_sum(fn, w, h, (y, keep), 1.5, 3)
    np.testing.assert_allclose(parts(w, h), whole(w, h), rtol=1e-12)
    for a, b in zip(jax.grad(parts, argnums=(0, 1))(w, h), jax.grad(whole, argnums=(0, 1))(w, h)):
      np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["idlm", "idlm_duo"])
def test_chunked_step_equals_unchunked_step_sharded(name, tmp_path):
  """One IDLM step (fake update, student update) on 8 devices: chunked = unchunked, and
  chunked with 2 microbatches too."""
  ref = acc._build(name, 1, tmp_path)
  batches = [acc._batch(ref, seed) for seed in range(ref.objective.batches_per_step)]
  want = acc._step(ref, batches)
  for k in (1, 2):
    got = acc._step(acc._build(f"{name}_chunked", k, tmp_path), batches)
    acc._compare(want, got, f"{name} chunked k={k}", acc.rtol_for(name))


def _loss_temp_bytes(chunk: int, which: str, algo="mdlm", vocab=8192, length=256, b=4) -> int:
  """XLA's planned temporary bytes of an IDLM loss + gradient + SGD step (params donated)."""
  compiled = chunk_flops.compile_loss_step(algo, which, chunk, vocab, length, b, 32)
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("which,algo,chunk", [
    ("inverse", "mdlm", 32), pytest.param("fake", "mdlm", 32, marks=SLOW),
    pytest.param("inverse", "duo", 16, marks=SLOW), pytest.param("fake", "duo", 16, marks=SLOW)])
def test_chunked_idlm_loss_cuts_compiled_temp_memory(which, algo, chunk):
  """V=8192, L=256, B=4, d=32: one [B, L, V] float32 array is 32 MiB. Measured (jax 0.10.2,
  CPU): MDLM 234 MiB unchunked for either loss, 39 (student) and 31 (fake) MiB at chunk 32;
  Duo 598 (student) and 291 (fake) MiB unchunked, 59 and 25 MiB at chunk 16. Duo's chunked
  temporaries grow by ~17 (student) and ~7 (fake) [B, chunk, V] float32 arrays per chunk
  size: the loss's and the soft inputs' intermediates of one chunk (its constant part, ~20
  MiB, is mostly the three networks' [B, H, L, L] attention scores)."""
  logits_bytes = 4 * 256 * 8192 * 4
  full, chunked = _loss_temp_bytes(0, which, algo), _loss_temp_bytes(chunk, which, algo)
  assert full > 4 * logits_bytes, full
  assert chunked < (1.5 if algo == "mdlm" else 2.5) * logits_bytes, chunked


def test_loss_chunk_config_validation_for_idlm():
  spec, base = "configs/idlm_mdlm_owt.py:smoke", ["model.loss_chunk=16", "distill.teacher=demo"]
  assert config_lib.load_config(spec, base).model.loss_chunk == 16
  assert config_lib.load_config("configs/idlm_sedd_owt.py:smoke", base).model.loss_chunk == 16
  for bad in (["distill.relaxation='gumbel'"], ["distill.train_draw='exact32'"]):
    with pytest.raises(config_lib.ConfigError, match="model.loss_chunk.*'mdlm'.*'sedd'"):
      config_lib.load_config(spec, base + bad)
  assert config_lib.load_config("configs/idlm_duo_owt.py:smoke", base).model.loss_chunk == 16
  with pytest.raises(config_lib.ConfigError, match="model.loss_chunk.*'didi'"):
    config_lib.load_config("configs/didi_mdlm_owt.py:smoke", base)
