"""Noise schedules alpha_t (probability that a token is still clean at time t)."""

import dataclasses

import jax
import jax.numpy as jnp

from idlm_jax import rng


@dataclasses.dataclass(frozen=True)
class LogLinear:
  """alpha_t = 1 - (1 - eps) t; sigma_t = -log alpha_t (MDLM/Duo `LogLinear`)."""

  eps: float = 1e-3

  def alpha(self, t: jax.Array) -> jax.Array:
    return 1.0 - (1.0 - self.eps) * t

  def dalpha(self, t: jax.Array) -> jax.Array:
    """d alpha_t / dt."""
    return jnp.full_like(t, -(1.0 - self.eps))

  def sigma(self, t: jax.Array) -> jax.Array:
    """Total noise sigma(t) = -log alpha_t = -log1p(-(1 - eps) t)."""
    return -jnp.log1p(-(1.0 - self.eps) * t)


def get_schedule(name: str, eps: float) -> LogLinear:
  """Schedule by config name."""
  if name == "loglinear":
    return LogLinear(eps=eps)
  raise ValueError(f"diffusion.schedule: unknown schedule {name!r} (known: 'loglinear')")


def sample_t(key: rng.Key, n: int, eps: float, antithetic: bool = True) -> jax.Array:
  """Training times in [eps, 1]; antithetic: t_i = ((u + i) / n mod 1)(1 - eps) + eps.

  With a RowKey (idlm_jax/rng.py) i is each row's global index and n the whole batch's
  size, u one draw for the batch: a microbatch gets its rows' times of the full batch.
  """
  if antithetic:
    u = jax.random.uniform(rng.shared(key), ())
    if isinstance(key, rng.RowKey):
      if key.size != n:
        raise ValueError(f"sample_t: {n} times from a RowKey of {key.size} rows")
      i, n = key.rows, key.total
    else:
      i = jnp.arange(n)
    t = jnp.mod(u / n + i / n, 1.0)
  else:
    t = rng.uniform(key, (n,))
  return t * (1.0 - eps) + eps


def student_t(key: rng.Key, n: int, eps: float, grid: int = 0) -> jax.Array:
  """The few-step student's input times in distillation. grid = 0: `sample_t` (antithetic
  in [eps, 1], the paper). grid = K > 0: the first K points of linspace(1, eps, K + 1), the
  times at which a K-step sampler calls the network before its final step, each row's drawn
  by stratifying the same antithetic uniforms over the K points (so every point gets n / K
  rows of a batch; a sampler at K / 2^j steps calls the student at a subset of them)."""
  if grid <= 0:
    return sample_t(key, n, eps, True)
  u = sample_t(key, n, 0.0, True)  # antithetic uniforms in [0, 1)
  k = jnp.minimum(jnp.floor(u * grid), grid - 1)
  return 1.0 - k * ((1.0 - eps) / grid)


def sampling_grid(num_steps: int, eps: float) -> jax.Array:
  """The reverse-time grid linspace(1, eps, N + 1) of the MDLM/Duo samplers."""
  return jnp.linspace(1.0, eps, num_steps + 1)
