"""Categorical draws whose Gumbel tail is not truncated by float32 rounding.

Gumbel-max over tens of thousands of classes in float32 truncates the noise tail (uniforms on
a 2^-23 grid cap the Gumbel noise near 15.9), which lowers the effective temperature and
artificially lowers Gen PPL and entropy (Zheng et al. 2024; reference/teachers.md §2.5).

Every precision turns raw random bits into Gumbel noise with a monotone map, so its tail
frequencies can be computed exactly (tests/diffusion/test_categorical.py):
  "float64": 53-bit uniform and Gumbel noise and log-probabilities in float64 (the Duo/UDLM
             protocol); the tail reaches ~36.7. Needs x64 mode while tracing: run the jitted
             sampler inside `x64_scope("float64")`.
  "exact32": float32 arithmetic on 64 random bits: E ~ Exp(1) is -log1p(-u) for u < 1/2 and
             -log(1 - u) otherwise, with u and 1 - u formed from the integer bits so float32
             keeps full relative precision down to 2^-64; the tail reaches ~44. Exact for
             practical purposes and fast on TPUs, which emulate float64.
  "float32": the naive draw of the MDLM repo (24-bit uniforms, tail capped at ~16.6), kept
             for comparison.

`sample_categorical(..., "inverse_cdf")` is not a Gumbel draw: a two-level inverse CDF in
float32 with 2 random words per row instead of 2 per class (`inverse_cdf`). The training steps
of the distillation objectives use it (distill.train_draw): at V = 50k the Gumbel draws' random
bits, not the networks, dominated the IDLM step on a CPU.
"""

import contextlib

import jax
import jax.numpy as jnp

from idlm_jax import rng

PRECISIONS = ("float64", "exact32", "float32")  # Gumbel-max draws (samplers: sample.precision)
DRAWS = PRECISIONS + ("inverse_cdf",)  # everything sample_categorical accepts
ICDF_BLOCK = 128  # classes per block of the two-level inverse CDF
_WORDS = {"float64": 2, "exact32": 2, "float32": 1}


def x64_scope(precision: str):
  """Context that enables x64 while tracing/running a sampler that draws in float64."""
  if precision == "float64":
    return jax.enable_x64(True)
  return contextlib.nullcontext()


def random_words(key: jax.Array, shape, precision: str) -> jax.Array:
  """The uint32 words [n, *shape] that `gumbel_from_bits` consumes."""
  if precision not in PRECISIONS:
    raise ValueError(f"sample.precision: unknown precision {precision!r} (known: {PRECISIONS})")
  return rng.bits(key, (_WORDS[precision], *shape), jnp.uint32, row_axis=1)


def gumbel_from_bits(words: jax.Array, precision: str) -> jax.Array:
  """Standard Gumbel noise from uint32 words, a monotone function of the words' integer value."""
  if precision == "float32":
    u = (words[0] >> 8).astype(jnp.float32) * 2.0**-24  # [0, 1) on a 2^-24 grid
    return -jnp.log(-jnp.log(u))
  if precision == "float64":
    if not jax.config.jax_enable_x64:
      raise RuntimeError("precision='float64' needs x64 mode: trace the sampler inside "
                         "idlm_jax.diffusion.categorical.x64_scope('float64')")
    hi = (words[0] >> 5).astype(jnp.float64)  # 27 bits
    lo = (words[1] >> 6).astype(jnp.float64)  # 26 bits
    u = (hi * 2.0**26 + lo) * 2.0**-53  # [0, 1) on a 2^-53 grid
    return -jnp.log(-jnp.log(u))
  hi, lo = words[0], words[1]
  u = (hi.astype(jnp.float32) + lo.astype(jnp.float32) * 2.0**-32) * 2.0**-32
  one_minus_u = ((~hi).astype(jnp.float32) + ((~lo).astype(jnp.float32) + 1.0) * 2.0**-32) * 2.0**-32
  e = jnp.where(hi < jnp.uint32(2**31), -jnp.log1p(-u), -jnp.log(one_minus_u))
  return -jnp.log(e)


