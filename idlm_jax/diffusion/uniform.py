"""Uniform-state diffusion: UDLM's closed-form NELBO, Duo's curriculum and posterior.

UDLM (Schiff et al. 2024) and Duo (Sahoo et al. 2025, "The Diffusion Duality");
reference/teachers.md §2.4, §4.1-4.3, §8. K is the vocabulary size (every id is a state).
"""

import jax
import jax.numpy as jnp

from idlm_jax import rng


def q_xt(key: jax.Array, x0: jax.Array, alpha_t: jax.Array, vocab_size: int) -> jax.Array:
  """q(z_t | x) = Cat(alpha_t x + (1 - alpha_t)/K): resample uniformly w.p. 1 - alpha_t (§4.1)."""
  k_move, k_tok = rng.split(key)
  move = rng.uniform(k_move, x0.shape) < (1.0 - alpha_t)[:, None]
  return jnp.where(move, rng.randint(k_tok, x0.shape, 0, vocab_size, x0.dtype), x0)


def nelbo_per_token(log_x_theta: jax.Array, zt: jax.Array, x0: jax.Array, alpha_t: jax.Array,
                    dalpha_t: jax.Array) -> jax.Array:
  """UDLM/Duo continuous-time NELBO integrand per position [B, L] (`DUO_BASE.nll_per_token`).

  x_bar_theta = K a x_theta + (1 - a); x_bar at z_t = (1 - a) + K a 1[x = z_t];
  c = (1 - a)/(K a + 1 - a); term1 = K (1/x_bar_zt - 1/x_bar_theta[z_t]);
  term2 = -w (sum_j log x_bar_theta_j - K log x_bar_theta[z_t])
          - K a/(1 - a) (log x_bar_theta[x] - log x_bar_theta[z_t]) 1[x != z_t] + offset,
  w = c if x = z_t else 1, offset = ((K-1) c 1[x = z_t] - 1[x != z_t]/c) log c;
  result a'/(K a) (term1 - term2) >= 0, for every position. Computed in float32.
  """
  log_x_theta = log_x_theta.astype(jnp.float32)
  k = log_x_theta.shape[-1]
  a = alpha_t.astype(jnp.float32)[:, None]
  da = dalpha_t.astype(jnp.float32)[:, None]
  x_bar_theta = k * a[..., None] * jnp.exp(log_x_theta) + (1.0 - a[..., None])
  log_xbt = jnp.log(x_bar_theta)
  xbt_zt = jnp.take_along_axis(x_bar_theta, zt[..., None], -1)[..., 0]
  log_xbt_zt = jnp.log(xbt_zt)
  log_xbt_x = jnp.take_along_axis(log_xbt, x0[..., None], -1)[..., 0]
  same = (x0 == zt).astype(jnp.float32)
  x_bar_zt = (1.0 - a) + k * a * same
  c = (1.0 - a) / (k * a + 1.0 - a)
  term1 = k * (1.0 / x_bar_zt - 1.0 / xbt_zt)
  w = jnp.where(same > 0, c, 1.0)
  offset = ((k - 1.0) * c * same - (1.0 - same) / c) * jnp.log(c)
  term2 = (-w * (jnp.sum(log_xbt, -1) - k * log_xbt_zt)
           - k * a / (1.0 - a) * (log_xbt_x - log_xbt_zt) * (1.0 - same) + offset)
  return da / (k * a) * (term1 - term2)


def nelbo_per_token_soft(log_x_theta: jax.Array, zt: jax.Array, x0_probs: jax.Array,
                         alpha_t: jax.Array, dalpha_t: jax.Array) -> jax.Array:
  """The UDLM/Duo NELBO integrand with a soft clean target x0_probs in the simplex [B, L].

  With x_bar = K a x0 + (1 - a) and x_bar_f = K a x_theta + (1 - a) (idlm.md §3.4):
    a'/(K a) [K/x_bar_z - K/x_bar_f,z
              - sum_v (x_bar_v/x_bar_z)(log x_bar_f,z - log x_bar_f,v + log x_bar_v - log x_bar_z)]
  (the KL + Itakura-Saito form of IDLM's appendix). Equals `nelbo_per_token` for one-hot x0;
  differentiable in x0_probs and log_x_theta (IDLM-Duo's pathwise gradient). float32.
  """
  log_x_theta = log_x_theta.astype(jnp.float32)
  g = x0_probs.astype(jnp.float32)
  k = log_x_theta.shape[-1]
  a = alpha_t.astype(jnp.float32)[:, None, None]
  da = dalpha_t.astype(jnp.float32)[:, None]
  x_bar = k * a * g + (1.0 - a)
  log_xb = jnp.log(x_bar)
  log_xbf = jnp.log(k * a * jnp.exp(log_x_theta) + (1.0 - a))
  take = lambda x: jnp.take_along_axis(x, zt[..., None], -1)[..., 0]
  xb_z, log_xb_z, log_xbf_z = take(x_bar), take(log_xb), take(log_xbf)
  kl = jnp.sum(x_bar * (log_xbf_z[..., None] - log_xbf + log_xb - log_xb_z[..., None]), -1)
  return da / (k * a[..., 0]) * (k / xb_z - k * jnp.exp(-log_xbf_z) - kl / xb_z)


