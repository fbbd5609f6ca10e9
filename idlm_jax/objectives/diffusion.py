"""Teacher pretraining: the MDLM continuous-time NELBO (reference/teachers.md §1.2)."""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax.diffusion import mdlm
from idlm_jax.diffusion.schedules import get_schedule, sample_t
from idlm_jax.objectives import Objective
from idlm_jax.train.state import TrainState, apply_gradients


def mdlm_nelbo_sums(model, batch: dict, key: jax.Array, *, schedule, mask_id: int,
                    antithetic: bool, train: bool) -> dict:
  """Sum of per-token NELBO over valid tokens, and their count, for one batch.

  t is antithetic over the batch; x_t from the absorbing process; loss only at masked, non-pad
  positions (SUBS gives 0 elsewhere; padding is excluded by the attention mask). Rows with
  `weight` 0 (eval padding) count nothing.
  """
  x0 = batch["input_ids"]
  valid = batch["attention_mask"].astype(jnp.float32)
  if "weight" in batch:
    valid = valid * batch["weight"][:, None]
  k_t, k_mask, k_drop = jax.random.split(key, 3)
  t = sample_t(k_t, x0.shape[0], schedule.eps, antithetic)
  alpha, dalpha = schedule.alpha(t), schedule.dalpha(t)
  xt = mdlm.q_xt(k_mask, x0, alpha, mask_id)
  logits = model(xt, schedule.sigma(t), dropout_key=k_drop if train else None)
  log_p = mdlm.subs_log_prob_of(logits, xt, x0, mask_id)
  nelbo = mdlm.nelbo_per_token(log_p, alpha, dalpha) * valid
  return {"nelbo_sum": nelbo.sum(), "tokens": valid.sum()}


def make_objective(config, graphdef, tx, mask_id: int) -> Objective:
  """Pure train/eval steps for MDLM pretraining."""
  nelbo = functools.partial(mdlm_nelbo_sums, schedule=get_schedule(config.diffusion.schedule,
                                                                   config.diffusion.eps),
                            mask_id=mask_id, antithetic=config.diffusion.antithetic)
  ema_decay = config.optim.ema

  def loss_fn(params, batch, key):
    sums = nelbo(nnx.merge(graphdef, params), batch, key, train=True)
    return sums["nelbo_sum"] / jnp.maximum(sums["tokens"], 1.0), sums

  def train_step(state: TrainState, frozen, batch: dict):
    del frozen  # teacher pretraining reads no other network
    key = jax.random.fold_in(state.key(), state.step)
    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": sums["tokens"]}
    return apply_gradients(state, grads, tx, ema_decay), metrics

  def eval_step(params, frozen, batch: dict, key: jax.Array) -> dict:
    del frozen
    return nelbo(nnx.merge(graphdef, params), batch, key, train=False)

  return Objective(train_step=train_step, eval_step=eval_step)

