"""Recording and filtering R2 decoding trajectories (issue #8 part 2; the stored format and the
training rows are data/trajectories.py).

`from_outputs` turns `mdlm_r2` outputs (their commit_step / commit_rule records) into
Trajectories; `keep_best` keeps the best fraction by a per-sample score (exact source NLL on
the synthetic language, `exact_nll_scores`); `rule_stats` counts commits per rule.
"""


import numpy as np

from idlm_jax.data import synthetic
from idlm_jax.data.trajectories import Trajectories, num_calls
from idlm_jax.decoding import r2 as r2_samplers


def from_outputs(outputs) -> Trajectories:
  """Concatenate R2Output batches (fetched to host) into unscored Trajectories."""
  cat = lambda f: np.concatenate([np.asarray(getattr(o, f)) for o in outputs]).astype(np.int32)
  tokens = cat("tokens")
  return Trajectories(tokens, cat("commit_step"), cat("commit_rule"),
                      np.full(len(tokens), np.nan, np.float32))


def exact_nll_scores(hmm, tokens: np.ndarray, noise: float = 1e-3) -> np.ndarray:
  """Per-sample exact source NLL per symbol, -log p(body) / n (data/synthetic.py, rows
  [BOS] + n symbols + [EOS]): the filter score on the synthetic language."""
  body = np.asarray(tokens)[:, 1:-1]
  return (-synthetic.noisy_log_likelihood(hmm, body, noise) / body.shape[1]).astype(np.float32)


def keep_best(scores: np.ndarray, fraction: float) -> np.ndarray:
  """Indices of the ceil(fraction N) lowest scores (best first; NaN last; at least one)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"keep fraction must be in (0, 1], got {fraction}")
  scores = np.asarray(scores, np.float64)
  n = max(1, int(np.ceil(fraction * len(scores) - 1e-9)))
  order = np.argsort(np.where(np.isnan(scores), np.inf, scores), kind="stable")
  return order[:n]


def select(traj: Trajectories, index: np.ndarray) -> Trajectories:
  return Trajectories(*(np.asarray(a)[index] for a in traj))


def rule_stats(traj: Trajectories) -> dict:
  """Tokens per sample committed by each rule and the mean calls per sample (row NFE)."""
  n = len(traj.tokens)
  counts = {name: float((traj.commit_rule == r).sum() / n)
            for r, name in enumerate(r2_samplers.COUNTS)}
  return {"commits_per_sample": counts, "row_nfe": float(num_calls(traj.commit_step).mean())}