def _search(cum: jax.Array, x: jax.Array, mass: jax.Array) -> jax.Array:
  """The bin of x in the partition of [0, cum[-1]) by `cum` [..., n] (x [...]): #{cum <= x},
  clamped to the last bin with positive mass (x can round up to cum[-1])."""
  n = cum.shape[-1]
  idx = jnp.sum(cum <= x[..., None], axis=-1)
  last = n - 1 - jnp.argmax(jnp.flip(mass > 0, axis=-1), axis=-1)
  return jnp.minimum(idx, last)


def inverse_cdf_words(key: jax.Array, rows) -> jax.Array:
  """The uint32 words [2, *rows] one `inverse_cdf` draw over rows `rows` consumes; a slice of
  them along a row axis draws that slice of the rows (chunked losses, diffusion/chunks.py)."""
  return rng.bits(key, (2, *rows), jnp.uint32, row_axis=1)


def inverse_cdf(key: jax.Array, log_probs: jax.Array, block: int = ICDF_BLOCK) -> jax.Array:
  """One draw per row of `log_probs` [..., V] by a two-level inverse CDF -> int32 [...]:
  `inverse_cdf_from_words(inverse_cdf_words(key, rows), log_probs)`.

  p = exp(log_probs - max) in float32, padded with zeros to blocks of `block` classes; the
  block j is drawn with u1 * sum(p) against the cumulative block masses, then the class inside
  it with u2 * mass_j against the cumulative masses within the block (u1, u2 independent
  24-bit uniforms). P(class) = mass_j / sum(p) * p_class / mass_j exactly in exact arithmetic;
  in float32 a block's probability is accurate to ~1e-7 of the total and a class's within its
  block to ~1e-7 relative. Classes with zero probability (log-prob -inf) are never drawn.
  Cost: one pass over [..., V] and a [..., block] gather, 2 random words per row.
  """
  return inverse_cdf_from_words(inverse_cdf_words(key, log_probs.shape[:-1]), log_probs, block)


def inverse_cdf_from_words(words: jax.Array, log_probs: jax.Array,
                           block: int = ICDF_BLOCK) -> jax.Array:
  """`inverse_cdf` with its random words [2, ...] given."""
  lp = log_probs.astype(jnp.float32)
  *rows, V = lp.shape
  nb = -(-V // block)
  p = jnp.exp(lp - jnp.max(lp, axis=-1, keepdims=True))
  p = jnp.pad(p, [(0, 0)] * len(rows) + [(0, nb * block - V)]).reshape(*rows, nb, block)
  mass = p.sum(-1)  # [..., nb]
  cum = jnp.cumsum(mass, axis=-1)
  u1, u2 = ((words >> 8).astype(jnp.float32) * 2.0**-24)  # [0, 1) on a 2^-24 grid
  j = _search(cum, u1 * cum[..., -1], mass)
  inner = jnp.take_along_axis(p, j[..., None, None], axis=-2)[..., 0, :]  # [..., block]
  m_j = jnp.take_along_axis(mass, j[..., None], axis=-1)[..., 0]
  i = _search(jnp.cumsum(inner, axis=-1), u2 * m_j, inner)
  return (j * block + i).astype(jnp.int32)


def sample_categorical(key: jax.Array, log_probs: jax.Array, precision: str = "float64") -> jax.Array:
  """One draw per row of `log_probs` [..., V] (unnormalised is fine; -inf/-1e6 allowed) -> int32.
  `precision` one of DRAWS: a Gumbel-max draw, or "inverse_cdf" (see inverse_cdf)."""
  if precision == "inverse_cdf":
    return inverse_cdf(key, log_probs)
  if precision == "float64" and not jax.config.jax_enable_x64:
    raise RuntimeError("precision='float64' needs x64 mode: trace the sampler inside "
                       "idlm_jax.diffusion.categorical.x64_scope('float64')")
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  logits = log_probs.astype(dtype)
  g = gumbel_from_bits(random_words(key, logits.shape, precision), precision).astype(dtype)
  scores = jnp.where(jnp.isneginf(logits), -jnp.inf, logits + g)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)
