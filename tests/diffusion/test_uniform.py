"""UDLM/Duo maths on tiny vocabularies: the closed-form NELBO against the limit of the
discrete-time KL and a brute-force expectation over t and z_t; Duo's transformation operator
against closed forms (K = 2) and Monte Carlo of the max of Gaussians."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from idlm_jax.diffusion import duo_integral, uniform
from idlm_jax.diffusion.schedules import LogLinear, sample_t

K = 3


def _posterior(x, zt, a_t, a_s):
  """q(z_s | z_t, x) from Bayes with the forward kernels (independent of the library)."""
  a_ts = a_t / a_s
  fwd = a_ts * (np.arange(K) == zt) + (1 - a_ts) / K  # q(z_t | z_s = v)
  marg = a_s * x + (1 - a_s) / K  # q(z_s = v | x)
  p = fwd * marg
  return p / p.sum()


def test_nelbo_is_the_limit_of_the_discrete_kl():
  rng = np.random.default_rng(0)
  s = LogLinear(1e-3)
  for _ in range(20):
    t = rng.uniform(0.05, 0.95)
    dt = 1e-5
    x0, zt = rng.integers(K), rng.integers(K)
    x_theta = rng.dirichlet(np.ones(K))
    a_t, a_s = float(s.alpha(t)), float(s.alpha(t - dt))
    q = _posterior(np.eye(K)[x0], zt, a_t, a_s)
    p = _posterior(x_theta, zt, a_t, a_s)
    kl = np.sum(np.where(q > 0, q * (np.log(np.maximum(q, 1e-300)) - np.log(p)), 0.0))
    got = uniform.nelbo_per_token(jnp.log(jnp.asarray(x_theta, jnp.float32))[None, None],
                                  jnp.array([[zt]]), jnp.array([[x0]]), jnp.array([a_t]),
                                  jnp.array([float(s.dalpha(t))]))
    assert float(got[0, 0]) == pytest.approx(kl / dt, rel=2e-3, abs=1e-4)


def test_nelbo_zero_at_the_clean_data_and_positive_elsewhere():
  za = jnp.array([[0, 1, 2]])
  x0 = jnp.array([[0, 0, 2]])
  a, da = jnp.array([0.4]), jnp.array([-0.999])
  exact = jnp.log(jnp.maximum(jax.nn.one_hot(x0, K), 1e-30))
  np.testing.assert_allclose(uniform.nelbo_per_token(exact, za, x0, a, da), 0.0, atol=1e-4)
  noisy = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (1, 3, K)), -1)
  assert np.all(np.asarray(uniform.nelbo_per_token(noisy, za, x0, a, da)) > 0)


def test_nelbo_estimator_matches_brute_force_expectation():
  """MC over antithetic t and z_t ~ q(z_t | x) vs the exact integral over t and all z_t."""
  eps, L, n = 1e-3, 2, 200_000
  sched = LogLinear(eps)
  x0 = jnp.array([2, 0])
  table = jax.nn.log_softmax(jax.random.normal(jax.random.key(4), (K ** L, L, K)) * 1.5, -1)

  @jax.jit
  def f(zt, t):  # per-sequence NELBO integrand for a context-dependent toy denoiser
    code = (zt * K ** jnp.arange(L)[::-1]).sum(-1)
    return uniform.nelbo_per_token(table[code], zt, jnp.broadcast_to(x0, zt.shape),
                                   sched.alpha(t), sched.dalpha(t)).sum(-1)

  kt, kz = jax.random.split(jax.random.key(5))
  t = sample_t(kt, n, eps)
  zt = uniform.q_xt(kz, jnp.broadcast_to(x0, (n, L)), sched.alpha(t), K)
  vals = f(zt, t)
  est, stderr = float(jnp.mean(vals)), float(jnp.std(vals)) / np.sqrt(n)  # heavy tail at t ~ eps
  ts = eps + (1 - eps) * (1 - (1 - np.linspace(0, 1, 4001)) ** 3)  # finer near t = 1
  total = np.zeros_like(ts)
  for z in itertools.product(range(K), repeat=L):
    z = np.array(z)
    a = np.asarray(sched.alpha(jnp.asarray(ts)))
    prob = np.prod([a * (z[i] == x0[i]) + (1 - a) / K for i in range(L)], axis=0)
    vals = np.asarray(f(jnp.broadcast_to(jnp.asarray(z), (len(ts), L)), jnp.asarray(ts)))
    total += prob * vals
  exact = np.trapezoid(total, ts) / (1 - eps)
  assert abs(est - exact) < 4 * stderr, (est, exact, stderr)
  assert stderr < 0.02 * exact


# ------------------------------------------------------------------ Duo transformation


def test_integral_closed_form_for_two_classes():
  gamma = np.linspace(-5.0, 4.0, 37)
  p, dp = duo_integral.p_and_dp(gamma, 2)
  m = np.exp(-gamma / 2)
  np.testing.assert_allclose(p, stats.norm.cdf(m / np.sqrt(2)), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(dp, stats.norm.pdf(m / np.sqrt(2)) / np.sqrt(2) * (-m / 2),
                             rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("k", [7, 1000, 30522])
def test_integral_against_monte_carlo_of_max_of_gaussians(k):
  rng = np.random.default_rng(k)
  n = 400_000
  gamma = np.array([-3.5, -2.5, -1.75, 0.0])
  p, dp = duo_integral.p_and_dp(gamma, k)
  # the max of K - 1 standard normals sampled exactly: Phi^-1(U^(1/(K-1)))
  max_rest = stats.norm.ppf(rng.uniform(size=n) ** (1.0 / (k - 1)))
  eps_x = rng.normal(size=n)
  for g, pg in zip(gamma, p):
    mc = np.mean(eps_x + np.exp(-g / 2) > max_rest)
    assert abs(mc - pg) < 5 * np.sqrt(pg * (1 - pg) / n) + 1e-4, (g, mc, pg)
  # derivative against central differences of p
  h = 1e-4
  fd = (duo_integral.p_and_dp(gamma + h, k)[0] - duo_integral.p_and_dp(gamma - h, k)[0]) / (2 * h)
  np.testing.assert_allclose(dp, fd, rtol=1e-5, atol=1e-9)


def test_transform_matches_argmax_of_gaussian_latent_and_caches(tmp_path):
  k, n = 5, 100_000
  tr = duo_integral.DuoTransform.create(k, -3.0, 1.0, cache_dir=tmp_path, num_points=801)
  files = list((tmp_path / "duo_integral").glob("*.npz"))
  assert len(files) == 1
  again = duo_integral.DuoTransform.create(k, -3.0, 1.0, cache_dir=tmp_path, num_points=801)
  np.testing.assert_array_equal(again.table_p, tr.table_p)
  for t in (0.1, 0.5, 0.9):
    x0 = jnp.zeros((n, 1), jnp.int32)
    w = uniform.gaussian_latent(jax.random.key(int(t * 10)), x0,
                                jnp.full((n,), tr.gamma(t)), k)
    frac = float(jnp.mean(jnp.argmax(w, -1) == 0))
    a = float(tr.alpha(jnp.array(t)))
    expect = a + (1 - a) / k  # q(z_t = x | x) of the uniform-state process
    assert abs(frac - expect) < 5 * np.sqrt(expect * (1 - expect) / n)
  # d alpha / dt against differences of alpha in t
  t = jnp.linspace(0.1, 0.9, 9)
  fd = (tr.alpha(t + 1e-3) - tr.alpha(t - 1e-3)) / 2e-3
  np.testing.assert_allclose(tr.dalpha(t), fd, rtol=2e-3)


def test_top_p_filter():
  p = jnp.array([[0.5, 0.3, 0.15, 0.05]])
  np.testing.assert_allclose(uniform.top_p_filter(p, 0.8), [[0.625, 0.375, 0, 0]], rtol=1e-6)
  np.testing.assert_allclose(uniform.top_p_filter(p, 0.81), np.array([[0.5, 0.3, 0.15, 0]]) / 0.95,
                             rtol=1e-6)
  np.testing.assert_allclose(uniform.top_p_filter(p, 1.0), p)
