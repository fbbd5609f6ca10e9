"""MDLM: absorbing forward process, SUBS parameterization and the continuous-time NELBO.

Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models"; see
reference/teachers.md §1.1-1.3.
"""

import jax
import jax.numpy as jnp

from idlm_jax import rng

NEG_INF = -1e6  # the large negative logit MDLM uses for "impossible" (SUBS)


def q_xt(key: jax.Array, x0: jax.Array, alpha_t: jax.Array, mask_id: int) -> jax.Array:
  """Absorbing forward process: each token becomes [MASK] with probability 1 - alpha_t."""
  move = rng.uniform(key, x0.shape) < (1.0 - alpha_t)[:, None]
  return jnp.where(move, mask_id, x0)


def subs_log_probs(logits: jax.Array, xt: jax.Array, mask_id: int) -> jax.Array:
  """SUBS log p_theta(x0 | x_t) [B, L, V] in float32.

  Zero masking probability (the [MASK] logit is removed), then carry-over unmasking: at an
  unmasked position the row is the exact one-hot of x_t (log-prob 0 there, NEG_INF elsewhere).
  """
  logits = logits.astype(jnp.float32)
  vocab = jnp.arange(logits.shape[-1])
  logits = jnp.where(vocab == mask_id, NEG_INF, logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  copy = jnp.where(vocab == xt[..., None], 0.0, NEG_INF)
  return jnp.where((xt != mask_id)[..., None], copy, log_probs)


def subs_log_prob_of(logits: jax.Array, xt: jax.Array, x0: jax.Array, mask_id: int) -> jax.Array:
  """log p_theta(x0 | x_t) at the data tokens only [B, L], without materialising log-probs.

  Equal to `take(subs_log_probs(logits, xt), x0)` wherever x0 != mask_id; 0 at unmasked positions.
  """
  logits = logits.astype(jnp.float32)
  vocab = jnp.arange(logits.shape[-1])
  lse = jax.nn.logsumexp(jnp.where(vocab == mask_id, -jnp.inf, logits), axis=-1)
  picked = jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0]
  return jnp.where(xt == mask_id, picked - lse, 0.0)


def nelbo_weight(alpha_t: jax.Array, dalpha_t: jax.Array) -> jax.Array:
  """-alpha'_t / (1 - alpha_t) >= 0, the continuous-time NELBO weight (1/t for log-linear)."""
  return -dalpha_t / (1.0 - alpha_t)


def nelbo_per_token(log_p_x0: jax.Array, alpha_t: jax.Array, dalpha_t: jax.Array) -> jax.Array:
  """Per-token NELBO -alpha'_t/(1-alpha_t) * log p_theta(x0 | x_t) [B, L] (MDLM eq. 10).

  `log_p_x0` is 0 at unmasked positions under SUBS, so only masked tokens contribute.
  """
  return -nelbo_weight(alpha_t, dalpha_t)[:, None] * log_p_x0


def masked_posterior_logits(log_x0: jax.Array, alpha_t, alpha_s, mask_id: int, dtype) -> jax.Array:
  """log q(z_s | z_t = [MASK], x_theta): (a_s-a_t)/(1-a_t) x_theta[v], mask (1-a_s)/(1-a_t).

  MDLM §2.1 (reference/teachers.md §2.1), unnormalised (Gumbel-max is scale invariant).
  """
  log_x0 = log_x0.astype(dtype)
  unmask = jnp.log(jnp.asarray(alpha_s - alpha_t, dtype))
  stay = jnp.log(jnp.asarray(1.0 - alpha_s, dtype))
  vocab = jnp.arange(log_x0.shape[-1])
  return jnp.where(vocab == mask_id, stay, log_x0 + unmask)
