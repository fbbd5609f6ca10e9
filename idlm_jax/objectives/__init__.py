"""Training objectives. Each gives a pure train step and an eval step over the same state."""

from typing import Any, Callable, NamedTuple

DISTILLATION = ("idlm", "sdtt", "dcd", "didi", "r2_finetune")  # objectives that start from a frozen teacher (config.distill)


class Objective(NamedTuple):
  """What the trainer needs from an objective.

  train_step(state, frozen, batch) -> (state, metrics): one update of every trained network;
    `frozen` holds read-only networks ({"teacher": params} for distillation, else None), never
    donated; `batch` is one global batch, or a tuple of `batches_per_step` of them.
  eval_step(params, frozen, batch, key) -> sums: additive validation statistics
    (e.g. {"nelbo_sum", "tokens"}) so a whole split reduces exactly.
  aux_txs: {name: optimizer} of the other networks it trains (TrainState.aux), e.g. IDLM's
    {"fake": AdamW}; each starts as a copy of the initial params.
    A `train.state.AuxNet(tx, init, abstract)` value instead gives a network of another
    structure its own init from the initial params (DiDi's {"disc": discriminator}).
  """

  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]
  batches_per_step: int = 1
  aux_txs: dict = {}


def get_objective(config, graphdef, tx, mask_id: int) -> Objective:
  """The objective named by config.objective."""
  if config.objective == "diffusion":
    from idlm_jax.objectives import diffusion
    return diffusion.make_objective(config, graphdef, tx, mask_id)
  if config.objective == "ar":  # causal LM (the GPT-2 Gen PPL evaluator), evals/genppl.py
    from idlm_jax.objectives import ar
    return ar.make_objective(config, graphdef, tx, mask_id)
  if config.objective == "idlm":  # inverse distillation (reference/idlm.md)
    from idlm_jax.objectives import idlm
    return idlm.make_objective(config, graphdef, tx, mask_id)
  if config.objective == "sdtt":  # baseline: self-distillation through time (teachers.md §6)
    from idlm_jax.objectives import sdtt
    return sdtt.make_objective(config, graphdef, tx, mask_id)
  if config.objective == "dcd":  # baseline: Duo's discrete consistency distillation (§4.4)
    from idlm_jax.objectives import dcd
    return dcd.make_objective(config, graphdef, tx, mask_id)
  if config.objective == "didi":  # DiDi-Instruct (reference/didi_instruct.md)
    from idlm_jax.objectives import didi
    return didi.make_objective(config, graphdef, tx, mask_id)
  if config.objective == "r2_finetune":  # fine-tuning on R2 trajectories (issue #8)
    from idlm_jax.objectives import r2_finetune
    return r2_finetune.make_objective(config, graphdef, tx, mask_id)
  raise ValueError(f"objective: unknown {config.objective!r}")
