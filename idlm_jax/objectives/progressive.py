"""Progressive (multi-round) distillation shared by SDTT and DCD (reference/teachers.md §4.4, §6):
rounds that grow the step size and re-copy the teacher from the student, and the per-token
divergences between student and teacher log-probabilities.

The round teacher is a network of the TrainState: `aux["round_teacher"]`, a NetState that no
optimizer trains (`ROUND_TEACHER_TX` = optax.set_to_zero(), never applied). It starts as a
copy of the frozen teacher (train/state.create_state copies the initial params into every aux
network), is replaced by the student at the start of each round, and is checkpointed and
resumed with the rest of the state. Its `step` counts the copies made, i.e. the round the
teacher belongs to. The frozen teacher (`frozen["teacher"]`) stays the original one, for the
teacher-vs-student report.

  round(step) = min(step // round_steps, num_rounds - 1)
  copy before step k  iff  k > 0, k % round_steps == 0 and k // round_steps < num_rounds
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax.objectives import accumulate
from idlm_jax.objectives.base import Context, Objective
from idlm_jax.objectives.state import apply_gradients

ROUND_TEACHER = "round_teacher"
ROUND_TEACHER_TX = optax.set_to_zero()  # no optimizer moments: the network is only copied
DIVERGENCES = ("kl-bwd", "kl-fwd", "mse", "tvd")


def round_index(step: jax.Array, round_steps: int, num_rounds: int) -> jax.Array:
  """int32 [] round of train step `step` (0-based), capped at the last round."""
  return jnp.minimum(step // round_steps, num_rounds - 1).astype(jnp.int32)


def is_boundary(step: jax.Array, round_steps: int, num_rounds: int) -> jax.Array:
  """bool []: step k > 0 starts a new round, so the teacher is re-copied before it."""
  return jnp.logical_and(jnp.logical_and(step > 0, step % round_steps == 0),
                         step // round_steps < num_rounds)


def copy_student_to_teacher(state, round_steps: int, num_rounds: int, source: str = "params",
                            reset_student: bool = False):
  """The state with aux[ROUND_TEACHER] = the student at a round boundary, unchanged elsewhere.

  source: "params" (the raw student weights: SDTT's and DCD's default) or "ema_params" (SDTT
  use_ema_on_growth, DCD teacher_ema). reset_student (SDTT use_ema_on_growth): the student's
  params become that EMA too, and the EMA restarts from them. A `lax.cond`: only boundary
  steps copy.
  """
  def copy(state):
    teacher = state.aux[ROUND_TEACHER]
    src = getattr(state, source)
    new = teacher.replace(step=teacher.step + 1, params=src, ema_params=src)
    state = state.replace(aux={**state.aux, ROUND_TEACHER: new})
    if reset_student:
      state = state.replace(params=src, ema_params=src)
    return state

  return jax.lax.cond(is_boundary(state.step, round_steps, num_rounds), copy, lambda s: s,
                      state)


def divergence(log_p: jax.Array, log_q: jax.Array, kind: str) -> jax.Array:
  """Per-row divergence [...] of the student's log p and the teacher's log q [..., V].

  kl-bwd  KL(p || q) = sum_v p_v (log p_v - log q_v)   (SDTT's default "reverse KL", DCD's)
  kl-fwd  KL(q || p) = sum_v q_v (log q_v - log p_v)
  mse     sum_v (log p_v - log q_v)^2                  (SDTT `mse` on log-probs, summed over v)
  tvd     1/2 sum_v |p_v - q_v|                        (total variation of the probabilities)
  Rows may hold SUBS' -1e6 entries: exp gives exactly 0 there, and both sides share them.
  """
  if kind == "kl-bwd":
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  if kind == "kl-fwd":
    return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)
  if kind == "mse":
    return jnp.sum(jnp.square(log_p - log_q), axis=-1)
  if kind == "tvd":
    return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)
  raise ValueError(f"divergence: unknown {kind!r} (known: {DIVERGENCES})")


def mean_divergence(log_p: jax.Array, log_q: jax.Array, weights: jax.Array, kind: str,
                    precision: str = "float32") -> tuple[jax.Array, jax.Array]:
  """(sum_i w_i D(p_i, q_i) / sum_i w_i, sum_i w_i) over positions i, as float32.

  precision "float64" (SDTT/DCD `loss_precision`): both log-prob tensors, the divergence and
  the reduction in float64, with x64 enabled only while tracing this function; the gradient
  flows back through the casts.
  """
  def reduce(dtype):
    d = divergence(log_p.astype(dtype), log_q.astype(dtype), kind)
    w = weights.astype(dtype)
    count = jnp.sum(w)
    return (jnp.sum(d * w) / jnp.maximum(count, 1.0)).astype(jnp.float32), count

  if precision == "float64":
    with jax.enable_x64(True):
      loss, count = reduce(jnp.float64)
      return loss, count.astype(jnp.float32)
  if precision != "float32":
    raise ValueError(f"loss_precision: unknown {precision!r} ('float32', 'float64')")
  return reduce(jnp.float32)


def make_objective(ctx: Context, loss_fn: Callable, rounds, *, source: str, round_arg: Callable,
                   scope: str, reset_student: bool = False) -> Objective:
  """The progressive train step of SDTT and DCD: re-copy the round teacher at round boundaries
  (`copy_student_to_teacher` from `source`), then one student update on k microbatches
  (accumulate.py) of loss_fn(params, teacher_params, batch, key, arg) -> (mean loss, tokens),
  where (arg, metrics) = round_arg(r) for the step's round r (the teacher's step size).
  rounds: the config section with round_steps and num_rounds. The eval step is the student's
  own validation NELBO under its process (a denoising check)."""
  config = ctx.config
  ema, tx, k = config.optim.ema, ctx.tx, config.train.microbatches
  round_steps, num_rounds = rounds.round_steps, rounds.num_rounds
  net = functools.partial(nnx.merge, ctx.graphdef)

  def mean_loss(params, batch, key, teacher_params, arg):
    loss, tokens = loss_fn(params, teacher_params, batch, key, arg)
    return loss, (tokens, {})

  def train_step(state, frozen, batch):
    del frozen  # the round teacher lives in the state (module docstring)
    state = copy_student_to_teacher(state, round_steps, num_rounds, source,
                                    reset_student=reset_student)
    key = jax.random.fold_in(state.key(), state.step)
    r = round_index(state.step, round_steps, num_rounds)
    arg, extra = round_arg(r)
    teacher = state.aux[ROUND_TEACHER]
    with jax.named_scope(scope):  # k microbatches, one update
      loss, tokens, grads, _ = accumulate.mean_grad(mean_loss, state.params, batch, key, k,
                                                    teacher.params, arg)
    state = apply_gradients(state, grads, tx, ema)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": tokens,
               "round": r.astype(jnp.float32), **extra}
    return state, metrics

  def eval_step(params, frozen, batch, key):
    del frozen
    return ctx.process.eval_sums(net(params), batch, key)

  return Objective(train_step=train_step, eval_step=eval_step,
                   aux_txs={ROUND_TEACHER: ROUND_TEACHER_TX})
