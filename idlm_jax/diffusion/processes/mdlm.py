"""MDLM (Sahoo et al. 2024): absorbing forward process, SUBS network, continuous-time NELBO
(reference/teachers.md §1.1-1.3), and its IDLM pieces (reference/idlm.md §2.2, §3.4)."""

import functools

import jax
import jax.numpy as jnp

from idlm_jax import rng
from idlm_jax.diffusion import chunks, mdlm, relax, sedd
from idlm_jax.diffusion.processes.base import InverseParts, Process, Renoised, valid_weights
from idlm_jax.diffusion.processes.chunked import LogitMaps, hard_renoise
from idlm_jax.diffusion.schedules import get_schedule, sample_t, student_t


def _tokens_masked(r: Renoised, mask_id: int) -> jax.Array:
  return (r.tokens == mask_id).astype(jnp.float32)


class MDLM(Process):
  """Absorbing ([MASK]) process with the SUBS parameterization and the log-linear schedule.

  loss_chunk > 0 (model.loss_chunk): the losses (the teacher's NELBO, IDLM's) take the output
  projection and log-softmax that many positions at a time, their gradients taken chunk by
  chunk in the forward pass (diffusion/chunks.chunk_sum; the model must have features/head).
  """

  name = "mdlm"
  graphs = ("absorbing",)
  parameterization = "subs"
  time_conditioned = None
  samplers = ("ancestral", "analytic", "euler", "r2", "rgas")
  relaxations = ("simplex", "gumbel", "straight_through")

  @classmethod
  def from_config(cls, config, *, vocab_size: int, mask_id: int) -> "MDLM":
    f = config.diffusion
    return cls(get_schedule(f.schedule, f.eps), mask_id=mask_id, vocab_size=vocab_size,
               antithetic=f.antithetic, loss_chunk=config.model.loss_chunk)

  def q_xt(self, key, x0, t):
    return mdlm.q_xt(key, x0, self.schedule.alpha(t), self.mask_id)

  def loss_sums(self, model, batch, key, *, train, step=None):
    """Sum of per-token NELBO over valid tokens and their count, for one batch: t antithetic
    over the batch, x_t from the absorbing process, loss only at masked non-pad positions
    (SUBS gives 0 elsewhere); rows with `weight` 0 (eval padding) count nothing."""
    del step
    s, mask_id = self.schedule, self.mask_id
    x0 = batch["input_ids"]
    valid = valid_weights(batch)
    k_t, k_mask, k_drop = rng.split(key, 3)
    t = sample_t(k_t, x0.shape[0], s.eps, self.antithetic)
    alpha, dalpha = s.alpha(t), s.dalpha(t)
    xt = mdlm.q_xt(k_mask, x0, alpha, mask_id)
    drop = k_drop if train else None
    if self.loss_chunk > 0:
      project, head = model.head()

      def chunk_nelbo(head, h, pp, shared):
        xt_c, x0_c, valid_c = pp
        log_p = mdlm.subs_log_prob_of(project(head, h), xt_c, x0_c, mask_id)
        return jnp.sum(mdlm.nelbo_per_token(log_p, *shared) * valid_c)

      h = model.features(xt, s.sigma(t), dropout_key=drop)
      nelbo_sum = chunks.chunk_sum(chunk_nelbo, head, h, (xt, x0, valid),
                                   jax.lax.stop_gradient((alpha, dalpha)), self.loss_chunk)
    else:
      log_p = mdlm.subs_log_prob_of(model(xt, s.sigma(t), dropout_key=drop), xt, x0, mask_id)
      nelbo_sum = (mdlm.nelbo_per_token(log_p, alpha, dalpha) * valid).sum()
    return {"nelbo_sum": nelbo_sum, "tokens": valid.sum()}

  def log_probs_fn(self, model, dropout_key=None):
    s, mask_id = self.schedule, self.mask_id
    return lambda x, t: mdlm.subs_log_probs(model(x, s.sigma(t), dropout_key=dropout_key), x,
                                            mask_id)

  def log_score_fn(self, model):
    """MDLM through its score conversion (teachers.md §2.3 item 1) for analytic/euler."""
    s, mask_id = self.schedule, self.mask_id

    def fn(x, t):
      sigma = s.sigma(t)
      return sedd.mdlm_log_score(mdlm.subs_log_probs(model(x, sigma), x, mask_id), x, sigma,
                                 mask_id)
    return fn

  # ---------------------------------------------------------------- IDLM (§2.2, §3.4)

  def student_input(self, batch, key, grid: int = 0):
    """(x_t, sigma_t): the student's noised real data, prompt of prompted rows (`prompt_mask`
    1) unmasked; grid: the input times (schedules.student_t)."""
    x0 = batch["input_ids"]
    k_t, k_x = rng.split(key)
    t = student_t(k_t, x0.shape[0], self.schedule.eps, grid)
    xt = self.q_xt(k_x, x0, t)
    if "prompt_mask" in batch:
      xt = jnp.where(batch["prompt_mask"] > 0, x0, xt)
    return xt, self.schedule.sigma(t)

  def student_x0(self, model, batch, key, dropout_key, grid: int = 0):
    """G: the SUBS x_theta of noised real data (one-hot where unmasked) [B, L, V]. Prompted
    rows keep their prompt unmasked (clamped), so G is one-hot there."""
    xt, sigma = self.student_input(batch, key, grid)
    return self._student_of(model(xt, sigma, dropout_key=dropout_key), xt, sigma)

  def _student_of(self, logits, xt, sigma):
    """G from the student's logits at x_t (chunked.LogitMaps.student)."""
    del sigma
    return relax.simplex(mdlm.subs_log_probs(logits, xt, self.mask_id))

  def renoise_time(self, key, n: int):
    """(k_x, alpha, sigma, weight) of IDLM's re-noising at t2 ~ antithetic U[eps, 1] for n rows:
    the key of the draw, alpha_t2, sigma_t2 and the NELBO weight lambda_t2 [n]."""
    s = self.schedule
    k_t, k_x = rng.split(key)
    t = sample_t(k_t, n, s.eps, True)
    alpha = s.alpha(t)
    return k_x, alpha, s.sigma(t), mdlm.nelbo_weight(alpha, s.dalpha(t))

  def inverse_parts(self, relaxation: str = "simplex", relax_tau: float = 0.1,
                    draw: str = "inverse_cdf", student_grid: int = 0,
                    **unused) -> InverseParts:
    """SUBS student; x_t2 ~ Cat(a G + (1 - a) e_mask), hard ("simplex", the paper: gradient
    only through the loss weights, relax.mdlm_inverse_token_loss) or relaxed ("gumbel",
    "straight_through": pathwise ablations); NELBO weight lambda_t = -a'/(1 - a). `draw`: the
    hard x_t's categorical draw (distill.train_draw); `student_grid`: the student's input
    times (schedules.student_t)."""
    del unused
    mask_id = self.mask_id

    def renoise(G, key):
      k_x, alpha, sigma, weight = self.renoise_time(key, G.shape[0])
      if relaxation == "simplex":
        xt = relax.mdlm_hard_sample(k_x, G, alpha, mask_id, draw)
        return Renoised(xt, xt, sigma, weight)
      log_q = relax.mdlm_q_log_probs(G, alpha, mask_id)
      if relaxation == "gumbel":
        soft = relax.gumbel_softmax(k_x, log_q, relax_tau)
      else:
        soft = relax.straight_through(k_x, log_q, draw)
      tokens = jnp.argmax(jax.lax.stop_gradient(soft), axis=-1).astype(jnp.int32)
      return Renoised(soft, tokens, sigma, weight)

    def output_of(logits, r):
      return mdlm.subs_log_probs(logits, r.tokens, mask_id)

    def output(model, r):
      return output_of(model(r.net_in, r.sigma), r)

    def fake_loss(log_f, r, G):
      return relax.soft_label_nll(log_f, G, r.weight[:, None] * _tokens_masked(r, mask_id))

    def inverse_loss(log_teacher, log_fake, r, G):
      if relaxation == "simplex":  # gradient only through the loss weights (custom VJP)
        return relax.mdlm_inverse_token_loss(G, log_teacher, log_fake, r.tokens, r.weight,
                                             mask_id)
      return fake_loss(log_teacher, r, G) - fake_loss(log_fake, r, G)  # pathwise ablations

    student = functools.partial(self.student_x0, grid=student_grid)
    chunked = None
    if self.loss_chunk > 0:
      if relaxation != "simplex" or draw != "inverse_cdf":
        raise ValueError("the chunked IDLM-MDLM loss needs relaxation 'simplex' and draw "
                         f"'inverse_cdf', got {relaxation!r}, {draw!r}")
      chunked = hard_renoise(LogitMaps(self._student_of, output_of), fake_loss, inverse_loss,
                             functools.partial(self.student_input, grid=student_grid),
                             self.renoise_time, mask_id, self.loss_chunk)
    return InverseParts(student, renoise, output, fake_loss, inverse_loss, chunked)
