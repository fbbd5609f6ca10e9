"""`r2_finetune`: fine-tuning an MDLM on its own efficient R2 decoding trajectories (issue #8,
part 2; R2-dLLM's "redundancy-aware SFT", whose recipe is not public: reference/r2_dllm.md §2
and §5.7; this design follows the reference's description and dParallel's certainty forcing).

Data: trajectories recorded with the R2 rules and filtered by quality
(benchmarks/r2_record_trajectories.py -> an .npz, data/trajectories.py), read by
`get_datasets` in place of the training split (the validation split stays the real data).
A row holds the final tokens x, commit steps s_i and committing rules r_i; the model starts as
the teacher (config.distill.teacher; its spec has teacher=True).

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
import optax
from flax import nnx

from idlm_jax import fields as F
from idlm_jax import rng
from idlm_jax.data import trajectories as traj_data
from idlm_jax.decoding import r2 as r2_sampler, r2_rules
from idlm_jax.diffusion import mdlm
from idlm_jax.fields import Check, ConfigError, Field
from idlm_jax.models import dllm
from idlm_jax.objectives import accumulate
from idlm_jax.objectives.base import Context, Objective, ObjectiveSpec, register
from idlm_jax.objectives.state import apply_gradients

FIELDS = {
    "distill.r2ft.trajectories": Field(
        "", 'objective "r2_finetune": the .npz of recorded R2 trajectories (replaces the training '
        "split), recorded and filtered by benchmarks/r2_record_trajectories.py."),
    "distill.r2ft.sharpen_weight": Field(1.0, "lambda: weight of the confidence-sharpening hinge "
                                         "(0: NELBO only).",
                                         check=F.non_negative_or_off("0: trajectory NELBO only")),
    "distill.r2ft.sharpen_target": Field(0.95, "c*: the hinge max(0, log c* - log p) stops at "
                                         "this confidence.",
                                         check=Check(lambda v: 0 < v <= 1, "in (0, 1]")),
    "distill.r2ft.horizon": Field(3, "h: sharpen tokens the rules committed within the next h "
                                  "calls (R2's K).", check=F.at_least(1)),
    "distill.r2ft.sharpen_rules": Field("threshold,confidence_cluster,token_cluster,temporal",
                                        "the rules whose commits are sharpened.",
                                        check=F.names_in(r2_rules.RULES, "")),
    "distill.r2ft.masks": Field(
        "trajectory", 'masks of the NELBO term: "trajectory" (the recorded x_k) or "random" (the '
        "ablation: the same number of masks at uniformly random positions, i.e. MDLM masking of "
        "the samples).", choices=("trajectory", "random")),
    "distill.r2ft.keep_fraction": Field(0.25, "recording: keep this best fraction of the samples "
                                        "by the filter.",
                                        check=Check(lambda v: 0 < v <= 1, "in (0, 1]")),
    "distill.r2ft.filter": Field("exact_nll", 'recording: "exact_nll" (synthetic_hmm) or "none".',
                                 choices=("exact_nll", "none")),
    "distill.r2ft.record_samples": Field(2048, "recording: trajectories drawn before filtering.",
                                         check=F.at_least(1)),
}


def sharpen_rule_ids(text: str) -> tuple[int, ...]:
  """"threshold,temporal" -> their COUNTS indices (the rules whose commits are sharpened)."""
  return tuple(r2_sampler.COUNTS.index(n) for n in r2_rules.parse_rules(text))


def sample_call(key: jax.Array, commit_step: jax.Array) -> jax.Array:
  """k ~ U{0, ..., K_b - 1} per row [B] (K_b = 1 + max_i s_i)."""
  calls = traj_data.num_calls(commit_step)
  u = rng.uniform(key, calls.shape)
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
  u = jnp.where(free, rng.uniform(key, commit_step.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
  return free & (rank < (commit_step >= k[:, None]).sum(-1, keepdims=True))


def trajectory_state(batch: dict, key: rng.Key, *, mask_id: int, masks: str = "trajectory"):
  """(x_k, k, masked or None, dropout key) of each row: the call k ~ U{0..K_b - 1} and the
  state the model sees (masks="random": the ablation's random masks of the same size)."""
  k_call, k_drop = rng.split(key)
  x, steps = batch["input_ids"], batch["commit_step"]
  k = sample_call(k_call, steps)
  masked = None
  if masks == "random":
    masked = random_masks(rng.fold_in(k_call, 1), steps, k)
    xk = jnp.where(masked, mask_id, x).astype(jnp.int32)
  else:
    xk = traj_data.state_at(x, steps, k, mask_id).astype(jnp.int32)
  return xk, k, masked, k_drop


def trajectory_sums(model, batch: dict, key: rng.Key, *, schedule, mask_id: int,
                    horizon: int, rule_ids: tuple, target: float, train: bool,
                    masks: str = "trajectory") -> dict:
  """Sample k per row, rebuild x_k, run the model once and return `loss_terms`' sums
  (masks="random": the ablation with random masks of the same size, `random_masks`)."""
  x, steps = batch["input_ids"], batch["commit_step"]
  xk, k, masked, k_drop = trajectory_state(batch, key, mask_id=mask_id, masks=masks)
  t = jnp.clip(((steps >= k[:, None]).sum(-1) / jnp.maximum((steps >= 0).sum(-1), 1)),
               schedule.eps, 1.0).astype(jnp.float32)  # the state's noise level ~ m_k
  extra = {}
  if isinstance(model, dllm.DLLM):  # prompted rows: left prompt pads hidden from attention
    extra["attention_mask"] = batch.get("attention_mask")
  logits = model(xk, schedule.sigma(t), dropout_key=k_drop if train else None, **extra)
  log_p = mdlm.subs_log_prob_of(logits, xk, x, mask_id)
  return loss_terms(log_p, steps, batch["commit_rule"], k, horizon=horizon, rule_ids=rule_ids,
                    target=target, masked=masked)


def trajectory_counts(batch: dict, key: rng.Key, *, mask_id: int, horizon: int,
                      rule_ids: tuple, masks: str = "trajectory") -> dict:
  """The normalisers of `combine` ("tokens", "early", "masked") without running the model:
  they depend on the drawn calls only (the whole batch's, before its microbatches run)."""
  steps = batch["commit_step"]
  _, k, masked, _ = trajectory_state(batch, key, mask_id=mask_id, masks=masks)
  sums = loss_terms(jnp.zeros(steps.shape, jnp.float32), steps, batch["commit_rule"], k,
                    horizon=horizon, rule_ids=rule_ids, target=1.0, masked=masked)
  return {name: sums[name] for name in ("tokens", "early", "masked")}


def make(ctx: Context) -> Objective:
  """Train on recorded trajectories; validate with the MDLM NELBO on the real split.

  With train.microbatches = k the normalisers of `combine` (|free| and |E| of the whole batch)
  come first from `trajectory_counts`; each microbatch's sums are divided by them and the
  gradients add up (objectives/accumulate.py)."""
  config = ctx.config
  r = config.distill.r2ft
  shared = dict(mask_id=ctx.mask_id, horizon=int(r.horizon),
                rule_ids=sharpen_rule_ids(r.sharpen_rules), masks=r.masks)
  sums_fn = functools.partial(trajectory_sums, schedule=ctx.process.schedule,
                              target=float(r.sharpen_target), train=True, **shared)
  lam = float(r.sharpen_weight)
  graphdef, tx, ema = ctx.graphdef, ctx.tx, config.optim.ema
  n_micro = config.train.microbatches

  def loss_fn(params, batch, key, norms):
    sums = sums_fn(nnx.merge(graphdef, params), batch, key)
    return combine({**sums, "tokens": norms["tokens"], "early": norms["early"]}, lam), sums

  def train_step(state, frozen, batch):
    del frozen  # the teacher is only the initial model
    key = jax.random.fold_in(state.key(), state.step)
    norms = trajectory_counts(batch, rng.all_rows(key, accumulate.batch_size(batch)), **shared)
    with jax.named_scope("trajectory_loss"):
      (loss, s), grads = accumulate.sum_grad(loss_fn, state.params, batch, key, n_micro, norms)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": s["tokens"],
               "traj_nelbo": s["nelbo_sum"] / jnp.maximum(s["tokens"], 1.0),
               "sharpen": s["sharpen_sum"] / jnp.maximum(s["early"], 1.0),
               "early_fraction": s["early"] / jnp.maximum(s["masked"], 1.0)}
    return apply_gradients(state, grads, tx, ema), metrics

  def eval_step(params, frozen, batch, key):
    del frozen
    return ctx.process.eval_sums(nnx.merge(graphdef, params), batch, key)

  return Objective(train_step=train_step, eval_step=eval_step)


