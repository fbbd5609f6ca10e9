"""SEDD: score entropy on the absorbing and uniform graphs (Lou et al. 2024; teachers.md §3).

The network outputs a log-score log s_theta(x_t)_y ~ log p_t(y) / p_t(x_t) for every position
and token y (the ratio for changing that one position to y). The forward rate matrix is
sigma'(t) Q with total noise sigma(t) = -log alpha_t (log-linear: the MDLM schedule):
  absorbing: Q moves a token to [MASK] at rate 1, p(x_t = mask) = 1 - e^-sigma;
  uniform:   Q moves a token to each other token at rate 1/K, so x_t is x_0 with probability
             e^-sigma + (1 - e^-sigma)/K and each other token with (1 - e^-sigma)/K.
All functions are pure and work on the last axis [..., V]; `mask_id` is the absorbing state.
"""

import jax
import jax.numpy as jnp

GRAPHS = ("absorbing", "uniform")


def expm1_sigma(sigma: jax.Array) -> jax.Array:
  """e^sigma - 1, accurate for small sigma (SEDD's where(sigma < 0.5, expm1, exp - 1))."""
  return jnp.expm1(sigma)


# ------------------------------------------------------------------ network output


def log_score(raw: jax.Array, xt: jax.Array, sigma: jax.Array, graph: str) -> jax.Array:
  """SEDD.forward's output transform: float32 log-score [B, L, V] from raw network output.

  absorbing (scale_by_sigma): raw - log(expm1(sigma)) - log(V - 1); both graphs: 0 at x_t.
  """
  raw = raw.astype(jnp.float32)
  if graph == "absorbing":
    v = raw.shape[-1]
    raw = raw - jnp.log(expm1_sigma(sigma))[:, None, None] - jnp.log(v - 1.0)
  vocab = jnp.arange(raw.shape[-1])
  return jnp.where(vocab == xt[..., None], 0.0, raw)


def mdlm_log_score(log_x0: jax.Array, xt: jax.Array, sigma: jax.Array, mask_id: int) -> jax.Array:
  """MDLM `get_score`: the absorbing-graph log-score of a SUBS model (teachers.md §2.3 item 1).

  masked x_t: log x_theta[y] + log k for y != mask, 0 at mask, with k = 1/expm1(sigma);
  unmasked x_t: 0 at y = x_t, -log k at mask, -inf elsewhere.
  """
  log_k = -jnp.log(expm1_sigma(sigma.astype(log_x0.dtype)))[:, None, None]
  vocab = jnp.arange(log_x0.shape[-1])
  masked = jnp.where(vocab == mask_id, 0.0, log_x0 + log_k)
  unmasked = jnp.where(vocab == xt[..., None], 0.0,
                       jnp.where(vocab == mask_id, -log_k, -jnp.inf))
  return jnp.where((xt == mask_id)[..., None], masked, unmasked)


# ------------------------------------------------------------------ score entropy


def score_entropy(log_s: jax.Array, sigma: jax.Array, xt: jax.Array, x0: jax.Array, *,
                  graph: str, mask_id: int = -1) -> jax.Array:
  """Denoising score entropy per position [B, L] (graph_lib `score_entropy`), >= 0.

  sum_{y != x_t} w(x_t, y) [s_y - rho_y log s_y + rho_y (log rho_y - 1)], with w the forward
  rate into x_t and rho_y = p_t(y | x_0) / p_t(x_t | x_0). Absorbing: only masked positions
  count, w = 1 and rho = 1[y = x_0] / expm1(sigma). Uniform: w = 1/K, every position counts.
  The training loss weights it by d sigma / dt.
  """
  log_s = log_s.astype(jnp.float32)
  esm1 = expm1_sigma(sigma)[:, None]
  s_x0 = jnp.take_along_axis(log_s, x0[..., None], axis=-1)[..., 0]
  if graph == "absorbing":
    vocab = jnp.arange(log_s.shape[-1])
    r = 1.0 / esm1
    pos = jnp.sum(jnp.where(vocab == mask_id, 0.0, jnp.exp(log_s)), axis=-1)
    ent = pos - r * s_x0 + r * (jnp.log(r) - 1.0)
    return jnp.where(xt == mask_id, ent, 0.0)
  if graph == "uniform":
    k = log_s.shape[-1]
    s_xt = jnp.take_along_axis(log_s, xt[..., None], axis=-1)[..., 0]
    ratio = esm1 / (esm1 + k)  # rho_y (y != x_t) when x_t = x_0: (1-a)/(Ka + 1-a)
    mean_other = (jnp.sum(log_s, -1) - s_xt) / k  # (1/K) sum_{y != x_t} log s_y
    same = x0 == xt
    # x_t != x_0: rho = 1 except rho_{x_0} = 1 + K/expm1(sigma)
    neg = jnp.where(same, ratio * mean_other, mean_other + s_x0 / esm1)
    rho0 = 1.0 + k / esm1
    const = jnp.where(same, (k - 1.0) / k * ratio * (jnp.log(ratio) - 1.0),
                      ((k - 2.0) * -1.0 + rho0 * (jnp.log(rho0) - 1.0)) / k)
    pos = (jnp.sum(jnp.exp(log_s), -1) - jnp.exp(s_xt)) / k
    return pos - neg + const
  raise ValueError(f"diffusion.process: unknown SEDD graph {graph!r} (known: {GRAPHS})")


# ------------------------------------------------------------------ reverse-step pieces


def staggered_score(score: jax.Array, dsigma: jax.Array, graph: str, mask_id: int = -1):
  """graph_lib `staggered_score` (scores, not log-scores) for the step of size dsigma [B]."""
  d = dsigma[:, None, None]
  if graph == "absorbing":
    vocab = jnp.arange(score.shape[-1])
    extra = (1.0 - jnp.exp(d)) * jnp.sum(score, -1, keepdims=True)
    return score * jnp.exp(d) + jnp.where(vocab == mask_id, extra, 0.0)
  k = score.shape[-1]
  epow = jnp.exp(-d)
  return (epow - 1.0) / (k * epow) * jnp.sum(score, -1, keepdims=True) + score / epow


def transp_transition(xt: jax.Array, sigma: jax.Array, vocab_size: int, graph: str,
                      mask_id: int = -1, dtype=jnp.float32) -> jax.Array:
  """Row x_t of exp(sigma Q)^T: p(x_t | x_s = y) over y [B, L, V] (graph_lib)."""
  s = sigma.astype(dtype)[:, None, None]
  onehot = (jnp.arange(vocab_size) == xt[..., None]).astype(dtype)
  if graph == "absorbing":
    return jnp.exp(-s) * onehot + jnp.where((xt == mask_id)[..., None], 1.0 - jnp.exp(-s), 0.0)
  off = (1.0 - jnp.exp(-s)) / vocab_size
  return off * (1.0 - onehot) + (1.0 - off * (vocab_size - 1)) * onehot


def reverse_rate(xt: jax.Array, score: jax.Array, graph: str, mask_id: int = -1):
  """graph_lib `reverse_rate`: Q[x_t, y] s_y off the diagonal, minus their sum at x_t."""
  vocab = jnp.arange(score.shape[-1])
  onehot = vocab == xt[..., None]
  if graph == "absorbing":
    rate_in = jnp.where((xt == mask_id)[..., None], 1.0, 0.0) * jnp.ones_like(score)
  else:
    rate_in = jnp.full_like(score, 1.0 / score.shape[-1])
  rate = jnp.where(onehot, 0.0, rate_in * score)
  return jnp.where(onehot, -jnp.sum(rate, -1, keepdims=True), rate)
