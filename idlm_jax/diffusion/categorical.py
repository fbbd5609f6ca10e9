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
"""

import contextlib

import jax
import jax.numpy as jnp

PRECISIONS = ("float64", "exact32", "float32")
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
  return jax.random.bits(key, (_WORDS[precision], *shape), jnp.uint32)


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


def sample_categorical(key: jax.Array, log_probs: jax.Array, precision: str = "float64") -> jax.Array:
  """One draw per row of `log_probs` [..., V] (unnormalised is fine; -inf/-1e6 allowed) -> int32."""
  if precision == "float64" and not jax.config.jax_enable_x64:
    raise RuntimeError("precision='float64' needs x64 mode: trace the sampler inside "
                       "idlm_jax.diffusion.categorical.x64_scope('float64')")
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  logits = log_probs.astype(dtype)
  g = gumbel_from_bits(random_words(key, logits.shape, precision), precision).astype(dtype)
  scores = jnp.where(jnp.isneginf(logits), -jnp.inf, logits + g)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)
