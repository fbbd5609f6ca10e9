"""Training objectives. Each gives a pure train step and an eval step over the same state."""

from typing import Any, Callable, NamedTuple


class Objective(NamedTuple):
  """What the trainer needs from an objective.

  train_step(state, frozen, batch) -> (state, metrics): one optimizer update; `frozen` holds
    read-only networks (a teacher), never donated.
  eval_step(params, frozen, batch, key) -> sums: additive validation statistics
    (e.g. {"nelbo_sum", "tokens"}) so a whole split reduces exactly.
  """

  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]


def get_objective(config, graphdef, tx, mask_id: int) -> Objective:
  """The objective named by config.objective."""
  if config.objective == "diffusion":
    from idlm_jax.objectives import diffusion
    return diffusion.make_objective(config, graphdef, tx, mask_id)
  if config.objective == "ar":  # causal LM (the GPT-2 Gen PPL evaluator), evals/genppl.py
    from idlm_jax.objectives import ar
    return ar.make_objective(config, graphdef, tx, mask_id)
  raise ValueError(f"objective: unknown {config.objective!r}")