# ------------------------------------------------------------------ Duo curriculum (§4.3)


def gamma_t(t: jax.Array, gamma_min: float, gamma_max: float) -> jax.Array:
  """Linear log-SNR-style schedule gamma_t = gamma_min + t (gamma_max - gamma_min)."""
  return gamma_min + t * (gamma_max - gamma_min)


def gaussian_latent(key: jax.Array, x0: jax.Array, gamma: jax.Array, vocab_size: int):
  """w_t = alpha~ onehot(x) + sigma~ eps [B, L, K], alpha~ = sqrt(sigmoid(-g)),
  sigma~ = sqrt(sigmoid(g)); eps drawn position by position (rng.normal_per_position), so a
  chunk of positions can draw its own slice (processes/chunked.py)."""
  return latent_of(x0, gamma, rng.normal_per_position(key, (*x0.shape, vocab_size)))


def latent_of(x0: jax.Array, gamma: jax.Array, eps: jax.Array) -> jax.Array:
  """w_t = alpha~ onehot(x) + sigma~ eps for given noise eps [B, L, K] (float32)."""
  a = jnp.sqrt(jax.nn.sigmoid(-gamma))[:, None, None]
  s = jnp.sqrt(jax.nn.sigmoid(gamma))[:, None, None]
  onehot = (jnp.arange(eps.shape[-1]) == x0[..., None]).astype(jnp.float32)
  return a * onehot + s * eps


def relaxed_input(w: jax.Array, tau: float) -> jax.Array:
  """The network's soft input softmax(w_t / tau) (probability vectors for the DIT)."""
  return jax.nn.softmax(w / tau, axis=-1)


# ------------------------------------------------------------------ reverse process (§2.4)


def posterior_probs(x_theta: jax.Array, zt: jax.Array, alpha_t, alpha_s) -> jax.Array:
  """q(z_s | z_t, x_theta) [B, L, K] in x_theta's dtype (`DUO_BASE._posterior_from_x0`).

  [a_t K x z_t + (a_t/a_s - a_t) z_t + (a_s - a_t) x + (1 - a_t/a_s)(1 - a_s)/K]
  / [a_t K <x, z_t> + 1 - a_t], i.e. q(z_s | z_t) proportional to
  q(z_t | z_s) (a_s x_theta + (1 - a_s)/K) with x_theta in place of the clean one-hot.
  """
  dtype = x_theta.dtype
  k = x_theta.shape[-1]
  a_t, a_s = jnp.asarray(alpha_t, dtype), jnp.asarray(alpha_s, dtype)
  z = (jnp.arange(k) == zt[..., None]).astype(dtype)
  x_zt = jnp.take_along_axis(x_theta, zt[..., None], -1)
  num = (a_t * k * x_theta * z + (a_t / a_s - a_t) * z + (a_s - a_t) * x_theta
         + (1.0 - a_t / a_s) * (1.0 - a_s) / k)
  return num / (a_t * k * x_zt + 1.0 - a_t)


def top_p_filter(probs: jax.Array, top_p: float) -> jax.Array:
  """Nucleus: keep the smallest set of most likely tokens with mass >= top_p, renormalised."""
  if top_p >= 1.0:
    return probs
  sorted_p = jnp.sort(probs, axis=-1)[..., ::-1]
  before = jnp.cumsum(sorted_p, axis=-1) - sorted_p  # mass strictly above each sorted entry
  threshold = jnp.min(jnp.where(before < top_p, sorted_p, jnp.inf), axis=-1, keepdims=True)
  kept = jnp.where(probs >= threshold, probs, 0.0)
  return kept / jnp.sum(kept, axis=-1, keepdims=True)
