"""MDLM maths against closed forms and brute force on tiny vocabularies."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax.diffusion import mdlm
from idlm_jax.diffusion.processes.mdlm import MDLM
from idlm_jax.diffusion.schedules import LogLinear, sample_t, sampling_grid, student_t

MASK = 3  # vocabulary {0, 1, 2} + [MASK]


def test_loglinear_closed_forms():
  s = LogLinear(eps=1e-3)
  t = jnp.linspace(0.0, 1.0, 11)
  np.testing.assert_allclose(s.alpha(t), 1 - (1 - 1e-3) * t, rtol=1e-6)
  np.testing.assert_allclose(jnp.exp(-s.sigma(t)), s.alpha(t), rtol=1e-5)
  np.testing.assert_allclose(s.dalpha(t), jax.vmap(jax.grad(s.alpha))(t), rtol=1e-6)
  # log-linear weight -alpha'/(1-alpha) is exactly 1/t
  tt = t[1:]
  np.testing.assert_allclose(mdlm.nelbo_weight(s.alpha(tt), s.dalpha(tt)), 1 / tt, rtol=1e-5)


def test_antithetic_times_are_stratified():
  t = np.asarray(sample_t(jax.random.key(0), 64, 1e-3))
  u = np.sort((t - 1e-3) / (1 - 1e-3))
  assert np.all((u >= np.arange(64) / 64 - 1e-6) & (u < np.arange(1, 65) / 64 + 1e-6))


def test_student_times_on_a_sampler_grid():
  """distill.student_grid = K: the student's input times are the first K points of the K-step
  grid, n / K rows at each; a sampler at K / 2 steps calls it at a subset of them; K = 0 is
  the paper's antithetic sample_t."""
  eps, key = 1e-3, jax.random.key(3)
  np.testing.assert_array_equal(student_t(key, 64, eps), sample_t(key, 64, eps))
  for k in (1, 4, 16):
    t = np.asarray(student_t(key, 64, eps, k))
    points = np.asarray(sampling_grid(k, eps))[:k]
    np.testing.assert_allclose(np.unique(t), np.sort(points), rtol=1e-6)
    assert all(np.isclose(t, p, rtol=1e-6).sum() == 64 // k for p in points)
  half = np.asarray(sampling_grid(8, eps))[:8]
  assert all(np.isclose(np.asarray(sampling_grid(16, eps))[:16], p).any() for p in half)
  # the MDLM student reads its times through inverse_parts(student_grid=...)
  seen = []
  proc = MDLM(LogLinear(eps), mask_id=MASK, vocab_size=MASK + 1)
  def model(x, sigma, dropout_key=None):
    seen.append(np.asarray(sigma))
    return jnp.zeros((*x.shape, MASK + 1))
  batch = {"input_ids": jnp.zeros((8, 4), jnp.int32), "attention_mask": jnp.ones((8, 4))}
  proc.inverse_parts(student_grid=4).student(model, batch, key, None)
  np.testing.assert_allclose(np.unique(seen[0]),
                             np.sort(np.asarray(LogLinear(eps).sigma(sampling_grid(4, eps)[:4]))),
                             rtol=1e-5)


def test_forward_process_mask_rate():
  x0 = jnp.zeros((4000, 16), jnp.int32)
  alpha = jnp.full((4000,), 0.3)
  xt = mdlm.q_xt(jax.random.key(1), x0, alpha, MASK)
  rate = float(jnp.mean(xt == MASK))
  assert abs(rate - 0.7) < 0.005
  assert set(np.unique(xt)) <= {0, MASK}


def _logits(key, shape):
  return jax.random.normal(key, shape) * 2.0


def test_subs_invariants():
  logits = _logits(jax.random.key(2), (2, 5, 4))
  xt = jnp.array([[0, MASK, 2, MASK, 1], [MASK, MASK, MASK, 1, 0]])
  lp = mdlm.subs_log_probs(logits, xt, MASK)
  p = jnp.exp(lp)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  assert float(p[..., MASK].max()) == 0.0  # zero masking probability
  unmasked = xt != MASK
  np.testing.assert_array_equal(jnp.argmax(lp, -1)[unmasked], xt[unmasked])  # carry-over
  np.testing.assert_allclose(p[unmasked].max(-1), 1.0)
  # the gather-only path agrees with the full log-probs at masked positions, 0 elsewhere
  x0 = jnp.where(unmasked, xt, 1)
  picked = mdlm.subs_log_prob_of(logits, xt, x0, MASK)
  full = jnp.take_along_axis(lp, x0[..., None], -1)[..., 0]
  np.testing.assert_allclose(picked, jnp.where(unmasked, 0.0, full), rtol=1e-5, atol=1e-6)


def _mc_nelbo(log_p_fn, x0, n, key, eps):
  """Monte Carlo NELBO of one sequence with the library's estimator (antithetic t)."""
  s = LogLinear(eps)
  kt, km = jax.random.split(key)
  t = sample_t(kt, n, eps)
  xt = mdlm.q_xt(km, jnp.broadcast_to(x0, (n, x0.shape[0])), s.alpha(t), MASK)
  lp = log_p_fn(xt)
  return mdlm.nelbo_per_token(lp, s.alpha(t), s.dalpha(t)).sum(-1).mean()


def test_nelbo_closed_form_for_unconditional_model():
  """A model ignoring context: NELBO = (1-eps)^2 sum_i -log pi(x_i) exactly."""
  eps = 1e-3
  pi = jnp.array([0.5, 0.3, 0.2])
  x0 = jnp.array([0, 2, 1, 2])
  log_p = lambda xt: jnp.where(xt == MASK, jnp.log(pi)[x0][None], 0.0)
  est = float(_mc_nelbo(log_p, x0, 200_000, jax.random.key(3), eps))
  exact = (1 - eps) ** 2 * float(-jnp.log(pi)[x0].sum())
  assert est == pytest.approx(exact, rel=5e-3)


def test_nelbo_matches_brute_force_expectation():
  """Context-dependent toy denoiser: MC estimator vs exact integral over t and all masks."""
  eps, L = 1e-3, 3
  x0 = jnp.array([2, 0, 1])
  w = jax.random.normal(jax.random.key(4), (L, 2 ** L, 3))

  def log_p_rows(xt):  # log p(x0_i | x_t) depends on which positions are masked
    code = ((xt == MASK) * (2 ** jnp.arange(L))).sum(-1)
    table = jax.nn.log_softmax(w, -1)[jnp.arange(L)[None, :], code[:, None], x0[None, :]]
    return jnp.where(xt == MASK, table, 0.0)

  est = float(_mc_nelbo(log_p_rows, x0, 400_000, jax.random.key(5), eps))
  # exact: int_eps^1 (1/t) sum_patterns P(pattern | t) sum_{masked i} -log p_i dt
  lsm = np.asarray(jax.nn.log_softmax(w, -1))
  ts = np.linspace(eps, 1, 200_001)
  total = np.zeros_like(ts)
  for pattern in itertools.product([0, 1], repeat=L):
    m = np.array(pattern)
    k = m.sum()
    if k == 0:
      continue
    mp = (1 - eps) * ts
    prob = mp ** k * (1 - mp) ** (L - k)
    code = int((m * 2 ** np.arange(L)).sum())
    nll = -sum(lsm[i, code, int(x0[i])] for i in range(L) if m[i])
    total += prob * nll / ts
  exact = np.trapezoid(total, ts)
  assert est == pytest.approx(exact, rel=5e-3)
