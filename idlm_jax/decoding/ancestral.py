"""The MDLM ancestral sampler (with caching) as one compiled loop (`lax.fori_loop`), and what
every sampler shares: `SampleOutput` and the prompt clamp `apply_prefix`.

`log_probs_fn(x_t, t) -> log x_theta [B, L, V]` is the denoiser's SUBS output; samplers count
every call of it (NFE) on device.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from idlm_jax import rng
from idlm_jax.diffusion import categorical
from idlm_jax.diffusion.mdlm import masked_posterior_logits
from idlm_jax.diffusion.schedules import LogLinear, sampling_grid

LogProbsFn = Callable[[jax.Array, jax.Array], jax.Array]


class SampleOutput(NamedTuple):
  tokens: jax.Array  # int32 [B, L]
  nfe: jax.Array  # int32 []: network calls made for the whole batch (= per sample)


def apply_prefix(x: jax.Array, prefix: jax.Array | None) -> jax.Array:
  """Clamp the prompt: x[:, :P] = prefix where prefix >= 0 (prefix int32 [B, P] or [P]; a
  negative entry leaves that position free, so prompts of different lengths share one array).
  None leaves x unchanged (unconditional generation)."""
  if prefix is None:
    return x
  prefix = jnp.broadcast_to(jnp.asarray(prefix, jnp.int32), (x.shape[0], jnp.shape(prefix)[-1]))
  p = prefix.shape[-1]
  if p > x.shape[-1]:
    raise ValueError(f"prefix of {p} tokens does not fit in seq_len {x.shape[-1]}")
  head = jnp.where(prefix >= 0, prefix, x[:, :p])
  return x.at[:, :p].set(head)


def mdlm_ancestral(log_probs_fn: LogProbsFn, key: jax.Array, *, batch_size: int, seq_len: int,
                   mask_id: int, schedule: LogLinear, num_steps: int, eps: float = 1e-5,
                   cache: bool = True, time_conditioned: bool = False,
                   precision: str = "float64", noise_removal: str = "argmax",
                   prefix: jax.Array | None = None) -> SampleOutput:
  """MDLM ancestral sampler with caching (`ddpm_cache`), from all-[MASK] to clean tokens.

  Steps on linspace(1, eps, N + 1). Unmasked tokens are copied. When no token changed and the
  network ignores t, x_theta is reused without a network call. The final step at t = eps
  removes the remaining masks by argmax (MDLM) or one ancestral draw to alpha = 1.
  `prefix` (int32 [B, P], see `apply_prefix`) starts unmasked, so SUBS carry-over keeps it.
  Trace inside `categorical.x64_scope(precision)` for float64 draws.
  """
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  grid = sampling_grid(num_steps, eps).astype(dtype)
  x = apply_prefix(jnp.full((batch_size, seq_len), mask_id, jnp.int32), prefix)

  def denoise(x, t, cached, valid, nfe):
    def call():
      t_b = jnp.full((x.shape[0],), t, jnp.float32)
      return log_probs_fn(x, t_b).astype(jnp.float32)
    if not cache:
      return call(), nfe + 1
    log_x0 = jax.lax.cond(valid, lambda: cached, call)
    return log_x0, nfe + jnp.where(valid, 0, 1).astype(jnp.int32)

  def step(i, carry):
    x, cached, valid, nfe = carry
    t, s = grid[i], grid[i + 1]
    log_x0, nfe = denoise(x, t, cached, valid, nfe)
    logits = masked_posterior_logits(log_x0, schedule.alpha(t), schedule.alpha(s), mask_id, dtype)
    draw = categorical.sample_categorical(rng.fold_in(key, i), logits, precision)
    x_next = jnp.where(x == mask_id, draw, x)
    valid = jnp.logical_and(jnp.all(x_next == x), not time_conditioned)
    return x_next, log_x0, valid, nfe

  vocab = _vocab_size(log_probs_fn, x)
  init = (x, jnp.zeros((batch_size, seq_len, vocab), jnp.float32), jnp.array(False), jnp.int32(0))
  x, cached, valid, nfe = jax.lax.fori_loop(0, num_steps, step, init)
  log_x0, nfe = denoise(x, grid[-1], cached, valid, nfe)
  if noise_removal == "argmax":
    final = jnp.argmax(log_x0, axis=-1).astype(jnp.int32)
  elif noise_removal == "ancestral":
    final = categorical.sample_categorical(rng.fold_in(key, num_steps), log_x0, precision)
  else:
    raise ValueError(f"sample.noise_removal: unknown {noise_removal!r} ('argmax', 'ancestral')")
  return SampleOutput(jnp.where(x == mask_id, final, x), nfe)


def _vocab_size(log_probs_fn: LogProbsFn, x: jax.Array) -> int:
  """Output width of the denoiser, from its abstract evaluation (no compute)."""
  t = jax.ShapeDtypeStruct((x.shape[0],), jnp.float32)
  return jax.eval_shape(log_probs_fn, x, t).shape[-1]
