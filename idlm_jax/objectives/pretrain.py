"""Objective "diffusion": teacher pretraining with the loss of config.diffusion.algo's process
(MDLM NELBO, SEDD score entropy, UDLM NELBO, Duo curriculum; diffusion/processes)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax.objectives import accumulate
from idlm_jax.objectives.base import Context, Objective, ObjectiveSpec, chunk_error, register
from idlm_jax.objectives.state import TrainState, apply_gradients


def make(ctx: Context) -> Objective:
  """Pure train/eval steps of the process's teacher loss (per-token mean over valid tokens)."""
  proc, graphdef, tx, ema_decay = ctx.process, ctx.graphdef, ctx.tx, ctx.config.optim.ema
  k = ctx.config.train.microbatches

  def loss_fn(params, batch, key, step):
    sums = proc.loss_sums(nnx.merge(graphdef, params), batch, key, train=True, step=step)
    return sums["nelbo_sum"] / jnp.maximum(sums["tokens"], 1.0), (sums["tokens"], {})

  def train_step(state: TrainState, frozen, batch: dict):
    del frozen  # teacher pretraining reads no other network
    key = jax.random.fold_in(state.key(), state.step)
    with jax.named_scope("teacher_loss"):
      loss, tokens, grads, _ = accumulate.mean_grad(loss_fn, state.params, batch, key, k,
                                                    state.step)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": tokens}
    with jax.named_scope("optimizer"):
      return apply_gradients(state, grads, tx, ema_decay), metrics

  def eval_step(params, frozen, batch: dict, key: jax.Array) -> dict:
    del frozen
    return proc.eval_sums(nnx.merge(graphdef, params), batch, key)

  return Objective(train_step=train_step, eval_step=eval_step)


def validate(config) -> None:
  """model.loss_chunk > 0 is implemented for the MDLM, UDLM and Duo teacher losses."""
  if config.model.loss_chunk > 0 and config.diffusion.algo not in ("mdlm", "udlm", "duo"):
    raise chunk_error(config)


SPEC = register(ObjectiveSpec(
    "diffusion", make, "teacher pretraining with the diffusion.algo loss", validate=validate,
    chunked_loss=True))
