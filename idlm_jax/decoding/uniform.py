"""The Duo/UDLM ancestral sampler (uniform state; teachers.md §2.4) as one `lax.fori_loop`.

`log_probs_fn(z_t, t) -> log x_theta [B, L, K]` is the mean-parameterised denoiser
(log_softmax of the logits, time-conditioned on sigma = -log alpha_t). Starting from uniform
random tokens, each of the N steps on linspace(1, eps, N + 1) costs one network call (no
caching: the network is time-conditioned and every token may change) and draws z_s from
`uniform.posterior_probs`, computed in float64 when precision = "float64". Options:
  top_p < 1: nucleus filtering of x_theta before the posterior (Duo `main`);
  noise_removal: "argmax" (Duo's greedy tail: z = argmax x_theta(z, eps)) or "ancestral"
  (one more posterior step to alpha_s = 1); both cost one extra NFE (total N + 1).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from idlm_jax.diffusion import categorical, uniform
from idlm_jax.decoding.ancestral import SampleOutput, apply_prefix
from idlm_jax.diffusion.schedules import sampling_grid

LogProbsFn = Callable[[jax.Array, jax.Array], jax.Array]


def _log(p):
  tiny = 1e-300 if p.dtype == jnp.float64 else 1e-38
  return jnp.where(p > 0, jnp.log(jnp.maximum(p, tiny)), -jnp.inf)


def duo_ancestral(log_probs_fn: LogProbsFn, key: jax.Array, *, batch_size: int, seq_len: int,
                  vocab_size: int, alpha_fn: Callable, num_steps: int, eps: float = 1e-5,
                  precision: str = "float64", noise_removal: str = "argmax",
                  top_p: float = 1.0, prefix: jax.Array | None = None) -> SampleOutput:
  """Uniform-state ancestral sampling (`DUO_BASE._ancestral_update` + noise removal).

  `alpha_fn(t)` is the schedule's alpha_t (log-linear). `prefix` (int32 [B, P], see
  `samplers.apply_prefix`) is clamped into z_t before every network call and in the output
  (inpainting: the posterior would move those tokens, the clamp puts them back). Trace inside
  `categorical.x64_scope(precision)` for float64 draws.
  """
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  grid = sampling_grid(num_steps, eps).astype(dtype)
  z = jax.random.randint(jax.random.fold_in(key, num_steps + 1), (batch_size, seq_len), 0, vocab_size,
                         jnp.int32)
  z = apply_prefix(z, prefix)

  def x_theta(z, t):
    log_x = log_probs_fn(z, jnp.full((batch_size,), t, jnp.float32)).astype(dtype)
    return uniform.top_p_filter(jax.nn.softmax(log_x, axis=-1), top_p)

  def step(i, z):
    t, s = grid[i], grid[i + 1]
    q = uniform.posterior_probs(x_theta(z, t), z, alpha_fn(t), alpha_fn(s))
    return apply_prefix(
        categorical.sample_categorical(jax.random.fold_in(key, i), _log(q), precision), prefix)

  z = jax.lax.fori_loop(0, num_steps, step, z)
  x = x_theta(z, grid[-1])
  if noise_removal == "argmax":
    final = jnp.argmax(x, axis=-1).astype(jnp.int32)
  elif noise_removal == "ancestral":
    q = uniform.posterior_probs(x, z, alpha_fn(grid[-1]), jnp.asarray(1.0, dtype))
    final = categorical.sample_categorical(jax.random.fold_in(key, num_steps), _log(q), precision)
  else:
    raise ValueError(f"sample.noise_removal: unknown {noise_removal!r} ('argmax', 'ancestral')")
  return SampleOutput(apply_prefix(final, prefix), jnp.int32(num_steps + 1))
