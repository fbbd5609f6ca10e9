"""Categorical draws: correct frequencies, and exact Gumbel tails of every precision."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from idlm_jax.diffusion import categorical as C

BITS = {"float32": 24, "float64": 53, "exact32": 64}


def _words(n: int, precision: str) -> jax.Array:
  """The uint32 words whose integer value (at the precision's resolution) is n."""
  if precision == "float32":
    return jnp.array([n << 8], jnp.uint32)
  if precision == "float64":
    return jnp.array([(n >> 26) << 5, (n & (2**26 - 1)) << 6], jnp.uint32)
  return jnp.array([n >> 32, n & 0xFFFFFFFF], jnp.uint32)


def _tail(precision: str, x: float) -> float:
  """P(g > x) of the implementation, exactly: g is monotone in the bits' value, so bisect."""
  g = lambda n: float(C.gumbel_from_bits(_words(n, precision), precision))
  size = 2 ** BITS[precision]
  increasing = g(size - 1) > g(0)
  above = lambda n: g(n) > x  # monotone predicate over n in [0, size)
  lo, hi = 0, size  # find the boundary index between the two sides of x
  first = above(0)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if above(mid) == first else (lo, mid)
  count = (size - hi) if increasing else hi
  if not any(above(n) for n in (0, size - 1)):
    count = 0
  return count / size


@pytest.mark.parametrize("x", [2.0, 10.0, 15.0, 20.0, 25.0, 30.0])
@pytest.mark.parametrize("precision", ["float64", "exact32"])
def test_gumbel_tail_frequencies_are_exact(precision, x):
  with C.x64_scope(precision):
    got = _tail(precision, x)
  exact = -math.expm1(-math.exp(-x))
  assert got == pytest.approx(exact, rel=2e-3)


def test_naive_float32_truncates_the_tail():
  exact = lambda x: -math.expm1(-math.exp(-x))
  assert _tail("float32", 10.0) == pytest.approx(exact(10.0), rel=0.05)
  assert _tail("float32", 17.0) == 0.0  # true mass 4e-8: tokens that rare are never drawn
  assert _tail("float32", 20.0) == 0.0
  with C.x64_scope("float64"):
    assert _tail("float64", 20.0) > 0.0 and _tail("exact32", 20.0) > 0.0


def test_float64_requires_x64_scope():
  with pytest.raises(RuntimeError, match="x64"):
    C.sample_categorical(jax.random.key(0), jnp.zeros((2, 3)), "float64")


@pytest.mark.parametrize("precision", C.PRECISIONS)
def test_draws_follow_the_distribution(precision):
  p = np.array([0.5, 0.25, 0.15, 0.07, 0.03, 0.0])
  with C.x64_scope(precision):
    draws = jax.jit(lambda k: C.sample_categorical(k, jnp.log(jnp.broadcast_to(p, (60_000, 6))),
                                                   precision))(jax.random.key(1))
  counts = np.bincount(np.asarray(draws), minlength=6)
  assert counts[5] == 0  # zero-probability classes (-inf) are never drawn
  chi2 = stats.chisquare(counts[:5], 60_000 * p[:5])
  assert chi2.pvalue > 1e-3, (counts, chi2)


def test_draws_follow_the_distribution_inverse_cdf():
  """The two-level inverse CDF over several blocks (V = 300 = 3 blocks of 128, the last padded):
  chi-square against the exact probabilities, classes spanning e^-12..1, a -inf class never
  drawn, a one-hot row always its class, unnormalised log-probabilities accepted."""
  V, n = 300, 400_000
  rng = np.random.default_rng(0)
  logits = rng.normal(size=V) * 3.0 + 7.0  # unnormalised
  logits[5], logits[250], logits[299] = -np.inf, -12.0, 9.0
  p = np.exp(logits - logits.max())
  p /= p.sum()
  draws = jax.jit(lambda k: C.sample_categorical(
      k, jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, V)), "inverse_cdf"))(
          jax.random.key(2))
  counts = np.bincount(np.asarray(draws), minlength=V)
  assert counts.shape == (V,) and counts[5] == 0
  big = p * n > 5  # chi-square cells; the rest pooled into one
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(p[big], p[~big].sum()) * n
  chi2 = stats.chisquare(obs, exp)
  assert chi2.pvalue > 1e-3, chi2
  one_hot = jnp.full((4, V), -jnp.inf).at[:, 257].set(0.0)
  assert (np.asarray(C.sample_categorical(jax.random.key(3), one_hot, "inverse_cdf")) == 257).all()
