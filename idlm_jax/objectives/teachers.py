"""Teacher losses other than MDLM for the "diffusion" objective (issue #3): SEDD, UDLM, Duo.

Each `*_sums(model, batch, key, train=...)` returns the additive validation statistics
{"nelbo_sum", "tokens"} of `objectives.diffusion` (sums over valid, non-pad tokens of rows
with nonzero `weight`), so training (sum / tokens) and validation (exp of the split total)
share one interface. The maths is in idlm_jax/diffusion/{sedd,uniform,duo_integral}.py.
"""

import jax
import jax.numpy as jnp

from idlm_jax.diffusion import mdlm, sedd, uniform
from idlm_jax.diffusion.schedules import sample_t


def valid_weights(batch) -> jax.Array:
  """[B, L] float32: 1 at real (non-pad) tokens of rows with nonzero `weight` (eval padding)."""
  valid = batch["attention_mask"].astype(jnp.float32)
  if "weight" in batch:
    valid = valid * batch["weight"][:, None]
  return valid


def sedd_sums(model, batch: dict, key: jax.Array, *, schedule, graph: str, mask_id: int,
              antithetic: bool, train: bool) -> dict:
  """SEDD's score-entropy bound: sum of sigma'(t) * score entropy per token (teachers.md §3).

  t ~ U(eps, 1) (antithetic optional), x_t from the absorbing or uniform graph with
  alpha_t = e^-sigma(t), network conditioned on sigma(t), output through `sedd.log_score`.
  """
  x0 = batch["input_ids"]
  valid = valid_weights(batch)
  k_t, k_x, k_drop = jax.random.split(key, 3)
  t = sample_t(k_t, x0.shape[0], schedule.eps, antithetic)
  sigma = schedule.sigma(t)
  dsigma = -schedule.dalpha(t) / schedule.alpha(t)  # d sigma/dt = (1-eps)/(1-(1-eps)t)
  if graph == "absorbing":
    xt = mdlm.q_xt(k_x, x0, schedule.alpha(t), mask_id)
  else:
    xt = uniform.q_xt(k_x, x0, schedule.alpha(t), model.vocab_size)
  raw = model(xt, sigma, dropout_key=k_drop if train else None)
  log_s = sedd.log_score(raw, xt, sigma, graph)
  ent = sedd.score_entropy(log_s, sigma, xt, x0, graph=graph, mask_id=mask_id)
  return {"nelbo_sum": (dsigma[:, None] * ent * valid).sum(), "tokens": valid.sum()}


def udlm_sums(model, batch: dict, key: jax.Array, *, schedule, antithetic: bool,
              train: bool) -> dict:
  """UDLM's closed-form continuous-time NELBO (teachers.md §4.2): every position contributes."""
  x0 = batch["input_ids"]
  valid = valid_weights(batch)
  k_t, k_x, k_drop = jax.random.split(key, 3)
  t = sample_t(k_t, x0.shape[0], schedule.eps, antithetic)
  alpha, dalpha = schedule.alpha(t), schedule.dalpha(t)
  zt = uniform.q_xt(k_x, x0, alpha, model.vocab_size)
  logits = model(zt, schedule.sigma(t), dropout_key=k_drop if train else None)
  nelbo = uniform.nelbo_per_token(jax.nn.log_softmax(logits, -1), zt, x0, alpha, dalpha)
  return {"nelbo_sum": (nelbo * valid).sum(), "tokens": valid.sum()}


def duo_curriculum_sums(model, batch: dict, key: jax.Array, *, transform, eps: float, tau: float,
                        antithetic: bool, train: bool) -> dict:
  """Duo's Gaussian-guided curriculum loss (teachers.md §4.3).

  gamma_t linear in t; w_t = alpha~ onehot(x) + sigma~ eps; the network sees the probability
  vectors softmax(w_t / tau) (expected embedding) and sigma = -log alpha_t; the UDLM NELBO is
  taken at z_t = argmax w_t with the discrete alpha_t = T(alpha~_t) and its t-derivative.
  """
  x0 = batch["input_ids"]
  valid = valid_weights(batch)
  k_t, k_w, k_drop = jax.random.split(key, 3)
  t = sample_t(k_t, x0.shape[0], eps, antithetic)
  w = uniform.gaussian_latent(k_w, x0, transform.gamma(t), transform.vocab_size)
  zt = jnp.argmax(w, axis=-1).astype(x0.dtype)
  alpha, dalpha = transform.alpha(t), transform.dalpha(t)
  logits = model(uniform.relaxed_input(w, tau), -jnp.log(alpha),
                 dropout_key=k_drop if train else None)
  nelbo = uniform.nelbo_per_token(jax.nn.log_softmax(logits, -1), zt, x0, alpha, dalpha)
  return {"nelbo_sum": (nelbo * valid).sum(), "tokens": valid.sum()}
