"""Relaxations (objectives/relax.py): forward values, custom VJPs against finite differences or
the autodiff reference, and which gradient paths exist (reference/idlm.md §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import stats

from idlm_jax.diffusion import categorical
from idlm_jax.diffusion import relax

B, L, V, MASK = 2, 3, 6, 5  # the last id is [MASK]


def _normal(seed, shape=(B, L, V), dtype=jnp.float32):
  """Test data from numpy (eager jax.random compiles a threefry kernel per call and shape)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _student_G(seed, dtype=jnp.float32, scale=1.0):
  """A SUBS-style student output: softmax over V with zero mass on [MASK]."""
  z = scale * _normal(seed, dtype=dtype)
  z = jnp.where(jnp.arange(V) == MASK, -jnp.inf, z)
  return jax.nn.softmax(z, axis=-1)


# ------------------------------------------------------------------ §2.1 simplex


def test_simplex_and_soft_label_nll_is_expected_one_hot_loss():
  logits = _normal(0)
  G = relax.simplex(logits)
  np.testing.assert_allclose(G, jax.nn.softmax(logits, -1), rtol=1e-6)
  np.testing.assert_allclose(G.sum(-1), 1.0, rtol=1e-6)

  log_p = jax.nn.log_softmax(_normal(1), -1)
  w = jnp.array([0.5, 2.0])
  out = relax.soft_label_nll(log_p, G, w)
  assert out.shape == (B, L)
  # E_{x0 ~ Cat(G)}[-w log p(x0)], summing the one-hot losses by hand
  expected = sum(G[..., v] * (-w[:, None] * log_p[..., v]) for v in range(V))
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  np.testing.assert_allclose(relax.soft_label_nll(log_p, G), -(G * log_p).sum(-1), rtol=1e-6)
  # plain autodiff: d/dG = -w log p
  grad = jax.jit(jax.grad(lambda g: relax.soft_label_nll(log_p, g, w).sum()))(G)
  np.testing.assert_allclose(grad, -w[:, None, None] * log_p, rtol=1e-6)


# ------------------------------------------------------------------ §2.2 MDLM hard sample


@pytest.mark.parametrize("precision", ["float64", "exact32"])
def test_mdlm_hard_sample_frequencies_chi_square(precision):
  n = 4000
  g = jnp.array([0.4, 0.25, 0.2, 0.1, 0.05, 0.0])  # no mass on [MASK]
  G = jnp.broadcast_to(g, (2, n, V))
  alpha = jnp.array([0.7, 0.2])
  with categorical.x64_scope(precision):
    xt = np.asarray(jax.jit(relax.mdlm_hard_sample, static_argnums=(3, 4))(
        jax.random.key(3), G, alpha, MASK, precision))
  assert xt.dtype == np.int32 and xt.shape == (2, n)
  for b in range(2):
    p = float(alpha[b]) * np.asarray(g) + (1 - float(alpha[b])) * (np.arange(V) == MASK)
    counts = np.bincount(xt[b], minlength=V)
    chi2 = np.sum((counts - n * p) ** 2 / (n * p))
    assert stats.chi2.sf(chi2, V - 1) > 1e-3, (b, counts, n * p)


def test_mdlm_hard_sample_carries_no_gradient():
  G = _student_G(4)
  alpha = jnp.array([0.5, 0.3])
  f = lambda g: relax.mdlm_hard_sample(jax.random.key(5), g, alpha, MASK, "exact32")

  @jax.jit
  def run(g):
    only_sample = jax.grad(lambda g: f(g).astype(jnp.float32).sum())(g)
    # the only gradient is the explicit one: d/dG sum(G[..., 0] * x_t) = x_t at v = 0
    explicit = jax.grad(lambda g: (g[..., 0] * f(g).astype(jnp.float32)).sum())(g)
    return f(g), only_sample, explicit

  xt, only_sample, explicit = run(G)
  np.testing.assert_array_equal(only_sample, 0.0)
  np.testing.assert_array_equal(explicit[..., 0], xt.astype(jnp.float32))
  np.testing.assert_array_equal(explicit[..., 1:], 0.0)


# ------------------------------------------------------------------ §2.2 MDLM inverse surrogate


def _inverse_inputs(dtype=jnp.float32):
  G = _student_G(60, dtype)
  xt = jnp.array([[MASK, 1, MASK], [2, MASK, MASK]], jnp.int32)
  lt = jax.nn.log_softmax(_normal(61, dtype=dtype), -1)
  lf = jax.nn.log_softmax(_normal(62, dtype=dtype), -1)
  # SUBS: unmasked rows are the same one-hot (0 / -1e6) for teacher and fake
  copy = jnp.where(jnp.arange(V) == xt[..., None], 0.0, -1e6).astype(dtype)
  unmasked = (xt != MASK)[..., None]
  return G, jnp.where(unmasked, copy, lt), jnp.where(unmasked, copy, lf), xt


