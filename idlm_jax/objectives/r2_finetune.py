"""`r2_finetune`: fine-tuning an MDLM on its own efficient R2 decoding trajectories (issue #8,
part 2; R2-dLLM's "redundancy-aware SFT", whose recipe is not public: reference/r2_dllm.md §2
and §5.7; this design follows the reference's description and dParallel's certainty forcing).

Data: trajectories recorded with the R2 rules and filtered by quality
(benchmarks/r2_record_trajectories.py -> an .npz, diffusion/r2_trajectories.py), read by
`get_datasets` in place of the training split (the validation split stays the real data).
A row holds the final tokens x, commit steps s_i and committing rules r_i; the model starts as
the teacher (config.distill.teacher; the objective is in DISTILLATION).

One example: k ~ U{0, ..., K - 1} (K = 1 + max_i s_i: the row's network calls), the recorded
state x_k = x where s < k, else [MASK] (the input of call k), its masked set M_k = {i: s_i >= k}
and masked fraction m_k = |M_k| / |free|. The loss per row is

  L = (1 / m_k) sum_{i in M_k} -log p_theta(x_i | x_k) / |free|                 (trajectory NELBO)
    + lambda * mean_{i in E_k} max(0, log c* - log p_theta(x_i | x_k))             (sharpening)

* trajectory NELBO: MDLM's continuous-time NELBO integrand at t = m_k (log-linear weight
  -a'/(1 - a) = 1/t), with the masks of the recorded trajectory instead of random ones: the
  model learns to predict the final tokens from the states its own decoding visits. Calls are
  spread evenly over t by the sampler's schedule, so uniform k approximates uniform t.
* sharpening on early-committed positions E_k = {i in M_k: s_i < k + h, r_i in the rules}:
  tokens the rules committed within the next h calls (h = distill.r2ft.horizon = R2's K = 3:
  a temporal commit at call s means the argmax was already the same at s - 2, s - 1, s). A
  hinge on -log p of the committed token up to a target confidence c* (0.95, above the 0.9
  threshold) pushes them over Fast-dLLM's threshold h calls earlier, so the base rule commits
  them and fewer handcrafted rules (temporal streaks, clusters) are needed; the hinge stops at
  c*, where an entropy penalty or a plain CE would keep sharpening (mode collapse). Floor
  commits (random ancestral draws) and the final noise removal are not sharpened.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from idlm_jax.diffusion import mdlm, r2, r2_samplers, r2_trajectories
from idlm_jax.diffusion.schedules import get_schedule
from idlm_jax.objectives import Objective, diffusion
from idlm_jax.train.state import apply_gradients


def sharpen_rule_ids(text: str) -> tuple[int, ...]:
  """"threshold,temporal" -> their COUNTS indices (the rules whose commits are sharpened)."""
  return tuple(r2_samplers.COUNTS.index(n) for n in r2.parse_rules(text))


def sample_call(key: jax.Array, commit_step: jax.Array) -> jax.Array:
  """k ~ U{0, ..., K_b - 1} per row [B] (K_b = 1 + max_i s_i)."""
  calls = r2_trajectories.num_calls(commit_step)
  u = jax.random.uniform(key, calls.shape)
  return jnp.minimum(jnp.floor(u * calls), calls - 1).astype(jnp.int32)


def loss_terms(log_p_x: jax.Array, commit_step: jax.Array, commit_rule: jax.Array,
               k: jax.Array, *, horizon: int, rule_ids: tuple, target: float,
               masked: jax.Array | None = None) -> dict:
  """The two terms' sums from log p_theta(x_i | x_k) [B, L] (the final tokens' log-probs).
  `masked` (default: the trajectory's M_k = {s_i >= k}) is the set the model saw masked.

  Returns sums (additive over batches): "nelbo_sum" = sum_b (1/m_b) sum_{M_b} -log p,
  "tokens" = sum_b |free_b|, "sharpen_sum" = sum over E of max(0, log c* - log p),
  "early" = |E|, "masked" = sum_b |M_b|.
  """
  free = commit_step >= 0
  masked = commit_step >= k[:, None] if masked is None else masked
  n_free = free.sum(-1).astype(jnp.float32)
  n_masked = masked.sum(-1).astype(jnp.float32)
  m = n_masked / jnp.maximum(n_free, 1.0)
  ce = jnp.where(masked, -log_p_x, 0.0)
  nelbo = ce.sum(-1) / jnp.maximum(m, 1e-6)
  early = masked & (commit_step < k[:, None] + horizon)
  early = early & jnp.isin(commit_rule, jnp.asarray(rule_ids or (-2,), jnp.int32))
  hinge = jnp.maximum(0.0, jnp.log(target) + ce)
  return {"nelbo_sum": nelbo.sum(), "tokens": n_free.sum(),
          "sharpen_sum": jnp.where(early, hinge, 0.0).sum(),
          "early": early.sum().astype(jnp.float32), "masked": n_masked.sum()}


def combine(sums: dict, lam: float) -> jax.Array:
  """Per-token trajectory NELBO + lambda x mean sharpening hinge over early positions."""
  return (sums["nelbo_sum"] / jnp.maximum(sums["tokens"], 1.0)
          + lam * sums["sharpen_sum"] / jnp.maximum(sums["early"], 1.0))


def random_masks(key: jax.Array, commit_step: jax.Array, k: jax.Array) -> jax.Array:
  """The ablation masks="random": |M_k| positions drawn uniformly among the free ones (the
  trajectory's masked count, a random order: plain MDLM masking at the same noise levels)."""
  free = commit_step >= 0
  u = jnp.where(free, jax.random.uniform(key, commit_step.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
  return free & (rank < (commit_step >= k[:, None]).sum(-1, keepdims=True))


def trajectory_sums(model, batch: dict, key: jax.Array, *, schedule, mask_id: int,
                    horizon: int, rule_ids: tuple, target: float, train: bool,
                    masks: str = "trajectory") -> dict:
  """Sample k per row, rebuild x_k, run the model once and return `loss_terms`' sums
  (masks="random": the ablation with random masks of the same size, `random_masks`)."""
  k_call, k_drop = jax.random.split(key)
  x, steps = batch["input_ids"], batch["commit_step"]
  k = sample_call(k_call, steps)
  masked = None
  if masks == "random":
    masked = random_masks(jax.random.fold_in(k_call, 1), steps, k)
    xk = jnp.where(masked, mask_id, x).astype(jnp.int32)
  else:
    xk = r2_trajectories.state_at(x, steps, k, mask_id).astype(jnp.int32)
  t = jnp.clip(((steps >= k[:, None]).sum(-1) / jnp.maximum((steps >= 0).sum(-1), 1)),
               schedule.eps, 1.0).astype(jnp.float32)  # the state's noise level ~ m_k
  logits = model(xk, schedule.sigma(t), dropout_key=k_drop if train else None)
  log_p = mdlm.subs_log_prob_of(logits, xk, x, mask_id)
  return loss_terms(log_p, steps, batch["commit_rule"], k, horizon=horizon, rule_ids=rule_ids,
                    target=target, masked=masked)


def make_objective(config, graphdef, tx, mask_id: int) -> Objective:
  """Train on recorded trajectories; validate with the MDLM NELBO on the real split."""
  r = config.distill.r2ft
  f = config.diffusion
  schedule = get_schedule(f.schedule, f.eps)
  sums_fn = functools.partial(trajectory_sums, schedule=schedule, mask_id=mask_id,
                              horizon=int(r.horizon), rule_ids=sharpen_rule_ids(r.sharpen_rules),
                              target=float(r.sharpen_target), train=True, masks=r.masks)
  lam = float(r.sharpen_weight)
  _, eval_sums = diffusion.teacher_losses(config, mask_id)
  ema = config.optim.ema

  def loss_fn(params, batch, key):
    sums = sums_fn(nnx.merge(graphdef, params), batch, key)
    return combine(sums, lam), sums

  def train_step(state, frozen, batch):
    del frozen  # the teacher is only the initial model
    key = jax.random.fold_in(state.key(), state.step)
    (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": s["tokens"],
               "traj_nelbo": s["nelbo_sum"] / jnp.maximum(s["tokens"], 1.0),
               "sharpen": s["sharpen_sum"] / jnp.maximum(s["early"], 1.0),
               "early_fraction": s["early"] / jnp.maximum(s["masked"], 1.0)}
    return apply_gradients(state, grads, tx, ema), metrics

  def eval_step(params, frozen, batch, key):
    del frozen
    return eval_sums(nnx.merge(graphdef, params), batch, key)

  return Objective(train_step=train_step, eval_step=eval_step)


# ------------------------------------------------------------------ the data source


class TrajectoryRows:
  """Recorded trajectories as the rows of pipeline.TrainIterator (duck-typed TokenRows):
  `gather` adds commit_step / commit_rule (int32 [n, L]) to input_ids / attention_mask."""

  def __init__(self, traj: r2_trajectories.Trajectories, model_vocab_size: int):
    self.traj, self.model_vocab_size = traj, model_vocab_size
    self.rows, self.lengths = traj.tokens, None
    import hashlib
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
            "attention_mask": np.ones((len(index), self.seq_len), np.int32)}

  def token_counts(self, num_rows=None) -> np.ndarray:
    rows = self.rows if num_rows is None else self.rows[:num_rows]
    return np.bincount(rows.ravel(), minlength=self.model_vocab_size).astype(np.int64)


def get_datasets(config, tokenizer, *, process_index: int = 0, process_count: int = 1):
  """(TrainIterator over the .npz of distill.r2ft.trajectories, the real validation split)."""
  from idlm_jax import config as config_lib
  from idlm_jax.data import pipeline
  if not config.distill.r2ft.trajectories:
    raise config_lib.ConfigError("config.distill.r2ft.trajectories: give the .npz written by "
                                 "benchmarks/r2_record_trajectories.py")
  traj, _ = r2_trajectories.load(config.distill.r2ft.trajectories)
  if traj.tokens.shape[1] != config.data.seq_len:
    raise ValueError(f"distill.r2ft.trajectories: rows of length {traj.tokens.shape[1]}, "
                     f"data.seq_len is {config.data.seq_len}")
  where = dict(process_index=process_index, process_count=process_count)
  train = pipeline.TrainIterator(TrajectoryRows(traj, tokenizer.model_vocab_size),
                                 global_batch_size=config.train.global_batch_size,
                                 seed=config.data.seed, shuffle=config.data.shuffle, **where)
  val = pipeline.EvalSplit(pipeline.load_split(config.data, tokenizer, "validation"),
                           batch_size=config.eval.batch_size,
                           max_rows=int(config.data.max_val_rows), **where)
  return train, val
