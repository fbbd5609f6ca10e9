"""IDLM: inverse distillation of a diffusion LM teacher into a few-step student (idlm.md).

  L_IDLM(theta) = L(f*, p_theta) - min_f L(f, p_theta)            (idlm.md §1.1)

L is the teacher's own training loss, f* the frozen teacher, f the fake model fitted to the
student's samples. The student G_theta is a few-step denoiser fed noised REAL data (§3.2): its
output G in the simplex is the soft x0 (§2.1) that is re-noised at an independent time t2 and
scored by teacher and fake. One train step (§3.3): `distill.fake_steps` fake updates (fake
loss L(f, sg G) on fresh batches), then one student update (L(f*, G) - L(f, G) with the fake
frozen); two AdamW optimizers, two EMAs, fp32 master weights.

Each teacher family is a `Process` of pure functions; the relaxations are objectives/relax.py:
  mdlm  SUBS student; hard x_t2 ~ Cat(a G + (1 - a) e_mask); gradient only through the loss
        weights (relax.mdlm_inverse_token_loss); ablations "gumbel", "straight_through" feed
        a relaxed x_t2 to the networks and differentiate through it.
  sedd  absorbing SEDD: student G from the score network's masked-position ratios; the same
        hard x_t2; score entropy with soft target ratios r G (App. A of the paper).
  duo   (and udlm): Gaussian latent of G, low-temperature softmax input to teacher and fake
        with the pathwise gradient (relax.duo_soft_input), hard argmax token for the loss,
        UDLM NELBO with soft x0 (uniform.nelbo_per_token_soft).
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from idlm_jax.diffusion import mdlm, sedd, uniform
from idlm_jax.diffusion.schedules import get_schedule, sample_t
from idlm_jax.objectives import Objective, diffusion, relax, teachers
from idlm_jax.train.state import apply_gradients, make_optimizer



class Renoised(NamedTuple):
  """The student's soft x0 noised at t2, as teacher and fake see it."""

  net_in: jax.Array  # int32 [B, L] tokens, or float [B, L, V] probability vectors
  tokens: jax.Array  # int32 [B, L]: the hard x_t2 the loss is taken at
  sigma: jax.Array  # [B] time conditioning of teacher and fake
  weight: jax.Array  # [B] the loss weight at t2 (lambda_t, sigma' r, ...)
  extra: Any = ()  # per-process values (alpha_t, alpha'_t, sigma'_t)


class Process(NamedTuple):
  """One teacher family. All functions are pure; `model` is a merged NNX module.

  student(model, batch, key, dropout_key) -> G [B, L, V]: the soft x0 of noised real data.
  renoise(G, key) -> Renoised (differentiable in G where the relaxation says so).
  output(model, r) -> [B, L, V]: the network's log-output at r (log-probs or log-scores).
  fake_loss(out, r, G) -> [B, L]: the teacher's training loss with soft target G.
  inverse_loss(out_teacher, out_fake, r, G) -> [B, L]: L(f*, G) - L(f, G) per position.
  """

  student: Callable
  renoise: Callable
  output: Callable
  fake_loss: Callable
  inverse_loss: Callable


def _tokens_masked(r: Renoised, mask_id: int) -> jax.Array:
  return (r.tokens == mask_id).astype(jnp.float32)


# ------------------------------------------------------------------ MDLM (§2.2, §3.4)


def mdlm_process(schedule, mask_id: int, relaxation: str = "simplex",
                 relax_tau: float = 0.1, draw: str = "inverse_cdf") -> Process:
  """MDLM teacher: SUBS student, absorbing re-noising, NELBO weight lambda_t = -a'/(1 - a);
  `draw`: the categorical draw of the hard x_t (distill.train_draw)."""

  def student(model, batch, key, dropout_key):
    x0 = batch["input_ids"]
    k_t, k_x = jax.random.split(key)
    t = sample_t(k_t, x0.shape[0], schedule.eps, True)
    xt = mdlm.q_xt(k_x, x0, schedule.alpha(t), mask_id)
    logits = model(xt, schedule.sigma(t), dropout_key=dropout_key)
    return relax.simplex(mdlm.subs_log_probs(logits, xt, mask_id))  # one-hot where unmasked

  def renoise(G, key):
    k_t, k_x = jax.random.split(key)
    t = sample_t(k_t, G.shape[0], schedule.eps, True)
    alpha = schedule.alpha(t)
    weight = mdlm.nelbo_weight(alpha, schedule.dalpha(t))
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
      return relax.mdlm_inverse_token_loss(G, log_teacher, log_fake, r.tokens, r.weight, mask_id)
    return fake_loss(log_teacher, r, G) - fake_loss(log_fake, r, G)  # pathwise ablations

  return Process(student, renoise, output, fake_loss, inverse_loss)


# ------------------------------------------------------------------ SEDD absorbing (§2.5)


