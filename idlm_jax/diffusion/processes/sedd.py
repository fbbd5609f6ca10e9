"""SEDD (Lou et al. 2024): score entropy on the absorbing or uniform graph (reference/
teachers.md §3), and IDLM's pieces for absorbing SEDD (reference/idlm.md §2.5, App. A)."""

import functools

import jax
import jax.numpy as jnp

from idlm_jax import rng
from idlm_jax.diffusion import mdlm, relax, sedd, uniform
from idlm_jax.diffusion.processes.base import InverseParts, Process, valid_weights
from idlm_jax.diffusion.processes.chunked import LogitMaps, hard_renoise
from idlm_jax.diffusion.processes.mdlm import MDLM, _tokens_masked
from idlm_jax.diffusion.schedules import get_schedule, sample_t


def soft_score_entropy(log_s: jax.Array, G: jax.Array, r_t: jax.Array, masked: jax.Array,
                       mask_id: int) -> jax.Array:
  """Absorbing score entropy at masked positions with soft x0 = G [B, L].

  sum_{y != mask} [s_y - r G_y log s_y + r G_y (log(r G_y) - 1)], r = 1/expm1(sigma): the
  target ratio p_t(y | G) / p_t(mask | G) = r G_y is linear in x0, so this is the expected
  score entropy under x0 ~ Cat(G) (sedd.score_entropy for one-hot G). >= 0; 0 at unmasked.
  """
  log_s = log_s.astype(jnp.float32)
  not_mask = jnp.arange(log_s.shape[-1]) != mask_id
  rho = r_t[:, None, None] * G.astype(jnp.float32)
  terms = jnp.exp(log_s) - rho * log_s + jax.scipy.special.xlogy(rho, rho) - rho
  return masked * jnp.sum(jnp.where(not_mask, terms, 0.0), axis=-1)


class SEDD(Process):
  """Score-entropy discrete diffusion with the log-linear total noise sigma(t) = -log alpha_t;
  the network outputs raw log-scores (parameterization "score", time-conditioned)."""

  name = "sedd"
  graphs = ("absorbing", "uniform")
  parameterization = "score"
  time_conditioned = True
  samplers = ("analytic", "euler")

  @classmethod
  def from_config(cls, config, *, vocab_size: int, mask_id: int) -> "SEDD":
    f = config.diffusion
    return cls(get_schedule(f.schedule, f.eps), mask_id=mask_id, vocab_size=vocab_size,
               graph=f.process, antithetic=f.antithetic, loss_chunk=config.model.loss_chunk)

  def q_xt(self, key, x0, t):
    alpha = self.schedule.alpha(t)
    if self.graph == "absorbing":
      return mdlm.q_xt(key, x0, alpha, self.mask_id)
    return uniform.q_xt(key, x0, alpha, self.vocab_size)

  def loss_sums(self, model, batch, key, *, train, step=None):
    """SEDD's score-entropy bound: sum of sigma'(t) * score entropy per token (teachers.md §3):
    t ~ U(eps, 1) (antithetic optional), x_t with alpha_t = e^-sigma(t), the network
    conditioned on sigma(t), output through `sedd.log_score`."""
    del step
    s = self.schedule
    x0 = batch["input_ids"]
    valid = valid_weights(batch)
    k_t, k_x, k_drop = rng.split(key, 3)
    t = sample_t(k_t, x0.shape[0], s.eps, self.antithetic)
    sigma = s.sigma(t)
    dsigma = -s.dalpha(t) / s.alpha(t)  # d sigma/dt = (1-eps)/(1-(1-eps)t)
    if self.graph == "absorbing":
      xt = mdlm.q_xt(k_x, x0, s.alpha(t), self.mask_id)
    else:
      xt = uniform.q_xt(k_x, x0, s.alpha(t), model.vocab_size)
    raw = model(xt, sigma, dropout_key=k_drop if train else None)
    log_s = sedd.log_score(raw, xt, sigma, self.graph)
    ent = sedd.score_entropy(log_s, sigma, xt, x0, graph=self.graph, mask_id=self.mask_id)
    return {"nelbo_sum": (dsigma[:, None] * ent * valid).sum(), "tokens": valid.sum()}

  def log_score_fn(self, model):
    s = self.schedule
    return lambda x, t: sedd.log_score(model(x, s.sigma(t)), x, s.sigma(t), self.graph)

  def inverse_parts(self, draw: str = "inverse_cdf", student_grid: int = 0,
                    **unused) -> InverseParts:
    """IDLM-SEDD (absorbing, the paper's): the student's G from the score network's
    masked-position ratios; the same hard x_t2 as MDLM (alpha_t = e^-sigma_t); the IDLM gap
    of score entropies weighted by sigma'(t). `student_grid`: the student's input times
    (schedules.student_t)."""
    del unused
    if self.graph != "absorbing":
      raise ValueError("idlm: SEDD teachers must be absorbing (the paper's IDLM-SEDD); got "
                       f"diffusion.process={self.graph!r}")
    mask_id = self.mask_id
    # the student's input and the re-noising are MDLM's (alpha_t = e^-sigma_t)
    mdlm_proc = MDLM(self.schedule, mask_id=mask_id, vocab_size=self.vocab_size)
    base = mdlm_proc.inverse_parts(draw=draw)
    student_input = functools.partial(mdlm_proc.student_input, grid=student_grid)

    def student_of(logits, xt, sigma):
      log_s = sedd.log_score(logits, xt, sigma, "absorbing")
      # p(x0 = y | x_t = mask) is proportional to s_y (y != mask): a SUBS distribution
      return relax.simplex(mdlm.subs_log_probs(log_s, xt, mask_id))

    def student(model, batch, key, dropout_key):
      xt, sigma = student_input(batch, key)
      return student_of(model(xt, sigma, dropout_key=dropout_key), xt, sigma)

    def output_of(logits, r):
      return sedd.log_score(logits, r.tokens, r.sigma, "absorbing")

    def output(model, r):
      return output_of(model(r.net_in, r.sigma), r)

    def weights(r):
      alpha = jnp.exp(-r.sigma)
      dsigma = r.weight * (1.0 - alpha) / alpha  # sigma' = -a'/a = lambda (1 - a)/a
      return dsigma, 1.0 / sedd.expm1_sigma(r.sigma)

    def fake_loss(log_s, r, G):
      dsigma, r_t = weights(r)
      ent = soft_score_entropy(log_s, G, r_t, _tokens_masked(r, mask_id), mask_id)
      return dsigma[:, None] * ent

    def inverse_loss(log_teacher, log_fake, r, G):
      dsigma, r_t = weights(r)
      not_mask = jnp.arange(log_fake.shape[-1]) != mask_id
      pos = lambda ls: jnp.sum(jnp.where(not_mask, jnp.exp(ls.astype(jnp.float32)), 0.0), -1)
      total = _tokens_masked(r, mask_id) * (pos(log_teacher) - pos(log_fake))
      linear = relax.mdlm_inverse_token_loss(G, log_teacher, log_fake, r.tokens, dsigma * r_t,
                                             mask_id)
      return dsigma[:, None] * jax.lax.stop_gradient(total) + linear

    chunked = None
    if self.loss_chunk > 0:
      if draw != "inverse_cdf":
        raise ValueError(f"the chunked IDLM-SEDD loss needs draw 'inverse_cdf', got {draw!r}")
      chunked = hard_renoise(LogitMaps(student_of, output_of), fake_loss, inverse_loss,
                             student_input, mdlm_proc.renoise_time, mask_id, self.loss_chunk)
    return InverseParts(student, base.renoise, output, fake_loss, inverse_loss, chunked)
