"""Objective "llada_sft": LLaDA's masked-diffusion SFT loss (Nie et al. 2025, "Large Language
Diffusion Models", §2.3 and the SFT pseudo-code of the LLaDA repository's GUIDELINES.md).

A row is a prompt p followed by its response r (EOS-padded to the row length; the EOS padding
is response text, data/reasoning.py). Per row b: a mask probability
t_b ~ U[eps, 1] (LLaDA's p_mask = (1 - eps) u + eps, u ~ U[0, 1]: the same law); every
response position is replaced by [MASK] independently with probability t_b; prompt positions
(`prompt_mask` 1, left prompt pads included) are never masked. The loss is

  L = (1/B) sum_b (1/|r_b|) sum_{i in r_b, masked} -log p_theta(x_i | x_t) / t_b

(LLaDA: `token_loss / p_mask`, summed with weights 1/answer_length, divided by the batch
size). With alpha_t = 1 - t (the log-linear schedule) 1/t is MDLM's NELBO weight -a'/(1 - a),
so the per-row term is the masked-diffusion bound on -log p(r | p) / |r|. The network is the
plain LLaDA decoder (no time input, full softmax over the vocabulary, as LLaDA: [MASK] is never
a target, so the model learns not to predict it).

Validation reports the pooled per-token bound: nelbo_sum = sum over rows of the per-row sum
(before dividing by |r_b|) and tokens = sum |r_b|, so nelbo_sum / tokens is nats per response
token (exact over a whole split, unlike the train loss's mean of per-row means). Rows without a
`prompt_mask` are all response (LLaDA pretraining).

diffusion.eps is the eps above and diffusion.antithetic draws the t_b low-discrepancy over the
batch (True: MDLM's variance reduction; False: LLaDA's independent draws).
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax.diffusion.schedules import sample_t
from idlm_jax.fields import ConfigError
from idlm_jax.objectives.base import Context, Objective, ObjectiveSpec, register
from idlm_jax.objectives.state import apply_gradients


def response_mask(batch: dict) -> jax.Array:
  """float32 [B, L]: 1 on the positions in the loss (not prompt; rows of weight 0 count 0)."""
  x0 = batch["input_ids"]
  prompt = batch.get("prompt_mask")
  resp = jnp.ones(x0.shape, jnp.float32) if prompt is None else 1.0 - prompt.astype(jnp.float32)
  if "weight" in batch:
    resp = resp * batch["weight"][:, None].astype(jnp.float32)
  return resp


def forward_process(key: jax.Array, x0: jax.Array, resp: jax.Array, t: jax.Array,
                    mask_id: int) -> jax.Array:
  """x_t: response positions masked independently with probability t [B]; prompt kept."""
  u = jax.random.uniform(key, x0.shape)
  masked = (u < t[:, None]) & (resp > 0)
  return jnp.where(masked, mask_id, x0).astype(x0.dtype)


def sft_sums(model, batch: dict, key: jax.Array, *, mask_id: int, eps: float,
             antithetic: bool, dropout_key=None) -> dict:
  """Additive sums of one batch: "row_sum" = sum_b (1/|r_b|) sum_masked CE / t_b (the train
  loss times B), "rows" (rows with a response), "nelbo_sum" = sum_b sum_masked CE / t_b,
  "tokens" = sum_b |r_b|, "masked" = masked positions."""
  x0 = batch["input_ids"]
  resp = response_mask(batch)
  k_t, k_mask = jax.random.split(key)
  t = sample_t(k_t, x0.shape[0], eps, antithetic)
  xt = forward_process(k_mask, x0, resp, t, mask_id)
  masked = (xt == mask_id) & (resp > 0)
  logits = model(xt, dropout_key=dropout_key, attention_mask=batch.get("attention_mask"))
  log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), x0[..., None], -1)[..., 0]
  per_row = jnp.where(masked, -log_p, 0.0).sum(-1) / t
  length = resp.sum(-1)
  has = length > 0
  return {"row_sum": jnp.where(has, per_row / jnp.maximum(length, 1.0), 0.0).sum(),
          "rows": has.sum().astype(jnp.float32), "nelbo_sum": per_row.sum(),
          "tokens": length.sum(), "masked": masked.sum().astype(jnp.float32)}


def make(ctx: Context) -> Objective:
  """Pure train/eval steps of the SFT loss above."""
  config, graphdef, tx = ctx.config, ctx.graphdef, ctx.tx
  opts = dict(mask_id=ctx.mask_id, eps=float(config.diffusion.eps),
              antithetic=bool(config.diffusion.antithetic))

  def loss_fn(params, batch, key):
    k_noise, k_drop = jax.random.split(key)
    sums = sft_sums(nnx.merge(graphdef, params), batch, k_noise, dropout_key=k_drop, **opts)
    return sums["row_sum"] / jnp.maximum(sums["rows"], 1.0), sums

  def train_step(state, frozen, batch):
    del frozen
    key = jax.random.fold_in(state.key(), state.step)
    with jax.named_scope("sft_loss"):
      (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": sums["tokens"],
               "masked_fraction": sums["masked"] / jnp.maximum(sums["tokens"], 1.0)}
    return apply_gradients(state, grads, tx, config.optim.ema), metrics

  def eval_step(params, frozen, batch, key):
    del frozen
    sums = sft_sums(nnx.merge(graphdef, params), batch, key, **opts)
    return {"nelbo_sum": sums["nelbo_sum"], "tokens": sums["tokens"]}

  return Objective(train_step=train_step, eval_step=eval_step)


def validate(config) -> None:
  """The LLaDA decoder (model.name "llada") reads the attention mask this loss passes."""
  if config.model.name != "llada":
    raise ConfigError(f"config.model.name: objective 'llada_sft' trains model.name='llada', "
                      f"got {config.model.name!r}")


SPEC = register(ObjectiveSpec(
    "llada_sft", make, "LLaDA masked-diffusion SFT (prompt never masked, loss on the response)",
    validate=validate, uses_process=False, prompted=True))
