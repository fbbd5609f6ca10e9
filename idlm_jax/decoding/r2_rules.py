"""R2-dLLM decoding rules (Du et al. 2026, arXiv 2604.18995; reference/r2_dllm.md §1) as pure
functions of ONE network call's per-position confidence and argmax arrays (no extra NFE).

Every rule maps [B, L] arrays to a bool commit mask [B, L]. Notation:
  c[b, i] = max_v x_theta[b, i, v]      confidence of position i (the SUBS [MASK] prob is 0),
  a[b, i] = argmax_v x_theta[b, i, v]   its argmax token,
  cand    = positions still masked and in the active block (the only ones a rule may commit),
  masked  = positions still masked anywhere (for the window's unmasked count),
  segment = block id of each position (all 0 without semi-autoregressive blocks); windows and
            runs never cross a block boundary.
Committed tokens are never remasked: a rule only ever turns masked positions into tokens.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

RULES = ("threshold", "confidence_cluster", "token_cluster", "temporal")
TOKEN_CLUSTER_SELECT = ("confidence", "mid", "random")
TEMPORAL_EVAL = ("last", "mean", "max")


def confidence_and_argmax(log_x0: jax.Array) -> tuple[jax.Array, jax.Array]:
  """c_i = exp(max_v log x_theta[i, v]) (float32) and a_i = argmax_v (int32), [B, L]."""
  return (jnp.exp(jnp.max(log_x0, axis=-1)).astype(jnp.float32),
          jnp.argmax(log_x0, axis=-1).astype(jnp.int32))


def top1_rule(conf: jax.Array, cand: jax.Array) -> jax.Array:
  """Fast-dLLM's progress guarantee: the single most confident candidate of each row
  (first on ties); nothing in a row without candidates."""
  best = jnp.argmax(jnp.where(cand, conf, -jnp.inf), axis=-1)
  return (jnp.arange(conf.shape[-1]) == best[:, None]) & cand


def threshold_rule(conf: jax.Array, cand: jax.Array, tau: float) -> jax.Array:
  """Fast-dLLM threshold parallel decoding (`get_transfer_index`): commit cand with c_i >= tau."""
  return cand & (conf >= tau)


def _window_sums(v: jax.Array, w: int) -> jax.Array:
  """[B, L] -> [B, L - w + 1]: sum_{k < w} v[:, j + k] for every window start j."""
  n = v.shape[-1] - w + 1
  return sum(v[:, k:k + n] for k in range(w))


def _covered(ok: jax.Array, w: int, length: int) -> jax.Array:
  """[B, L - w + 1] window flags -> [B, L]: position i lies in some flagged window j <= i < j+w."""
  padded = jnp.pad(ok, ((0, 0), (w - 1, w - 1)))
  out = jnp.zeros(ok.shape[:1] + (length,), bool)
  for k in range(w):
    out = out | padded[:, w - 1 - k:w - 1 - k + length]
  return out


def confidence_cluster_rule(conf, cand, masked, segment, *, window: int, max_unmasked: int,
                            tau: float) -> jax.Array:
  """Rule A (spatial, `_run_window_sweep`; figure: gamma_ave > tau_s).

  For every window W = {j, ..., j + w - 1} inside one block (stride 1): with M = cand ∩ W and
  U = the unmasked positions of W (committed earlier or earlier in this step),
    flag W  iff  |U| <= max_unmasked, M != {} and mean_{i in M} c_i >= tau.
  Commit every candidate lying in a flagged window (windows are unioned).
  """
  length = conf.shape[-1]
  if length < window:
    return jnp.zeros_like(cand)
  candf, maskedf = cand.astype(jnp.float32), masked.astype(jnp.float32)
  n_cand = _window_sums(candf, window)
  n_unmasked = window - _window_sums(maskedf, window)
  conf_sum = _window_sums(candf * conf, window)
  one_block = segment[:, :length - window + 1] == segment[:, window - 1:]
  ok = (one_block & (n_cand > 0) & (n_unmasked <= max_unmasked)
        & (conf_sum >= tau * n_cand))
  return cand & _covered(ok, window, length)


def _runs(argmax, cand, segment) -> tuple[jax.Array, jax.Array]:
  """Maximal runs of adjacent candidates with the same argmax token (within one block):
  run id per position (cumsum of run starts; meaningful where cand) and its start flags."""
  same = (cand[:, 1:] & cand[:, :-1] & (argmax[:, 1:] == argmax[:, :-1])
          & (segment[:, 1:] == segment[:, :-1]))
  same = jnp.pad(same, ((0, 0), (1, 0)))
  start = cand & ~same
  return jnp.maximum(jnp.cumsum(start, axis=-1) - 1, 0).astype(jnp.int32), start


def token_cluster_rule(conf, argmax, cand, segment, *, min_size: int, tau: float,
                       select: str = "confidence", priority=None) -> jax.Array:
  """Rule B (spatial redundancy from positional ambiguity, `_apply_temporal_consistency` in
  R2's LLaDA code; figure: gamma_max > tau_s).

  A run R is a maximal set of adjacent candidates predicting the same argmax token ("few few
  few"). The model knows the token but not its slot, so for every run with |R| >= min_size
  and max_{i in R} c_i > tau (strict) commit EXACTLY ONE position of R with that token:
  the most confident ("confidence"), the middle one, R[(|R| - 1) // 2] ("mid"), or a uniformly
  random one ("random": the highest `priority`, i.i.d. uniforms [B, L]). The others stay
  masked, so the next call can place the token elsewhere: the rule commits one token where a
  parallel commit of the whole run would write the same token |R| times.
  """
  length = conf.shape[-1]
  run, _ = _runs(argmax, cand, segment)
  pos = jnp.broadcast_to(jnp.arange(length), conf.shape)

  def per_row(run, cand, conf, score, pos):
    seg = lambda f, v: f(v, run, num_segments=length)  # noqa: E731
    size = seg(jax.ops.segment_sum, cand.astype(jnp.int32))
    top = seg(jax.ops.segment_max, jnp.where(cand, conf, -jnp.inf))
    first = seg(jax.ops.segment_min, jnp.where(cand, pos, length))
    if select == "mid":
      chosen = pos == (first + (size - 1) // 2)[run]
    else:
      best = seg(jax.ops.segment_max, jnp.where(cand, score, -jnp.inf))
      at_best = cand & (score == best[run])
      chosen = pos == seg(jax.ops.segment_min, jnp.where(at_best, pos, length))[run]
    return cand & chosen & (size[run] >= min_size) & (top[run] > tau)

  if select not in TOKEN_CLUSTER_SELECT:
    raise ValueError(f"sample.r2.token_cluster_select: unknown {select!r} {TOKEN_CLUSTER_SELECT}")
  score = priority if select == "random" else conf
  return jax.vmap(per_row)(run, cand, conf, score, pos)


class Streak(NamedTuple):
  """Per-position temporal state (R2's `maybe_auto_confirm`), all [B, L]."""
  count: jax.Array  # int32: consecutive network calls with argmax == tracked (0 = none)
  tracked: jax.Array  # int32: the argmax token being tracked
  conf_sum: jax.Array  # float32: sum of c_i over the streak
  conf_max: jax.Array  # float32: max of c_i over the streak


def empty_streak(shape) -> Streak:
  return Streak(jnp.zeros(shape, jnp.int32), jnp.full(shape, -1, jnp.int32),
                jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))


def temporal_rule(streak: Streak, conf, argmax, still_masked, *, steps: int, tau: float,
                  aggregate: str = "last") -> tuple[Streak, jax.Array]:
  """Rule C (temporal finalisation; figure: gamma_last > tau_t), after one NEW network call.

  For positions still masked after every other rule of this call:
    argmax unchanged (a_i == tracked_i): count += 1, sum += c_i, max = max(max, c_i);
    otherwise: count = 1, tracked_i = a_i, sum = max = c_i.
  Commit tracked_i (= a_i) iff count >= K and gamma >= tau_t, where gamma is c_i ("last"),
  sum / count ("mean") or max ("max"); committed and no-longer-masked positions are reset.
  Returns (new streak, commit mask).
  """
  if aggregate not in TEMPORAL_EVAL:
    raise ValueError(f"sample.r2.temporal_eval: unknown {aggregate!r} {TEMPORAL_EVAL}")
  keep = (streak.count > 0) & (streak.tracked == argmax)
  count = jnp.where(keep, streak.count + 1, 1)
  conf_sum = jnp.where(keep, streak.conf_sum + conf, conf)
  conf_max = jnp.where(keep, jnp.maximum(streak.conf_max, conf), conf)
  gamma = {"last": conf, "mean": conf_sum / count, "max": conf_max}[aggregate]
  commit = still_masked & (count >= steps) & (gamma >= tau)
  live = still_masked & ~commit
  reset = empty_streak(conf.shape)
  new = Streak(jnp.where(live, count, reset.count), jnp.where(live, argmax, reset.tracked),
               jnp.where(live, conf_sum, reset.conf_sum), jnp.where(live, conf_max, reset.conf_max))
  return new, commit


def parse_rules(text: str) -> tuple[str, ...]:
  """"threshold,temporal" -> ("threshold", "temporal"); "" -> () (a floor-only sampler)."""
  names = tuple(s.strip() for s in str(text).split(",") if s.strip())
  unknown = [n for n in names if n not in RULES]
  if unknown:
    raise ValueError(f"sample.r2.rules: unknown {unknown} (known: {RULES})")
  return names