def sedd_soft_score_entropy(log_s: jax.Array, G: jax.Array, r_t: jax.Array, masked: jax.Array,
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


def sedd_process(schedule, mask_id: int) -> Process:
  """SEDD absorbing teacher: the IDLM gap of score entropies, weighted by sigma'(t)."""
  base = mdlm_process(schedule, mask_id)

  def student(model, batch, key, dropout_key):
    x0 = batch["input_ids"]
    k_t, k_x = jax.random.split(key)
    t = sample_t(k_t, x0.shape[0], schedule.eps, True)
    sigma = schedule.sigma(t)
    xt = mdlm.q_xt(k_x, x0, schedule.alpha(t), mask_id)
    log_s = sedd.log_score(model(xt, sigma, dropout_key=dropout_key), xt, sigma, "absorbing")
    # p(x0 = y | x_t = mask) is proportional to s_y (y != mask): a SUBS distribution
    return relax.simplex(mdlm.subs_log_probs(log_s, xt, mask_id))

  def output(model, r):
    return sedd.log_score(model(r.net_in, r.sigma), r.tokens, r.sigma, "absorbing")

  def _weights(r):
    alpha = jnp.exp(-r.sigma)
    dsigma = r.weight * (1.0 - alpha) / alpha  # sigma' = -a'/a = lambda (1 - a)/a
    return dsigma, 1.0 / sedd.expm1_sigma(r.sigma)

  def fake_loss(log_s, r, G):
    dsigma, r_t = _weights(r)
    ent = sedd_soft_score_entropy(log_s, G, r_t, _tokens_masked(r, mask_id), mask_id)
    return dsigma[:, None] * ent

  def inverse_loss(log_teacher, log_fake, r, G):
    dsigma, r_t = _weights(r)
    not_mask = jnp.arange(log_fake.shape[-1]) != mask_id
    pos = lambda ls: jnp.sum(jnp.where(not_mask, jnp.exp(ls.astype(jnp.float32)), 0.0), -1)
    total = _tokens_masked(r, mask_id) * (pos(log_teacher) - pos(log_fake))
    linear = relax.mdlm_inverse_token_loss(G, log_teacher, log_fake, r.tokens, dsigma * r_t,
                                           mask_id)
    return dsigma[:, None] * jax.lax.stop_gradient(total) + linear

  # the same absorbing x_t2 as MDLM (alpha_t = e^-sigma_t), weights converted below
  return Process(student, base.renoise, output, fake_loss, inverse_loss)


# ------------------------------------------------------------------ Duo / UDLM (§2.3, §3.4)


def duo_process(transform, tau: float, stop_path: bool = False, eps: float = 1e-3) -> Process:
  """Uniform-state teacher through Duo's Gaussian latent (gamma_t linear, alpha_t = T(a~))."""
  k = transform.vocab_size

  def student(model, batch, key, dropout_key):
    x0 = batch["input_ids"]
    k_t, k_w = jax.random.split(key)
    t = sample_t(k_t, x0.shape[0], eps, True)
    w = uniform.gaussian_latent(k_w, x0, transform.gamma(t), k)
    logits = model(uniform.relaxed_input(w, tau), -jnp.log(transform.alpha(t)),
                   dropout_key=dropout_key)
    return relax.simplex(logits)  # "mean" parameterization: x_theta over all K states

  def renoise(G, key):
    k_t, k_xi = jax.random.split(key)
    t = sample_t(k_t, G.shape[0], eps, True)
    alpha_tilde = jnp.sqrt(jax.nn.sigmoid(-transform.gamma(t)))
    xi = jax.random.normal(k_xi, G.shape, jnp.float32)
    soft, z = relax.duo_soft_input(G, alpha_tilde, xi, tau, stop_path)
    alpha = transform.alpha(t)
    return Renoised(soft, z, -jnp.log(alpha), alpha, (alpha, transform.dalpha(t)))

  def output(model, r):
    return jax.nn.log_softmax(model(r.net_in, r.sigma).astype(jnp.float32), axis=-1)

  def fake_loss(log_f, r, G):
    alpha, dalpha = r.extra
    return uniform.nelbo_per_token_soft(log_f, r.tokens, G, alpha, dalpha)

  def inverse_loss(log_teacher, log_fake, r, G):  # pathwise through both networks' inputs
    return fake_loss(log_teacher, r, G) - fake_loss(log_fake, r, G)

  return Process(student, renoise, output, fake_loss, inverse_loss)


# ------------------------------------------------------------------ the objective


def get_process(config, mask_id: int) -> Process:
  """The Process of the teacher named by diffusion.algo."""
  f, d = config.diffusion, config.distill
  schedule = get_schedule(f.schedule, f.eps)
  if f.algo == "mdlm":
    return mdlm_process(schedule, mask_id, d.relaxation, d.relax_tau, d.train_draw)
  if f.algo == "sedd":
    if f.process != "absorbing":
      raise ValueError("idlm: SEDD teachers must be absorbing (the paper's IDLM-SEDD); "
                       f"got diffusion.process={f.process!r}")
    return sedd_process(schedule, mask_id)
  from idlm_jax.data import tokenizers
  from idlm_jax.diffusion import duo_integral
  transform = duo_integral.DuoTransform.create(
      tokenizers.get_tokenizer(config.data.tokenizer).model_vocab_size, f.gamma_min,
      f.gamma_max, cache_dir=config.data.cache_dir, num_points=f.duo_table_points)
  return duo_process(transform, f.tau, d.stop_path, f.eps)


def fake_optimizer(config) -> optax.GradientTransformation:
  """The fake model's AdamW: optim.* with lr distill.fake_lr (0 = optim.lr)."""
  o = ml_collections.ConfigDict(config.optim.to_dict())
  if config.distill.fake_lr > 0:
    o.lr = config.distill.fake_lr
  return make_optimizer(o, config.train.steps * config.distill.fake_steps)


def _per_token(per_position: jax.Array, batch: dict):
  """(mean over valid tokens, their count): the loss normalisation of every teacher loss."""
  valid = teachers.valid_weights(batch)
  tokens = valid.sum()
  return (per_position * valid).sum() / jnp.maximum(tokens, 1.0), tokens


def fake_loss(proc: Process, net, fake_params, student_params, batch: dict, key: jax.Array):
  """L(f, sg G): the teacher's loss of the fake model on re-noised student outputs, with the
  student frozen (no dropout) and the fake in train mode. -> (loss, tokens)."""
  k_s, k_r, k_d = jax.random.split(key, 3)
  G = jax.lax.stop_gradient(proc.student(net(student_params), batch, k_s, None))
  r = jax.tree.map(jax.lax.stop_gradient, proc.renoise(G, k_r))
  out = proc.output(_with_dropout(net(fake_params), k_d), r)
  return _per_token(proc.fake_loss(out, r, G), batch)


def inverse_loss(proc: Process, net, student_params, fake_params, teacher_params, batch: dict,
                 key: jax.Array):
  """L(f*, G) - L(f, G) on one batch (student in train mode; teacher and fake frozen: only
  student_params is differentiated). -> (loss, tokens)."""
  k_s, k_r, k_d = jax.random.split(key, 3)
  G = proc.student(net(student_params), batch, k_s, k_d)
  r = proc.renoise(G, k_r)
  out_teacher = proc.output(net(teacher_params), r)
  out_fake = proc.output(net(fake_params), r)
  return _per_token(proc.inverse_loss(out_teacher, out_fake, r, G), batch)


def make_objective(config, graphdef, tx, mask_id: int) -> Objective:
  """Pure IDLM step: `fake_steps` fake updates, then one student update (idlm.md §3.5)."""
  proc = get_process(config, mask_id)
  fake_tx = fake_optimizer(config)
  fake_steps = int(config.distill.fake_steps)
  ema = config.optim.ema
  net = functools.partial(nnx.merge, graphdef)
  _, eval_sums = diffusion.teacher_losses(config, mask_id)
  fake_loss_fn = functools.partial(fake_loss, proc, net)
  student_loss_fn = functools.partial(inverse_loss, proc, net)

  def train_step(state, frozen, batches):
    batches = batches if isinstance(batches, tuple) else (batches,)
    if len(batches) != fake_steps + 1:
      raise ValueError(f"idlm: {len(batches)} batches for fake_steps={fake_steps}")
    key = jax.random.fold_in(state.key(), state.step)
    fake = state.aux["fake"]
    fake_losses, fake_norms = [], []
    for i in range(fake_steps):  # fake first, each on its own batch (§3.3)
      (loss, _), grads = jax.value_and_grad(fake_loss_fn, has_aux=True)(
          fake.params, state.params, batches[i], jax.random.fold_in(key, i))
      fake = apply_gradients(fake, grads, fake_tx, ema)
      fake_losses.append(loss)
      fake_norms.append(optax.tree.norm(grads))
    (loss, tokens), grads = jax.value_and_grad(student_loss_fn, has_aux=True)(
        state.params, fake.params, frozen["teacher"], batches[-1],
        jax.random.fold_in(key, fake_steps))
    state = apply_gradients(state, grads, tx, ema)
    state = state.replace(aux={**state.aux, "fake": fake})
    metrics = {"loss": loss, "inverse_loss": loss, "grad_norm": optax.tree.norm(grads),
               "fake_loss": jnp.mean(jnp.stack(fake_losses)),
               "fake_grad_norm": jnp.mean(jnp.stack(fake_norms)), "tokens": tokens}
    return state, metrics

  def eval_step(params, frozen, batch, key):
    """The student's own validation NELBO under the teacher's loss (a denoising check)."""
    del frozen
    return eval_sums(net(params), batch, key)

  return Objective(train_step=train_step, eval_step=eval_step,
                   batches_per_step=fake_steps + 1, aux_txs={"fake": fake_tx})


def _with_dropout(model, dropout_key):
  """model(x, sigma) with residual dropout from `dropout_key` (train mode)."""
  return lambda x, sigma: model(x, sigma, dropout_key=dropout_key)
