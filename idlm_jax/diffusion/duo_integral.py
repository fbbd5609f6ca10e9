"""Duo's diffusion transformation operator T: Gaussian alpha~ -> discrete alpha_t (teachers.md §4.3).

For w = alpha~ onehot(x) + sigma~ eps with gamma = log(sigma~^2 / alpha~^2), z = argmax w equals
x with probability
  p(gamma) = P(eps_x + m > max_{j != x} eps_j) = int phi(u - m) Phi(u)^(K-1) du,  m = e^(-gamma/2),
and is uniform over the other K - 1 tokens otherwise, so z ~ q(z_t | x) of the uniform-state
process with alpha_t = (K p(gamma) - 1) / (K - 1).

`transformation_table` computes p and dp/dgamma on a gamma grid in float64 (composite Simpson
over u, the integrand in log space with log Phi from `scipy.special.log_ndtr`), vectorised over
the grid, and caches it to disk keyed by K and the grid. `DuoTransform` interpolates the table
linearly inside jitted code.
"""

import dataclasses
import hashlib
import logging
import pathlib

import jax.numpy as jnp
import numpy as np
from scipy import special

log = logging.getLogger("idlm_jax")
TABLE_VERSION = 1
_U_POINTS = 12001  # odd: composite Simpson


def _simpson_weights(n: int, h: float) -> np.ndarray:
  w = np.ones(n)
  w[1:-1:2], w[2:-1:2] = 4.0, 2.0
  return w * h / 3.0


def p_and_dp(gamma: np.ndarray, vocab_size: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """p(gamma) and dp/dgamma in float64 for an array of gamma (any K >= 2)."""
  gamma = np.asarray(gamma, np.float64)
  m = np.exp(-gamma / 2.0)
  # the integrand lives where u - m ~ N(0, 1) and where Phi(u)^(K-1) is not negligible
  lo = min(-8.0, float(m.min()) - 9.0)
  hi = float(m.max()) + 9.0
  u = np.linspace(lo, hi, _U_POINTS)
  w = _simpson_weights(_U_POINTS, u[1] - u[0])
  log_cdf_pow = (vocab_size - 1) * special.log_ndtr(u)  # log Phi(u)^(K-1)
  p, dp_dm = np.empty_like(m), np.empty_like(m)
  for i in range(0, m.size, chunk):
    d = u[None, :] - m[i:i + chunk, None]
    f = np.exp(-0.5 * d * d - 0.5 * np.log(2 * np.pi) + log_cdf_pow[None, :])
    p[i:i + chunk] = f @ w
    dp_dm[i:i + chunk] = (f * d) @ w  # d/dm phi(u - m) = (u - m) phi(u - m)
  return p, dp_dm * (-m / 2.0)  # dm/dgamma = -m/2


def _cache_path(cache_dir, vocab_size: int, gamma_min: float, gamma_max: float, n: int):
  tag = f"v{TABLE_VERSION}-K{vocab_size}-{gamma_min!r}-{gamma_max!r}-{n}-{_U_POINTS}"
  digest = hashlib.sha256(tag.encode()).hexdigest()[:12]
  return pathlib.Path(cache_dir).expanduser() / "duo_integral" / f"K{vocab_size}-{digest}.npz"


def transformation_table(vocab_size: int, gamma_min: float, gamma_max: float,
                         num_points: int = 4001, cache_dir=None) -> dict:
  """{"gamma", "p", "dp"} float64 arrays on linspace(gamma_min, gamma_max, num_points)."""
  path = None if cache_dir is None else _cache_path(cache_dir, vocab_size, gamma_min,
                                                    gamma_max, num_points)
  if path is not None and path.exists():
    with np.load(path) as z:
      return {k: z[k] for k in ("gamma", "p", "dp")}
  gamma = np.linspace(gamma_min, gamma_max, num_points)
  p, dp = p_and_dp(gamma, vocab_size)
  table = {"gamma": gamma, "p": p, "dp": dp}
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **table)
    tmp.replace(path)
    log.info("Duo transformation table for K=%d, gamma in [%g, %g] cached at %s", vocab_size,
             gamma_min, gamma_max, path)
  return table


@dataclasses.dataclass(frozen=True)
class DuoTransform:
  """Curriculum schedule: t -> gamma_t (linear) -> discrete alpha_t and d alpha_t / dt."""

  vocab_size: int
  gamma_min: float
  gamma_max: float
  table_gamma: np.ndarray
  table_p: np.ndarray
  table_dp: np.ndarray

  @classmethod
  def create(cls, vocab_size, gamma_min, gamma_max, cache_dir=None, num_points=4001):
    t = transformation_table(vocab_size, gamma_min, gamma_max, num_points, cache_dir)
    return cls(vocab_size, gamma_min, gamma_max, t["gamma"], t["p"], t["dp"])

  def gamma(self, t):
    return self.gamma_min + t * (self.gamma_max - self.gamma_min)

  def alpha(self, t):
    """alpha_t = (K p(gamma_t) - 1)/(K - 1) (float32)."""
    p = jnp.interp(self.gamma(t), self.table_gamma.astype(np.float32),
                   self.table_p.astype(np.float32))
    return (self.vocab_size * p - 1.0) / (self.vocab_size - 1.0)

  def dalpha(self, t):
    """d alpha_t / dt = K/(K-1) dp/dgamma (gamma_max - gamma_min)."""
    dp = jnp.interp(self.gamma(t), self.table_gamma.astype(np.float32),
                    self.table_dp.astype(np.float32))
    return self.vocab_size / (self.vocab_size - 1.0) * dp * (self.gamma_max - self.gamma_min)