def test_mdlm_inverse_loss_value_and_gradient_is_lambda_times_log_ratio():
  G, lt, lf, xt = _inverse_inputs()
  lam = jnp.array([1.5, 4.0])
  masked = (xt == MASK)[..., None]
  out = relax.mdlm_inverse_token_loss(G, lt, lf, xt, lam, MASK)
  # h(log f*) - h(log f), h(l) = -lam <G, l>, summed over the vocabulary
  expected = relax.soft_label_nll(lt, G, lam) - relax.soft_label_nll(lf, G, lam)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[xt != MASK], 0.0)

  grads = jax.jit(jax.grad(
      lambda g, a, b: relax.mdlm_inverse_token_loss(g, a, b, xt, lam, MASK).sum(),
      argnums=(0, 1, 2)))(G, lt, lf)
  np.testing.assert_allclose(grads[0], jnp.where(masked, lam[:, None, None] * (lf - lt), 0.0),
                             rtol=1e-6)
  np.testing.assert_array_equal(grads[1], 0.0)  # frozen teacher / fake: no gradient
  np.testing.assert_array_equal(grads[2], 0.0)

  # through G = softmax(z): d/dz_i = -lam G_i (a_i - <G, a>), a = log f* - log f (idlm.md §1.3)
  z = jnp.log(G)
  gz = jax.jit(jax.grad(lambda z: relax.mdlm_inverse_token_loss(relax.simplex(z), lt, lf, xt, lam,
                                                                MASK).sum()))(z)
  a = jnp.where(masked, lt - lf, 0.0)
  ref = -lam[:, None, None] * G * (a - (G * a).sum(-1, keepdims=True))
  np.testing.assert_allclose(gz, ref, rtol=1e-5, atol=1e-6)


def test_mdlm_inverse_loss_vjp_matches_finite_differences():
  with jax.enable_x64(True):
    G, lt, lf, xt = _inverse_inputs(jnp.float64)
    lam = jnp.array([1.5, 4.0], jnp.float64)
    check_grads(lambda g: relax.mdlm_inverse_token_loss(g, lt, lf, xt, lam, MASK), (G,),
                order=1, modes=["rev"], eps=1e-6)


# ------------------------------------------------------------------ §2.3 Duo soft input


def _duo_inputs(dtype=jnp.float32, scale=1.0):
  G = _student_G(70, dtype, scale)
  xi = _normal(71, dtype=dtype)
  return G, jnp.array([0.8, 0.3], dtype), xi


def test_duo_soft_input_forward():
  G, a, xi = _duo_inputs()
  soft, z = relax.duo_soft_input(G, a, xi, 0.1)
  w = a[:, None, None] * G + jnp.sqrt(1 - a**2)[:, None, None] * xi
  np.testing.assert_allclose(soft, jax.nn.softmax(w / 0.1, -1), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(z, jnp.argmax(w, -1))
  assert z.dtype == jnp.int32


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_duo_soft_input_vjp_matches_naive_autodiff(tau):
  G, a, xi = _duo_inputs()
  ct = _normal(8)

  def naive(g):
    w = a[:, None, None] * g + jnp.sqrt(1 - a**2)[:, None, None] * xi
    return jnp.exp(w / tau) / jnp.exp(w / tau).sum(-1, keepdims=True)

  _, vjp_ref = jax.vjp(naive, G)
  _, vjp = jax.vjp(lambda g: relax.duo_soft_input(g, a, xi, tau)[0], G)
  np.testing.assert_allclose(vjp(ct)[0], vjp_ref(ct)[0], rtol=1e-4, atol=1e-6)
  with jax.enable_x64(True):
    G64, a64, xi64 = _duo_inputs(jnp.float64)
    check_grads(lambda g: relax.duo_soft_input(g, a64, xi64, tau)[0], (G64,), order=1,
                modes=["rev"], eps=1e-6)
    check_grads(lambda x: relax.tempered_softmax(x, tau), (xi64,), order=1, modes=["rev"],
                eps=1e-6)


def test_duo_soft_input_finite_at_tau_1e_3_with_large_logits():
  G, a, xi = _duo_inputs(scale=30.0)
  xi = 100.0 * xi  # |w / tau| ~ 1e5: exp overflows in the naive formula
  ct = _normal(9)
  loss = lambda g: (relax.duo_soft_input(g, a, xi, 1e-3)[0] * ct).sum()
  grad = jax.grad(loss)(G)
  assert np.all(np.isfinite(grad))
  naive = lambda g: (jnp.exp((a[:, None, None] * g + xi) / 1e-3) /
                     jnp.exp((a[:, None, None] * g + xi) / 1e-3).sum(-1, keepdims=True) * ct).sum()
  assert not np.all(np.isfinite(jax.grad(naive)(G)))  # what the stable VJP avoids
  # moderately low tau with near-ties: large but finite, equal to the stable closed form
  G, a, xi = _duo_inputs()
  s, _ = relax.duo_soft_input(G, a, 1e-3 * xi, 1e-3)
  grad = jax.grad(lambda g: (relax.duo_soft_input(g, a, 1e-3 * xi, 1e-3)[0] * ct).sum())(G)
  ref = a[:, None, None] * s * (ct - (s * ct).sum(-1, keepdims=True)) / 1e-3
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-3)


