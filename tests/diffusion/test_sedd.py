"""SEDD score entropy against its definition (matrix exponentials of the rate matrix Q) and
the exact score as its minimiser, on a tiny vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from idlm_jax.diffusion import sedd

V, MASK = 4, 3  # absorbing: tokens {0, 1, 2} + [MASK]; uniform: K = 4 states


def rate_matrix(graph):
  """Q[i, j] = rate j -> i (columns sum to 0)."""
  if graph == "absorbing":
    q = -np.eye(V)
    q[MASK, :] += 1.0
    q[MASK, MASK] = 0.0
    return q
  return np.full((V, V), 1.0 / V) - np.eye(V)


def definition(log_s, sigma, xt, x0, graph):
  """sum_{y != x_t} Q[x_t, y] (s_y - rho_y log s_y + rho_y (log rho_y - 1)), rho from expm."""
  q = rate_matrix(graph)
  p = expm(sigma * q)[:, x0]  # p_t(. | x0)
  rho = p / p[xt]
  out = 0.0
  for y in range(V):
    if y == xt or q[xt, y] == 0:
      continue
    klog = rho[y] * (np.log(rho[y]) - 1.0) if rho[y] > 0 else 0.0
    out += q[xt, y] * (np.exp(log_s[y]) - rho[y] * log_s[y] + klog)
  return out


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_score_entropy_matches_definition(graph):
  rng = np.random.default_rng(0)
  for sigma in (0.05, 0.7, 3.0):
    for x0 in range(3 if graph == "absorbing" else V):
      for xt in ([MASK, x0] if graph == "absorbing" else range(V)):
        log_s = rng.normal(size=V)
        log_s[xt] = 0.0
        got = sedd.score_entropy(jnp.asarray(log_s, jnp.float32)[None, None],
                                 jnp.array([sigma], jnp.float32), jnp.array([[xt]]),
                                 jnp.array([[x0]]), graph=graph, mask_id=MASK)
        want = definition(log_s, sigma, xt, x0, graph)
        np.testing.assert_allclose(float(got[0, 0]), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("graph", ["absorbing", "uniform"])
def test_exact_score_minimises_expected_score_entropy(graph):
  """E_{x0 | x_t} of the loss is minimised at log s_y = log p_t(y) / p_t(x_t) (SEDD Prop. 3.2)."""
  pi = np.array([0.5, 0.3, 0.2, 0.0]) if graph == "absorbing" else np.array([0.4, 0.3, 0.2, 0.1])
  sigma = 0.8
  pt_given = expm(sigma * rate_matrix(graph))  # [x_t, x0]
  pt = pt_given @ pi
  for xt in ([MASK] if graph == "absorbing" else range(V)):
    post = pt_given[xt] * pi / pt[xt]  # p(x0 | x_t)
    x0s = jnp.arange(V)

    def expected(log_s):
      ls = jnp.broadcast_to(log_s, (V, V))[:, None, :]
      ent = sedd.score_entropy(ls, jnp.full((V,), sigma, jnp.float32), jnp.full((V, 1), xt),
                               x0s[:, None], graph=graph, mask_id=MASK)[:, 0]
      return jnp.sum(jnp.asarray(post, jnp.float32) * ent)

    true = np.log(pt / pt[xt])
    true[xt] = 0.0
    if graph == "absorbing":
      true[MASK] = 0.0  # unused column
    true = jnp.asarray(true, jnp.float32)
    grad = np.asarray(jax.grad(expected)(true))
    free = [y for y in range(V) if y != xt and (graph == "uniform" or y != MASK)]
    np.testing.assert_allclose(grad[free], 0.0, atol=1e-5)
    base = float(expected(true))
    rng = np.random.default_rng(1)
    for _ in range(10):
      delta = np.zeros(V, np.float32)
      delta[free] = rng.normal(size=len(free)) * 0.3
      assert float(expected(true + delta)) > base


def test_log_score_transform_and_mdlm_conversion():
  raw = jax.random.normal(jax.random.key(0), (1, 2, V))
  xt = jnp.array([[MASK, 1]])
  sigma = jnp.array([0.4])
  ls = sedd.log_score(raw, xt, sigma, "absorbing")
  np.testing.assert_allclose(ls[0, 0, :3], raw[0, 0, :3] - np.log(np.expm1(0.4)) - np.log(V - 1),
                             rtol=1e-5)
  assert float(ls[0, 0, MASK]) == 0.0 and float(ls[0, 1, 1]) == 0.0
  # MDLM's score of the exact denoiser is the exact ratio p_t(y) / p_t(mask) = a pi_y / (1 - a)
  pi = jnp.array([0.5, 0.3, 0.2, 0.0])
  log_x0 = jnp.log(jnp.maximum(pi, 1e-30))[None, None]
  got = sedd.mdlm_log_score(log_x0, jnp.array([[MASK]]), sigma, MASK)
  a = np.exp(-0.4)
  np.testing.assert_allclose(np.exp(got[0, 0, :3]), a * pi[:3] / (1 - a), rtol=1e-5)
  assert float(got[0, 0, MASK]) == 0.0
  unmasked = sedd.mdlm_log_score(log_x0, jnp.array([[1]]), sigma, MASK)[0, 0]
  assert float(unmasked[1]) == 0.0 and np.isneginf(unmasked[0])
  np.testing.assert_allclose(float(unmasked[MASK]), np.log(np.expm1(0.4)), rtol=1e-5)
