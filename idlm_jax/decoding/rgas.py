"""RGAS: DiDi-Instruct's reward-guided ancestral sampler (reference/didi_instruct.md §3.3).

MDLM ancestral steps on linspace(1, eps, N + 1) from all-[MASK], driven by the student's SUBS
output log x_theta and a discriminator d(z, t) -> per-token logits [B, L] (whose input may be
probability vectors [B, L, V]: the expected embedding). Steps i < n_tilt = floor(N (1 - r)),
r = rerank_ratio, are GRADIENT TILTING:

  score(l) = sum_{masked} d(softmax(l), t),  g = clip(d score / d l, +-c) at masked positions,
  l <- log_softmax(l + h_i g),  h_i linear from scale_start to scale_end over the tilt steps,

(unmasked rows are exact one-hots, so the input there is the token's embedding), then the
usual transition q(v) ~ x_theta[v] (a_s - a_t), q([MASK]) ~ 1 - a_s. The remaining steps are
MULTI-CANDIDATE RE-RANKING: M candidates x_s from the same transition, each scored by
sum_l d(x_s, s) over the whole sequence, one kept ~ softmax(scores / temperature). A final
step at t = eps fills the remaining masks (argmax or one draw). Both phases run as
`lax.fori_loop`s in one traced function; draws use `precision` (trace inside
categorical.x64_scope). The output counts student calls (NFE) and discriminator forward
passes per sample separately (a tilt step costs one forward + one backward of d, a
re-ranking step M forwards), since the paper's NFE counts only the student.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from idlm_jax.diffusion import categorical
from idlm_jax.decoding.ancestral import apply_prefix
from idlm_jax.diffusion.mdlm import masked_posterior_logits
from idlm_jax.diffusion.schedules import LogLinear, sampling_grid

DiscFn = Callable[[jax.Array, jax.Array], jax.Array]  # (ids or probs, t [B]) -> logits [B, L]


class RGASOutput(NamedTuple):
  tokens: jax.Array  # int32 [B, L]
  nfe: jax.Array  # int32 []: student calls
  disc_forwards: jax.Array  # int32 []: discriminator forward passes per sample
  disc_grads: jax.Array  # int32 []: of which with a backward pass (tilting)


def tilt_gradient(disc_fn: DiscFn, log_x0: jax.Array, x: jax.Array, t: jax.Array,
                  mask_id: int, clip: float) -> jax.Array:
  """g = clip(d/d l sum_{l: x_l = mask} d(softmax(l), t)_l, +-clip), zero at unmasked
  positions and in the [MASK] column. log_x0 [B, L, V] float32, t [B]."""
  masked = (x == mask_id).astype(jnp.float32)

  def score(logits):
    return jnp.sum(disc_fn(jax.nn.softmax(logits, axis=-1), t) * masked)

  g = jax.grad(score)(log_x0.astype(jnp.float32))
  g = jnp.where((jnp.arange(g.shape[-1]) == mask_id) | (masked[..., None] == 0), 0.0, g)
  return jnp.clip(g, -clip, clip)


def tilt(log_x0: jax.Array, g: jax.Array, scale) -> jax.Array:
  """log_softmax(l + h g): the tilted x_theta (unchanged where g = 0 on a one-hot row)."""
  return jax.nn.log_softmax(log_x0 + scale * g, axis=-1)


def rgas(log_probs_fn, disc_fn: DiscFn, key: jax.Array, *, batch_size: int, seq_len: int,
         mask_id: int, schedule: LogLinear, num_steps: int, eps: float = 1e-5,
         rerank_ratio: float = 0.5, scale_start: float = 30.0, scale_end: float = 40.0,
         grad_clip: float = 1.0, num_candidates: int = 4, temperature: float = 1.0,
         precision: str = "float64", noise_removal: str = "ancestral",
         prefix: jax.Array | None = None) -> RGASOutput:
  """RGAS from all-[MASK] (`prefix` clamped as in samplers.apply_prefix); see the module doc."""
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  grid = sampling_grid(num_steps, eps).astype(dtype)
  n_tilt = int(num_steps * (1.0 - rerank_ratio))
  x = apply_prefix(jnp.full((batch_size, seq_len), mask_id, jnp.int32), prefix)
  t_b = lambda t: jnp.full((batch_size,), t, jnp.float32)

  def transition(log_x0, t, s):
    return masked_posterior_logits(log_x0, schedule.alpha(t), schedule.alpha(s), mask_id, dtype)

  def tilt_step(i, x):
    t, s = grid[i], grid[i + 1]
    log_x0 = log_probs_fn(x, t_b(t)).astype(jnp.float32)
    h = scale_start + (scale_end - scale_start) * i / max(n_tilt - 1, 1)
    log_x0 = tilt(log_x0, tilt_gradient(disc_fn, log_x0, x, t_b(t), mask_id, grad_clip), h)
    draw = categorical.sample_categorical(jax.random.fold_in(key, i), transition(log_x0, t, s),
                                          precision)
    return jnp.where(x == mask_id, draw, x)

  def rerank_step(i, x):
    t, s = grid[i], grid[i + 1]
    logits = transition(log_probs_fn(x, t_b(t)).astype(jnp.float32), t, s)
    k_draw, k_pick = jax.random.split(jax.random.fold_in(key, i))
    draws = jax.vmap(lambda k: categorical.sample_categorical(k, logits, precision))(
        jax.random.split(k_draw, num_candidates))  # [M, B, L]
    cands = jnp.where(x == mask_id, draws, x)
    flat = cands.reshape(num_candidates * batch_size, seq_len)
    scores = disc_fn(flat, jnp.full((flat.shape[0],), s, jnp.float32)).sum(-1)
    scores = scores.reshape(num_candidates, batch_size).T / temperature  # [B, M]
    pick = categorical.sample_categorical(k_pick, scores, precision)
    return cands[pick, jnp.arange(batch_size)]

  x = jax.lax.fori_loop(0, n_tilt, tilt_step, x)
  x = jax.lax.fori_loop(n_tilt, num_steps, rerank_step, x)
  log_x0 = log_probs_fn(x, t_b(grid[-1])).astype(jnp.float32)
  if noise_removal == "argmax":
    final = jnp.argmax(log_x0, axis=-1).astype(jnp.int32)
  else:
    final = categorical.sample_categorical(jax.random.fold_in(key, num_steps), log_x0, precision)
  n_rerank = num_steps - n_tilt
  return RGASOutput(jnp.where(x == mask_id, final, x), jnp.int32(num_steps + 1),
                    jnp.int32(n_tilt + n_rerank * num_candidates), jnp.int32(n_tilt))