def test_duo_stop_path_removes_pathwise_gradient():
  G, a, xi = _duo_inputs()
  ct = _normal(10)
  u = _normal(11)

  def loss(g, stop_path):
    soft, z = relax.duo_soft_input(g, a, xi, 0.5, stop_path=stop_path)
    return (soft * ct).sum() + (g * u).sum() + z.astype(jnp.float32).sum()  # explicit G term

  np.testing.assert_allclose(jax.grad(loss)(G, True), u, rtol=1e-6)  # explicit term only
  pathwise = jax.grad(lambda g: (relax.duo_soft_input(g, a, xi, 0.5)[0] * ct).sum())(G)
  assert np.abs(pathwise).max() > 1e-3
  np.testing.assert_allclose(jax.grad(loss)(G, False), u + pathwise, rtol=1e-5, atol=1e-6)
  # the argmax token carries no gradient
  zgrad = jax.grad(lambda g: relax.duo_soft_input(g, a, xi, 0.5)[1].astype(jnp.float32).sum())(G)
  np.testing.assert_array_equal(zgrad, 0.0)


# ------------------------------------------------------------------ §2.4 ablations


def test_gumbel_softmax_forward_and_gradient():
  G = _student_G(12)
  log_q = relax.mdlm_q_log_probs(G, jnp.array([0.6, 0.9]), MASK)
  ct = _normal(14)
  big = 1e3 * _normal(16)

  @jax.jit
  def run(key, log_q, big):
    s = relax.gumbel_softmax(key, log_q, 0.5)
    noise = jax.random.gumbel(key, log_q.shape)  # the draw gumbel_softmax makes
    ref = jax.nn.softmax((log_q + noise) / 0.5, -1)
    naive = lambda q: (jax.nn.softmax((q + noise) / 0.5, -1) * ct).sum()  # autodiff reference
    grad = jax.grad(lambda q: (relax.gumbel_softmax(key, q, 0.5) * ct).sum())(log_q)
    grad_low_tau = jax.grad(lambda q: (relax.gumbel_softmax(key, q, 1e-3) * ct).sum())(big)
    return s, ref, grad, jax.grad(naive)(log_q), grad_low_tau

  key = jax.random.key(13)
  s, ref, grad, grad_ref, grad_low_tau = run(key, log_q, big)
  np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(s.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-6)
  assert np.all(np.isfinite(grad_low_tau))


def test_straight_through_forward_is_one_hot_and_gradient_is_softmax():
  n = 4000
  p = np.array([0.5, 0.3, 0.15, 0.05])
  log_q = jnp.broadcast_to(jnp.log(jnp.asarray(p, jnp.float32)), (n, 4)) + 2.0  # unnormalised
  ct = _normal(19, (n, 4))

  @jax.jit
  def run(key, log_q):
    st = lambda q: relax.straight_through(key, q, "exact32")
    grad = jax.grad(lambda q: (st(q) * ct).sum())(log_q)
    _, vjp_ref = jax.vjp(lambda q: jax.nn.softmax(q, -1), log_q)
    return st(log_q), relax.sample_token(key, log_q, "exact32"), grad, vjp_ref(ct)[0]

  y, x, grad, grad_ref = run(jax.random.key(20), log_q)
  y = np.asarray(y)
  assert set(np.unique(y)) <= {0.0, 1.0}
  np.testing.assert_array_equal(y, jax.nn.one_hot(x, 4))
  counts = y.sum(0)
  assert stats.chi2.sf(np.sum((counts - n * p) ** 2 / (n * p)), 3) > 1e-3, counts
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-7)  # the softmax gradient
  with pytest.raises(ValueError, match="precision"):
    relax.straight_through(jax.random.key(0), log_q, "float16")
  if not jax.config.jax_enable_x64:  # the float64 default asks for x64 mode
    with pytest.raises(RuntimeError, match="x64"):
      relax.straight_through(jax.random.key(0), log_q)


def test_get_relaxation_registry():
  assert relax.get_relaxation("simplex") is relax.simplex
  assert relax.get_relaxation("gumbel") is relax.gumbel_softmax
  assert relax.get_relaxation("straight_through") is relax.straight_through
  assert set(relax.RELAXATIONS) == {"simplex", "gumbel", "straight_through"}
  with pytest.raises(ValueError, match=r"unknown 'argmax'.*simplex"):
    relax.get_relaxation("argmax")