def get_datasets(config, tokenizer, *, process_index: int = 0, process_count: int = 1):
  """(TrainIterator over the .npz of distill.r2ft.trajectories, the real validation split)."""
  if not config.distill.r2ft.trajectories:
    raise ConfigError("config.distill.r2ft.trajectories: give the .npz written by "
                      "benchmarks/r2_record_trajectories.py")
  return traj_data.get_datasets(config.distill.r2ft.trajectories, config.data, tokenizer,
                                global_batch_size=config.train.global_batch_size,
                                eval_batch_size=config.eval.batch_size,
                                process_index=process_index, process_count=process_count)


def validate(config) -> None:
  """The trajectory file is checked when the data load (get_datasets), so that configs
  validate without one; the exact-NLL filter needs the synthetic source."""
  r = config.distill.r2ft
  if r.filter == "exact_nll" and config.data.source != "synthetic_hmm":
    raise ConfigError("config.distill.r2ft.filter: 'exact_nll' needs data.source="
                      f"'synthetic_hmm', got {config.data.source!r} (use 'none')")


SPEC = register(ObjectiveSpec("r2_finetune", make, "fine-tuning on R2 trajectories",
                              fields=FIELDS, validate=validate, teacher=True, algos=("mdlm",),
                              data=get_datasets, prompted=True))
