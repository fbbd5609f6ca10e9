"""`mdlm_r2`: an MDLM sampler with R2-dLLM's fast-decoding rules (decoding/r2_rules.py), as ONE
compiled `lax.while_loop` that stops as soon as no [MASK] is left.

Each iteration makes at most one network call and then commits, in R2's order
(reference/r2_dllm.md §1.6), using that single call's x_theta:
  1. a floor, which guarantees progress:
       "ancestral" (default, unconditional MDLM): the model's own schedule. Every masked
         position of the active block unmasks with probability (a_s - a_t) / (1 - a_t) to a
         token DRAWN from x_theta (`samplers.masked_posterior_logits`), as in `mdlm_ancestral`.
       "top1": Fast-dLLM's rule: the single most confident masked position of the block.
     After the block's step budget the remaining masks are removed at once ("final":
     `sample.noise_removal`, argmax or one draw from x_theta), so the loop always ends.
  2. the enabled rules, each on the positions still masked after the previous ones:
     threshold (c >= tau), confidence cluster (A), token cluster (B), temporal (C).
Rule commits write the argmax token (`commit="argmax"`, R2's greedy decoding: the streak and
run rules are statements about the argmax) or a fresh draw from x_theta (`commit="sampled"`,
which keeps MDLM's per-position marginal and its entropy). Committed tokens are never
remasked (SUBS carry-over).

Cache: as in `mdlm_ancestral`, when no token changed since the last call and the network
ignores t, x_theta is reused with no call; NFE counts the calls actually made (on device),
and a reused x_theta does not advance temporal streaks (they count network calls).
Clock (`clock`): "steps" walks the grid one step per iteration; "masked" jumps to the grid
step whose noise level matches the block's current masked fraction, so that tokens committed
by the rules shorten the floor's remaining schedule (fewer NFE; a heuristic: the time-agnostic
MDLM network needs no t, only the unmasking probabilities change).
Semi-autoregressive blocks (`block_length` > 0): the active block of a row is the one holding
its first [MASK]; each block gets its own schedule of `num_steps` steps (the budget per block).
Trace inside `categorical.x64_scope(precision)` for float64 draws.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from idlm_jax.decoding import r2_rules
from idlm_jax.diffusion import categorical
from idlm_jax.decoding.ancestral import apply_prefix
from idlm_jax.diffusion.mdlm import masked_posterior_logits
from idlm_jax.diffusion.schedules import LogLinear, sampling_grid

LogProbsFn = Callable[[jax.Array, jax.Array], jax.Array]
COUNTS = ("floor", "threshold", "confidence_cluster", "token_cluster", "temporal", "final")
FLOORS = ("ancestral", "top1")
CLOCKS = ("steps", "masked")
COMMITS = ("argmax", "sampled")


class R2Output(NamedTuple):
  tokens: jax.Array  # int32 [B, L]
  nfe: jax.Array  # int32 []: network calls made for the whole batch
  commits: jax.Array  # int32 [len(COUNTS)]: tokens committed by each rule, summed over the batch
  row_nfe: jax.Array  # int32 [B]: calls made while that row still had a [MASK]
  # the trajectory (r2_trajectories.py): per position, the index (0-based, among the calls
  # made while its row had a [MASK]) of the call whose x_theta committed it, -1 for prompt
  # tokens; and the COUNTS index of the rule that committed it (-1 for prompt tokens)
  commit_step: jax.Array | None = None  # int32 [B, L]
  commit_rule: jax.Array | None = None  # int32 [B, L]


class R2Options(NamedTuple):
  """The rule settings (config `sample.r2`, reference/r2_dllm.md §1.2 for R2's values)."""
  rules: tuple = ("confidence_cluster", "token_cluster", "temporal")
  floor: str = "ancestral"
  commit: str = "argmax"
  threshold: float = 0.9
  cluster_window: int = 3
  cluster_max_unmasked: int = 1
  spatial_threshold: float = 0.8
  token_cluster_size: int = 2
  token_cluster_select: str = "confidence"
  temporal_steps: int = 3
  temporal_threshold: float = 0.8
  temporal_eval: str = "last"
  block_length: int = 0
  clock: str = "steps"


def options_from_config(r) -> R2Options:
  """R2Options from the `sample.r2` ConfigDict."""
  fields = {k: r[k] for k in R2Options._fields if k != "rules"}
  return R2Options(rules=r2_rules.parse_rules(r.rules), **fields)


def apply_rules(opts: R2Options, conf, argmax, x, mask_id, active, segment, streak, fresh,
                priority):
  """Rules 1..4 of one call on x (floor already applied): -> (commit masks in COUNTS[1:5]
  order, new streak). Every mask is disjoint from the previous ones."""
  masks, done = [], jnp.zeros_like(active)

  def cand():
    return (x == mask_id) & active & ~done

  if "threshold" in opts.rules:
    masks.append(r2_rules.threshold_rule(conf, cand(), opts.threshold))
  else:
    masks.append(jnp.zeros_like(active))
  done = done | masks[-1]
  if "confidence_cluster" in opts.rules:
    masks.append(r2_rules.confidence_cluster_rule(
        conf, cand(), (x == mask_id) & ~done, segment, window=opts.cluster_window,
        max_unmasked=opts.cluster_max_unmasked, tau=opts.spatial_threshold))
  else:
    masks.append(jnp.zeros_like(active))
  done = done | masks[-1]
  if "token_cluster" in opts.rules:
    masks.append(r2_rules.token_cluster_rule(
        conf, argmax, cand(), segment, min_size=opts.token_cluster_size,
        tau=opts.spatial_threshold, select=opts.token_cluster_select, priority=priority))
  else:
    masks.append(jnp.zeros_like(active))
  done = done | masks[-1]
  if "temporal" in opts.rules:
    new, commit = r2_rules.temporal_rule(streak, conf, argmax, cand(), steps=opts.temporal_steps,
                                   tau=opts.temporal_threshold, aggregate=opts.temporal_eval)
    streak = jax.tree.map(lambda a, b: jnp.where(fresh, a, b), new, streak)
    masks.append(commit & fresh)
  else:
    masks.append(jnp.zeros_like(active))
  return masks, streak


def mdlm_r2(log_probs_fn: LogProbsFn, key: jax.Array, *, batch_size: int, seq_len: int,
            mask_id: int, schedule: LogLinear, num_steps: int, options: R2Options = R2Options(),
            eps: float = 1e-5, cache: bool = True, time_conditioned: bool = False,
            precision: str = "float64", noise_removal: str = "argmax",
            prefix: jax.Array | None = None) -> R2Output:
  """MDLM sampling with the R2 rules; see the module docstring. `prefix` int32 [B, P] (entries
  < 0 free) is clamped at the first P positions and never resampled."""
  o = options
  if o.floor not in FLOORS or o.commit not in COMMITS:
    raise ValueError(f"sample.r2: floor {o.floor!r} not in {FLOORS} or commit {o.commit!r} "
                     f"not in {COMMITS}")
  if o.clock not in CLOCKS:
    raise ValueError(f"sample.r2.clock: unknown {o.clock!r} {CLOCKS}")
  if noise_removal not in ("argmax", "ancestral"):
    raise ValueError(f"sample.noise_removal: unknown {noise_removal!r} ('argmax', 'ancestral')")
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  block = o.block_length if 0 < o.block_length < seq_len else seq_len
  n_blocks = -(-seq_len // block)
  grid = sampling_grid(num_steps, eps).astype(dtype)
  pos = jnp.arange(seq_len)
  segment = jnp.broadcast_to(pos // block, (batch_size, seq_len)).astype(jnp.int32)
  rule_key = jax.random.fold_in(key, 2**30)
  x = apply_prefix(jnp.full((batch_size, seq_len), mask_id, jnp.int32), prefix)
  free = x == mask_id  # the positions to generate (not the prompt)
  vocab = jax.eval_shape(log_probs_fn, x, jax.ShapeDtypeStruct((batch_size,), jnp.float32)).shape[-1]

  def step(carry):
    x, i, block_step, cur_block, cached, valid, nfe, row_nfe, streak, counts, step_of, rule_of \
        = carry
    masked = x == mask_id
    first = jnp.argmax(masked, axis=-1)
    active_block = jnp.where(masked.any(-1), first // block, n_blocks).astype(jnp.int32)
    block_step = jnp.where(active_block != cur_block, 0, block_step)
    active = segment == active_block[:, None]
    t, s = grid[block_step], grid[jnp.minimum(block_step + 1, num_steps)]

    fresh = jnp.logical_not(valid) if cache else jnp.array(True)
    log_x0 = jax.lax.cond(fresh, lambda: log_probs_fn(x, t.astype(jnp.float32)).astype(
        jnp.float32), lambda: cached)
    nfe = nfe + fresh.astype(jnp.int32)
    row_nfe = row_nfe + (fresh & masked.any(-1)).astype(jnp.int32)
    conf, argmax = r2_rules.confidence_and_argmax(log_x0)
    k_step, k_rule = jax.random.fold_in(key, i), jax.random.fold_in(rule_key, i)

    # 1. the floor, or the block's final noise removal after its budget of num_steps steps
    cand = masked & active
    final = (block_step >= num_steps)[:, None] & cand
    if o.commit == "sampled":
      rule_tokens = categorical.sample_categorical(k_rule, log_x0, precision)
    else:
      rule_tokens = argmax
    if o.floor == "ancestral":
      a_t = schedule.alpha(t)[:, None, None]
      a_s = schedule.alpha(s)[:, None, None]
      draw = categorical.sample_categorical(
          k_step, masked_posterior_logits(log_x0, a_t, a_s, mask_id, dtype), precision)
      floor = cand & ~final & (draw != mask_id)
      floor_tokens = draw
    else:
      floor = r2_rules.top1_rule(conf, cand) & ~final
      floor_tokens = rule_tokens
    if noise_removal == "argmax":
      final_tokens = argmax
    else:
      final_tokens = categorical.sample_categorical(k_step, log_x0, precision)
    x = jnp.where(final, final_tokens, jnp.where(floor, floor_tokens, x))

    # 2. the rules, on what is still masked in the active block
    priority = jax.random.uniform(jax.random.fold_in(k_rule, 1), x.shape)
    masks, streak = apply_rules(o, conf, argmax, x, mask_id, active & ~final, segment, streak,
                                fresh, priority)
    extra = masks[0] | masks[1] | masks[2] | masks[3]
    x_new = jnp.where(extra, rule_tokens, x)
    counts = counts + jnp.stack([m.sum() for m in [floor, *masks, final]]).astype(jnp.int32)
    for r, m in enumerate([floor, *masks, final]):  # the trajectory record (disjoint masks)
      step_of = jnp.where(m, (row_nfe - 1)[:, None], step_of)
      rule_of = jnp.where(m, r, rule_of)
    valid = jnp.logical_and(jnp.all(x_new == carry[0]), not time_conditioned)
    return (x_new, i + 1, next_step(block_step, x_new, active), active_block, log_x0, valid,
            nfe, row_nfe, streak, counts, step_of, rule_of)

  def next_step(block_step, x, active):
    """clock "steps": k + 1. clock "masked": the latest grid step k' whose masked fraction
    t_k' = 1 - k' (1 - eps) / N (log-linear: 1 - alpha_t ~ t) is still >= the block's
    masked fraction m, i.e. k' = floor((1 - m) N / (1 - eps)), at least k + 1: tokens the
    rules committed advance the schedule, so the floor finishes sooner."""
    if o.clock == "steps":
      return block_step + 1
    todo = (free & active).sum(-1)
    m = ((x == mask_id) & active).sum(-1) / jnp.maximum(todo, 1)
    k = jnp.floor((1.0 - m) * num_steps / (1.0 - eps)).astype(jnp.int32)
    return jnp.clip(k, block_step + 1, num_steps)

  def not_done(carry):
    return jnp.any(carry[0] == mask_id) & (carry[1] < n_blocks * (num_steps + 1))

  init = (x, jnp.int32(0), jnp.zeros((batch_size,), jnp.int32),
          jnp.full((batch_size,), -1, jnp.int32),
          jnp.zeros((batch_size, seq_len, vocab), jnp.float32), jnp.array(False), jnp.int32(0),
          jnp.zeros((batch_size,), jnp.int32), r2_rules.empty_streak((batch_size, seq_len)),
          jnp.zeros((len(COUNTS),), jnp.int32), jnp.full((batch_size, seq_len), -1, jnp.int32),
          jnp.full((batch_size, seq_len), -1, jnp.int32))
  out = jax.lax.while_loop(not_done, step, init)
  return R2Output(out[0], out[6], out[9], out[7], out[10], out[11])
