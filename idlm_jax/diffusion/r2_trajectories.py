"""Recorded R2 decoding trajectories (issue #8, part 2: fine-tuning on efficient trajectories).

A trajectory of `mdlm_r2` is stored compactly, per sample, as three [L] arrays:
  tokens[i]       the final token x_i,
  commit_step[i]  s_i: the index (0-based, among the calls its row made) of the network call
                  whose x_theta committed position i; -1 for prompt tokens,
  commit_rule[i]  which rule committed it (an index of r2_samplers.COUNTS: floor, threshold,
                  confidence cluster, token cluster, temporal, final; -1 for prompt tokens).
Committed tokens are never remasked (SUBS carry-over), so the input of call k is exactly

  x_k[i] = x_i       if s_i < k,
           [MASK]    otherwise,                     k = 0, ..., K - 1,  K = 1 + max_i s_i,

and every intermediate state is rebuilt from these arrays without a [steps, B, L] tensor
(`state_at`). Quality filtering keeps the best fraction of the samples by a per-sample score
(`keep_best`; exact source NLL on the synthetic language, `exact_nll_scores`).
Stored as one .npz (`save` / `load`): tokens, commit_step (int16), commit_rule (int8),
score (float32) and a JSON `meta` string (how they were recorded and filtered).
"""

import json
from typing import NamedTuple

import numpy as np

from idlm_jax.diffusion import r2_samplers


class Trajectories(NamedTuple):
  tokens: np.ndarray  # int32 [N, L]: final tokens
  commit_step: np.ndarray  # int32 [N, L]: call index that committed each position (-1: prompt)
  commit_rule: np.ndarray  # int32 [N, L]: COUNTS index of the committing rule (-1: prompt)
  score: np.ndarray  # float32 [N]: the filter's score (lower is better), NaN if not scored


def state_at(tokens, commit_step, k, mask_id: int):
  """x_k = tokens where commit_step < k, else mask_id; `k` is [B] (or a scalar). Works on
  NumPy and JAX arrays alike: the input of the k-th network call of the recorded decoding."""
  k = k[..., None] if getattr(k, "ndim", 0) else k
  return (commit_step < k) * tokens + (commit_step >= k) * mask_id


def num_calls(commit_step):
  """K = 1 + max_i s_i per row [N]: the network calls the row's decoding needed."""
  return commit_step.max(-1) + 1


def from_outputs(outputs) -> Trajectories:
  """Concatenate R2Output batches (fetched to host) into unscored Trajectories."""
  cat = lambda f: np.concatenate([np.asarray(getattr(o, f)) for o in outputs]).astype(np.int32)
  tokens = cat("tokens")
  return Trajectories(tokens, cat("commit_step"), cat("commit_rule"),
                      np.full(len(tokens), np.nan, np.float32))


def exact_nll_scores(hmm, tokens: np.ndarray, noise: float = 1e-3) -> np.ndarray:
  """Per-sample exact source NLL per symbol, -log p(body) / n (evals/synthetic.py, rows
  [BOS] + n symbols + [EOS]): the filter score on the synthetic language."""
  from idlm_jax.evals import synthetic
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


def save(path, traj: Trajectories, meta: dict) -> None:
  """One .npz with the arrays (compact dtypes) and `meta` as a JSON string."""
  with open(path, "wb") as f:
    np.savez(f, tokens=traj.tokens.astype(np.int32), commit_step=traj.commit_step.astype(np.int16),
             commit_rule=traj.commit_rule.astype(np.int8), score=traj.score.astype(np.float32),
             meta=np.asarray(json.dumps(meta)))


def load(path) -> tuple[Trajectories, dict]:
  with open(path, "rb") as f:
    z = np.load(f)
    traj = Trajectories(z["tokens"].astype(np.int32), z["commit_step"].astype(np.int32),
                        z["commit_rule"].astype(np.int32), z["score"].astype(np.float32))
    meta = json.loads(str(z["meta"]))
  return traj, meta
