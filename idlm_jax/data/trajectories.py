"""Recorded R2 decoding trajectories as training rows (objective r2_finetune; the recording and
filtering are decoding/trajectories.py).

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

import hashlib
import json
from typing import NamedTuple

import numpy as np

from idlm_jax.data import pipeline, reasoning


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


def save(path, traj: Trajectories, meta: dict, attention_mask: np.ndarray | None = None) -> None:
  """One .npz with the arrays (compact dtypes) and `meta` as a JSON string; `attention_mask`
  [N, L] (0 on left prompt pads of prompted decoding) is stored when given."""
  extra = {} if attention_mask is None else {"attention_mask": attention_mask.astype(np.int8)}
  with open(path, "wb") as f:
    np.savez(f, tokens=traj.tokens.astype(np.int32), commit_step=traj.commit_step.astype(np.int16),
             commit_rule=traj.commit_rule.astype(np.int8), score=traj.score.astype(np.float32),
             meta=np.asarray(json.dumps(meta)), **extra)


def load_attention_mask(path) -> np.ndarray | None:
  """The stored attention mask [N, L] of a trajectory file (None when it has none)."""
  with open(path, "rb") as f:
    z = np.load(f)
    return z["attention_mask"].astype(np.int32) if "attention_mask" in z.files else None


def load(path) -> tuple[Trajectories, dict]:
  with open(path, "rb") as f:
    z = np.load(f)
    traj = Trajectories(z["tokens"].astype(np.int32), z["commit_step"].astype(np.int32),
                        z["commit_rule"].astype(np.int32), z["score"].astype(np.float32))
    meta = json.loads(str(z["meta"]))
  return traj, meta


class TrajectoryRows:
  """Recorded trajectories as training rows (`pipeline.Rows`): `gather` adds commit_step /
  commit_rule (int32 [n, L]) to input_ids / attention_mask."""

  def __init__(self, traj: Trajectories, model_vocab_size: int,
               attention_mask: np.ndarray | None = None):
    self.traj, self.model_vocab_size = traj, model_vocab_size
    self.attention = attention_mask  # [N, L] (left-padded prompts), None: all ones
    self.rows, self.lengths = traj.tokens, None
    h = hashlib.sha256()
    for a in traj[:3]:
      h.update(np.ascontiguousarray(a).tobytes())
    self.fingerprint = h.hexdigest()[:32]

  @property
  def num_rows(self) -> int:
    return len(self.rows)

  @property
  def seq_len(self) -> int:
    return self.rows.shape[1]

  def gather(self, index) -> dict:
    index = np.asarray(index, np.int64)
    return {"input_ids": self.traj.tokens[index], "commit_step": self.traj.commit_step[index],
            "commit_rule": self.traj.commit_rule[index],
            "attention_mask": np.ones((len(index), self.seq_len), np.int32)
            if self.attention is None else self.attention[index].astype(np.int32)}

  def token_counts(self, num_rows=None) -> np.ndarray:
    rows = self.rows if num_rows is None else self.rows[:num_rows]
    return np.bincount(rows.ravel(), minlength=self.model_vocab_size).astype(np.int64)


def get_datasets(path: str, data_cfg, tokenizer, *, global_batch_size: int,
                 eval_batch_size: int, process_index: int = 0, process_count: int = 1):
  """(TrainIterator over the trajectories in the .npz `path`, the real validation split)."""
  traj, _ = load(path)
  if traj.tokens.shape[1] != data_cfg.seq_len:
    raise ValueError(f"distill.r2ft.trajectories: rows of length {traj.tokens.shape[1]}, "
                     f"data.seq_len is {data_cfg.seq_len}")
  where = dict(process_index=process_index, process_count=process_count)
  train = pipeline.TrainIterator(TrajectoryRows(traj, tokenizer.model_vocab_size,
                                                load_attention_mask(path)),
                                 global_batch_size=global_batch_size, seed=data_cfg.seed,
                                 shuffle=data_cfg.shuffle, **where,
                                 **pipeline.reading(data_cfg))
  if data_cfg.source == "reasoning":  # prompt/response rows (no document cache)
    val_rows = reasoning.config_split(data_cfg, tokenizer, "test")[0]
  else:
    val_rows = pipeline.load_split(data_cfg, tokenizer, "validation")
  val = pipeline.EvalSplit(val_rows,
                           batch_size=eval_batch_size, max_rows=int(data_cfg.max_val_rows),
                           **where, **pipeline.reading(data_cfg, workers=False))
  return train, val

