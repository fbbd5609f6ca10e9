"""Score-based reverse samplers of SEDD (`sampling.py`; teachers.md §2.3) as `lax.fori_loop`s.

`log_score_fn(x_t, t) -> log s [B, L, V]` is a SEDD network's log-score (`sedd.log_score`) or
an MDLM model's through `sedd.mdlm_log_score`. Both samplers step on linspace(1, eps, N + 1)
with total noise sigma(t) of `schedule`, call the network once per step (NFE N + 1 with the
final denoise), and draw with `categorical.sample_categorical` in `precision`.
  analytic (Tweedie tau-leaping): probs = staggered_score(s, dsigma) * exp(dsigma Q)^T[x_t].
  euler: probs = onehot(x_t) + dt sigma'(t) reverse_rate(x_t, s), clipped at 0.
Final denoise at t = eps: the analytic step with dsigma = sigma(eps), the [MASK] column
dropped (absorbing), then sampled ("ancestral", SEDD) or argmax ("argmax").
"""

from typing import Callable

import jax
import jax.numpy as jnp

from idlm_jax.diffusion import categorical, sedd
from idlm_jax.decoding.ancestral import SampleOutput, apply_prefix
from idlm_jax.diffusion.schedules import LogLinear, sampling_grid

LogScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _log(p):
  return jnp.where(p > 0, jnp.log(jnp.maximum(p, 1e-300 if p.dtype == jnp.float64 else 1e-38)),
                   -jnp.inf)


def analytic_probs(score, xt, sigma, dsigma, graph: str, mask_id: int, dtype):
  """Unnormalised Tweedie step probabilities [B, L, V] (AnalyticPredictor.update_fn)."""
  stag = sedd.staggered_score(score, dsigma, graph, mask_id)
  return stag * sedd.transp_transition(xt, dsigma, score.shape[-1], graph, mask_id, dtype)


def euler_probs(score, xt, dt, rate_sigma, graph: str, mask_id: int, dtype):
  """onehot(x_t) + dt sigma'(t) reverse_rate(x_t, s) (EulerPredictor + sample_rate), >= 0."""
  onehot = (jnp.arange(score.shape[-1]) == xt[..., None]).astype(dtype)
  rate = sedd.reverse_rate(xt, score, graph, mask_id)
  return jnp.maximum(onehot + (dt * rate_sigma)[:, None, None] * rate, 0.0)


def score_sampler(log_score_fn: LogScoreFn, key: jax.Array, *, kind: str, graph: str,
                  batch_size: int, seq_len: int, vocab_size: int, mask_id: int,
                  schedule: LogLinear, num_steps: int, eps: float = 1e-5,
                  precision: str = "float64", noise_removal: str = "ancestral",
                  prefix: jax.Array | None = None) -> SampleOutput:
  """SEDD `pc_sampler` with the analytic or euler predictor and the final denoiser.

  Starts from all-[MASK] (absorbing) or uniform tokens (uniform graph). `prefix` (int32
  [B, P], see `samplers.apply_prefix`) is clamped at the start, after every step and in the
  output (absorbing: a clean token has no reverse rate, so the clamp only guards rounding).
  Trace inside `categorical.x64_scope(precision)` for float64 draws.
  """
  if kind not in ("analytic", "euler"):
    raise ValueError(f"sample.sampler: {kind!r} is not a score sampler ('analytic', 'euler')")
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  grid = sampling_grid(num_steps, eps).astype(dtype)
  b = jnp.ones((batch_size,), dtype)
  if graph == "absorbing":
    x = jnp.full((batch_size, seq_len), mask_id, jnp.int32)
  else:
    x = jax.random.randint(jax.random.fold_in(key, num_steps + 1), (batch_size, seq_len), 0, vocab_size,
                           jnp.int32)
  x = apply_prefix(x, prefix)

  def score_at(x, t):
    log_s = log_score_fn(x, jnp.full((batch_size,), t, jnp.float32))
    return jnp.exp(log_s.astype(dtype))

  sigma = schedule.sigma  # total noise -log alpha_t

  def step(i, x):
    t, s = grid[i], grid[i + 1]
    score = score_at(x, t)
    if kind == "analytic":
      probs = analytic_probs(score, x, sigma(t) * b, (sigma(t) - sigma(s)) * b, graph, mask_id,
                             dtype)
    else:
      rate_sigma = -schedule.dalpha(t) / schedule.alpha(t)  # d sigma / dt
      probs = euler_probs(score, x, (t - s) * b, rate_sigma * b, graph, mask_id, dtype)
    return apply_prefix(
        categorical.sample_categorical(jax.random.fold_in(key, i), _log(probs), precision), prefix)

  x = jax.lax.fori_loop(0, num_steps, step, x)
  t_end = grid[-1]
  score = score_at(x, t_end)
  probs = analytic_probs(score, x, sigma(t_end) * b, sigma(t_end) * b, graph, mask_id, dtype)
  if graph == "absorbing":
    probs = jnp.where(jnp.arange(probs.shape[-1]) == mask_id, 0.0, probs)
  if noise_removal == "argmax":
    final = jnp.argmax(probs, -1).astype(jnp.int32)
  else:
    final = categorical.sample_categorical(jax.random.fold_in(key, num_steps), _log(probs),
                                           precision)
  return SampleOutput(apply_prefix(final, prefix), jnp.int32(num_steps + 1))
