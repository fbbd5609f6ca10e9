"""MDLM (Sahoo et al. 2024): absorbing forward process, SUBS network, continuous-time NELBO
(reference/teachers.md §1.1-1.3), and its IDLM pieces (reference/idlm.md §2.2, §3.4)."""

import functools

import jax
import jax.numpy as jnp

from idlm_jax import rng
from idlm_jax.diffusion import categorical, chunks, mdlm, relax, sedd
from idlm_jax.diffusion.processes.base import (ChunkedInverse, InverseParts, Process, Renoised,
                                               valid_weights)
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

  def __init__(self, schedule, *, mask_id: int, vocab_size: int, antithetic: bool = True,
               loss_chunk: int = 0):
    super().__init__(schedule, mask_id=mask_id, vocab_size=vocab_size, antithetic=antithetic)
    self.loss_chunk = loss_chunk

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
    logits = model(xt, sigma, dropout_key=dropout_key)
    return relax.simplex(mdlm.subs_log_probs(logits, xt, self.mask_id))

  def inverse_parts(self, relaxation: str = "simplex", relax_tau: float = 0.1,
                    draw: str = "inverse_cdf", student_grid: int = 0,
                    **unused) -> InverseParts:
    """SUBS student; x_t2 ~ Cat(a G + (1 - a) e_mask), hard ("simplex", the paper: gradient
    only through the loss weights, relax.mdlm_inverse_token_loss) or relaxed ("gumbel",
    "straight_through": pathwise ablations); NELBO weight lambda_t = -a'/(1 - a). `draw`: the
    hard x_t's categorical draw (distill.train_draw); `student_grid`: the student's input
    times (schedules.student_t)."""
    del unused
    schedule, mask_id = self.schedule, self.mask_id

    def renoise_time(key, n):
      k_t, k_x = rng.split(key)
      t = sample_t(k_t, n, schedule.eps, True)
      alpha = schedule.alpha(t)
      return k_x, t, alpha, mdlm.nelbo_weight(alpha, schedule.dalpha(t))

    def renoise(G, key):
      k_x, t, alpha, weight = renoise_time(key, G.shape[0])
      if relaxation == "simplex":
        xt = relax.mdlm_hard_sample(k_x, G, alpha, mask_id, draw)
        return Renoised(xt, xt, schedule.sigma(t), weight)
      log_q = relax.mdlm_q_log_probs(G, alpha, mask_id)
      if relaxation == "gumbel":
        soft = relax.gumbel_softmax(k_x, log_q, relax_tau)
      else:
        soft = relax.straight_through(k_x, log_q, draw)
      tokens = jnp.argmax(jax.lax.stop_gradient(soft), axis=-1).astype(jnp.int32)
      return Renoised(soft, tokens, schedule.sigma(t), weight)

    def output(model, r):
      return mdlm.subs_log_probs(model(r.net_in, r.sigma), r.tokens, mask_id)

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
      chunked = self._chunked_inverse(renoise_time, student_grid)
    return InverseParts(student, renoise, output, fake_loss, inverse_loss, chunked)

  def _chunked_inverse(self, renoise_time, student_grid: int) -> ChunkedInverse:
    """IDLM-MDLM ("simplex", inverse-CDF draws) over chunks of `loss_chunk` positions: the
    same values as the pieces above (ChunkedInverse), no [B, L, V] tensor beyond a chunk.
    The student's G is computed twice per loss (the draw of x_t2 needs all of it before the
    teacher and fake run): one extra output projection of the student, 2 B L d V FLOPs."""
    schedule, mask_id, chunk = self.schedule, self.mask_id, self.loss_chunk

    def student(features, batch, key, dropout_key):
      xt, sigma = self.student_input(batch, key, student_grid)
      return xt, features(xt, sigma, dropout_key)

    def G_of(project, params, h, xt):  # the student's soft x0 on a chunk [B, c, V]
      return relax.simplex(mdlm.subs_log_probs(project(params, h), xt, mask_id))

    def renoise(head, xt, h, key):
      k_x, t, alpha, weight = renoise_time(key, xt.shape[0])
      words = jnp.moveaxis(categorical.inverse_cdf_words(k_x, xt.shape), 0, -1)  # [B, L, 2]

      def draw(pp, params):
        h_c, xt_c, words_c = pp
        log_q = relax.mdlm_q_log_probs(G_of(head[0], params, h_c, xt_c), alpha, mask_id)
        return categorical.inverse_cdf_from_words(jnp.moveaxis(words_c, -1, 0), log_q)

      x2 = chunks.chunk_map(draw, jax.lax.stop_gradient((h, xt, words)),
                            jax.lax.stop_gradient(head[1]), chunk)
      return Renoised(x2, x2, schedule.sigma(t), weight)

    def fake_loss(s_head, xt, h, f_head, h_fake, r, weights):
      s_project, f_project = s_head[0], f_head[0]  # fn may close over functions, not arrays

      def fn(f_params, h_f, pp, shared):
        h_s, xt_c, x2, w = pp
        G = G_of(s_project, shared[0], h_s, xt_c)
        log_f = mdlm.subs_log_probs(f_project(f_params, h_f), x2, mask_id)
        masked = (x2 == mask_id).astype(jnp.float32)
        return jnp.sum(w * relax.soft_label_nll(log_f, G, shared[1][:, None] * masked))

      pp = jax.lax.stop_gradient((h, xt, r.tokens, weights))
      shared = jax.lax.stop_gradient((s_head[1], r.weight))
      return chunks.chunk_sum(fn, f_head[1], h_fake, pp, shared, chunk)

    def inverse_loss(s_head, xt, h, t_head, h_teacher, f_head, h_fake, r, weights):
      s_project, t_project, f_project = s_head[0], t_head[0], f_head[0]

      def fn(s_params, h_s, pp, shared):
        xt_c, h_t, h_f, x2, w = pp
        t_params, f_params, weight = shared
        log_t = mdlm.subs_log_probs(t_project(t_params, h_t), x2, mask_id)
        log_f = mdlm.subs_log_probs(f_project(f_params, h_f), x2, mask_id)
        G = G_of(s_project, s_params, h_s, xt_c)
        return jnp.sum(w * relax.mdlm_inverse_token_loss(G, log_t, log_f, x2, weight, mask_id))

      pp = jax.lax.stop_gradient((xt, h_teacher, h_fake, r.tokens, weights))
      shared = jax.lax.stop_gradient((t_head[1], f_head[1], r.weight))
      return chunks.chunk_sum(fn, s_head[1], h, pp, shared, chunk)

    return ChunkedInverse(student, renoise, fake_loss, inverse_loss)
