"""Objective "ar": next-token cross-entropy of a causal LM (the GPT-2 Gen PPL evaluator).

The eval step returns the same additive sums as the diffusion objective ({"nelbo_sum",
"tokens"}), so validation reports the exact NLL/token and perplexity exp(NLL) (not a bound).
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax.objectives import accumulate
from idlm_jax.objectives.base import Context, Objective, ObjectiveSpec, register
from idlm_jax.objectives.state import TrainState, apply_gradients


def next_token_nll_sums(model, batch: dict, *, dropout_key=None) -> dict:
  """Sum of -log p(x_{i+1} | x_{<=i}) over valid targets (attention_mask[:, 1:]), and count."""
  ids = batch["input_ids"]
  valid = batch["attention_mask"][:, 1:].astype(jnp.float32)
  if "weight" in batch:
    valid = valid * batch["weight"][:, None]
  logits = model(ids, dropout_key=dropout_key)[:, :-1]
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), ids[:, 1:])
  return {"nelbo_sum": (nll * valid).sum(), "tokens": valid.sum()}


def make(ctx: Context) -> Objective:
  """Pure train/eval steps for causal LM pretraining."""
  graphdef, tx, ema_decay = ctx.graphdef, ctx.tx, ctx.config.optim.ema
  k = ctx.config.train.microbatches

  def loss_fn(params, batch, key):
    sums = next_token_nll_sums(nnx.merge(graphdef, params), batch, dropout_key=key)
    return sums["nelbo_sum"] / jnp.maximum(sums["tokens"], 1.0), (sums["tokens"], {})

  def train_step(state: TrainState, frozen, batch: dict):
    del frozen
    key = jax.random.fold_in(state.key(), state.step)
    with jax.named_scope("ar_loss"):  # dropout drawn row by row (rng.RowKey)
      loss, tokens, grads, _ = accumulate.mean_grad(loss_fn, state.params, batch, key, k)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": tokens}
    with jax.named_scope("optimizer"):
      return apply_gradients(state, grads, tx, ema_decay), metrics

  def eval_step(params, frozen, batch: dict, key: jax.Array) -> dict:
    del frozen, key
    return next_token_nll_sums(nnx.merge(graphdef, params), batch)

  return Objective(train_step=train_step, eval_step=eval_step)


SPEC = register(ObjectiveSpec("ar", make, "causal LM pretraining (the Gen PPL evaluator)",
                              uses_process=False))
