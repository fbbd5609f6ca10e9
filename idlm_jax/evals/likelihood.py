"""Validation NELBO and perplexity bound over a whole split (MDLM `val/ppl`, teachers.md §1.3)."""

import math

import jax
import numpy as np

from idlm_jax.train import parallel


def evaluate_split(eval_step, params, frozen, split, mesh, seed: int) -> dict:
  """NELBO (nats/token) and PPL bound exp(NELBO), summed over every valid token of `split`.

  `eval_step` is the objective's jitted (params, frozen, batch, key) -> {"nelbo_sum", "tokens"};
  batch b draws its times and masks from fold_in(key(seed), b), so the number is reproducible.
  Sums are accumulated on the host in float64.
  """
  key = jax.random.key(seed)
  total, tokens = 0.0, 0.0
  pending = []
  for b, local in enumerate(split):
    batch = parallel.global_batch(local, mesh)
    pending.append(eval_step(params, frozen, batch, jax.random.fold_in(key, b)))
  for sums in jax.device_get(pending):
    total += float(np.float64(sums["nelbo_sum"]))
    tokens += float(np.float64(sums["tokens"]))
  nelbo = total / max(tokens, 1.0)
  return {"nelbo": nelbo, "ppl": math.exp(min(nelbo, 700.0)), "tokens": tokens}
