"""Teacher pretraining: the MDLM continuous-time NELBO (reference/teachers.md §1.2), and the
SEDD / UDLM / Duo losses of objectives/teachers.py, selected by config.diffusion.algo."""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax.diffusion import mdlm
from idlm_jax.diffusion.schedules import get_schedule, sample_t
from idlm_jax.objectives import Objective, teachers
from idlm_jax.train.state import TrainState, apply_gradients


def mdlm_nelbo_sums(model, batch: dict, key: jax.Array, *, schedule, mask_id: int,
                    antithetic: bool, train: bool, loss_chunk: int = 0) -> dict:
  """Sum of per-token NELBO over valid tokens, and their count, for one batch.

  t is antithetic over the batch; x_t from the absorbing process; loss only at masked, non-pad
  positions (SUBS gives 0 elsewhere; padding is excluded by the attention mask). Rows with
  `weight` 0 (eval padding) count nothing. loss_chunk > 0 (model.loss_chunk): the output
  projection and log-softmax run that many positions at a time (mdlm.chunked_log_prob_of),
  the same value without full [B, L, V] logits.
  """
  x0 = batch["input_ids"]
  valid = teachers.valid_weights(batch)
  k_t, k_mask, k_drop = jax.random.split(key, 3)
  t = sample_t(k_t, x0.shape[0], schedule.eps, antithetic)
  alpha, dalpha = schedule.alpha(t), schedule.dalpha(t)
  xt = mdlm.q_xt(k_mask, x0, alpha, mask_id)
  drop = k_drop if train else None
  if loss_chunk > 0:
    h = model.features(xt, schedule.sigma(t), dropout_key=drop)
    log_p = mdlm.chunked_log_prob_of(model.project, h, xt, x0, mask_id, loss_chunk)
  else:
    log_p = mdlm.subs_log_prob_of(model(xt, schedule.sigma(t), dropout_key=drop), xt, x0,
                                  mask_id)
  nelbo = mdlm.nelbo_per_token(log_p, alpha, dalpha) * valid
  return {"nelbo_sum": nelbo.sum(), "tokens": valid.sum()}


def teacher_losses(config, mask_id: int):
  """(train_sums, eval_sums) of diffusion.algo, each (model, batch, key, step) -> sums.

  mdlm: the NELBO above; sedd: the score-entropy bound; udlm: the closed-form uniform-state
  NELBO; duo: the Gaussian-guided curriculum for steps in [curriculum_start, curriculum_end),
  then (and always for validation) the UDLM NELBO (objectives/teachers.py).
  """
  f = config.diffusion
  schedule = get_schedule(f.schedule, f.eps)
  if f.algo == "mdlm":
    nelbo = functools.partial(mdlm_nelbo_sums, schedule=schedule, mask_id=mask_id,
                              antithetic=f.antithetic, loss_chunk=config.model.loss_chunk)
  elif f.algo == "sedd":
    nelbo = functools.partial(teachers.sedd_sums, schedule=schedule, graph=f.process,
                              mask_id=mask_id, antithetic=f.antithetic)
  else:
    nelbo = functools.partial(teachers.udlm_sums, schedule=schedule, antithetic=f.antithetic)
  eval_sums = lambda model, batch, key: nelbo(model, batch, key, train=False)
  if f.algo != "duo":
    return (lambda model, batch, key, step: nelbo(model, batch, key, train=True)), eval_sums
  from idlm_jax.data import tokenizers  # the uniform-state vocabulary = the model vocabulary
  from idlm_jax.diffusion import duo_integral
  transform = duo_integral.DuoTransform.create(
      tokenizers.get_tokenizer(config.data.tokenizer).model_vocab_size, f.gamma_min,
      f.gamma_max, cache_dir=config.data.cache_dir, num_points=f.duo_table_points)
  curriculum = functools.partial(teachers.duo_curriculum_sums, transform=transform, eps=f.eps,
                                 tau=f.tau, antithetic=f.antithetic, train=True)

  def train_sums(model, batch, key, step):
    active = jnp.logical_and(step >= f.curriculum_start, step < f.curriculum_end)
    return jax.lax.cond(active, lambda: curriculum(model, batch, key),
                        lambda: nelbo(model, batch, key, train=True))

  return train_sums, eval_sums


def make_objective(config, graphdef, tx, mask_id: int) -> Objective:
  """Pure train/eval steps for teacher pretraining (diffusion.algo: mdlm, sedd, udlm, duo)."""
  train_sums, eval_sums = teacher_losses(config, mask_id)
  ema_decay = config.optim.ema

  def loss_fn(params, batch, key, step):
    sums = train_sums(nnx.merge(graphdef, params), batch, key, step)
    return sums["nelbo_sum"] / jnp.maximum(sums["tokens"], 1.0), sums

  def train_step(state: TrainState, frozen, batch: dict):
    del frozen  # teacher pretraining reads no other network
    key = jax.random.fold_in(state.key(), state.step)
    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key,
                                                                    state.step)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": sums["tokens"]}
    return apply_gradients(state, grads, tx, ema_decay), metrics

  def eval_step(params, frozen, batch: dict, key: jax.Array) -> dict:
    del frozen
    return eval_sums(nnx.merge(graphdef, params), batch, key)

  return Objective(train_step=train_step, eval_step=eval_step)

