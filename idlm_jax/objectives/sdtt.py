"""SDTT: self-distillation through time of an MDLM teacher (Deschenaux & Gulcehre 2024;
reference/teachers.md §6).

Round r (progressive.py) has the teacher step dt_r = (1 - eps) / orig_steps * n^r with
n = num_distill_steps (2) and eps = sample.eps (1e-5, also the lower end of the training t).
One train step:
  1. t ~ U[eps, 1] (antithetic), x_t ~ q(x_t | x) (masking with alpha_t of the schedule).
  2. Teacher targets (`teacher_targets`): n teacher ancestral steps t_i -> t_i - dt_r,
     t_i = max(t - i dt_r, eps); every token unmasked at step i gets the teacher's
     log x_theta of step i as its target; tokens still masked at the end get the last step's.
  3. Student: one SUBS forward at (x_t, t); it learns the jump of n dt_r in one step.
  4. Loss (progressive.divergence, default kl-bwd = KL(student || teacher)) averaged over the
     masked, valid positions of x_t.
At each round boundary the student is copied into the teacher (the reference's raw weights,
or its EMA with use_ema_on_growth), so after round r the student samples with
orig_steps / n^(r+1) steps: 1024 -> 512 -> ... -> 8 over the paper's 7 rounds.

Differences from the reference code (jdeschena/sdtt `_teacher_logprobs_on_mask`), both
deliberate: its time points come from linspace(1, 0, n) between t and t - n dt, which for n = 2
are t and t - 2 dt (the second step then covers [t - 2dt, t - 3dt]; MDLM ignores t, so only its
unmasking probability differs); we take the contiguous steps t, t - dt. Its `mse` averages over
the vocabulary as well; ours sums over it (a constant factor).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from idlm_jax import fields as F
from idlm_jax import rng
from idlm_jax.diffusion import categorical, mdlm
from idlm_jax.diffusion.mdlm import masked_posterior_logits
from idlm_jax.diffusion.processes import valid_weights
from idlm_jax.diffusion.schedules import sample_t
from idlm_jax.fields import ConfigError, Field
from idlm_jax.objectives import progressive
from idlm_jax.objectives.base import Context, Objective, ObjectiveSpec, register

FIELDS = {
    "distill.sdtt.divergence": Field(
        "kl-bwd", 'objective "sdtt" (self-distillation through time of an MDLM teacher, '
        "teachers.md §6; rounds grow the step size, the teacher re-copied from the student at "
        'each round boundary): divergence on masked tokens, "kl-bwd" (KL(student || teacher), '
        'the reference default), "kl-fwd", "mse" (squared log-prob difference) or "tvd" (total '
        "variation).", choices=progressive.DIVERGENCES),
    "distill.sdtt.num_distill_steps": Field(2, "n: teacher ancestral steps matched by one "
                                            "student step.", check=F.at_least(2)),
    "distill.sdtt.orig_steps": Field(1024, "round 0: teacher step (1 - sample.eps) / orig_steps.",
                                     check=F.at_least(1)),
    "distill.sdtt.round_steps": Field(10_000, "train steps per round (the teacher step grows "
                                      "n-fold each round).", check=F.at_least(1)),
    "distill.sdtt.num_rounds": Field(7, "rounds; the last student samples with orig_steps / "
                                     "n^num_rounds steps.", check=F.at_least(1)),
    "distill.sdtt.use_ema_on_growth": Field(False, "True: the EMA becomes teacher and student at "
                                            "each round."),
    "distill.sdtt.loss_precision": Field("float32", '"float32" or "float64" (x64 inside the loss '
                                         "only).", choices=("float32", "float64")),
}

TEACHER_PRECISION = "exact32"  # the teacher's ancestral draws: exact tails without x64


def subs_log_probs(logits: jax.Array, xt: jax.Array, mask_id: int) -> jax.Array:
  """SUBS log x_theta with the [MASK] entry exactly NEG_INF (as the reference), so student and
  teacher rows agree there and no divergence sees log-softmax rounding at -1e6."""
  log_p = mdlm.subs_log_probs(logits, xt, mask_id)
  return log_p.at[..., mask_id].set(mdlm.NEG_INF)


def teacher_dt(round_index: jax.Array, orig_steps: int, num_distill_steps: int,
               eps: float) -> jax.Array:
  """The teacher's step in round r: (1 - eps)/orig_steps * n^r (float32 [])."""
  return (1.0 - eps) / orig_steps * jnp.power(float(num_distill_steps),
                                              round_index.astype(jnp.float32))


def teacher_targets(log_probs_fn, key: jax.Array, xt: jax.Array, t: jax.Array, dt: jax.Array, *,
                    schedule, num_steps: int, mask_id: int, t_min: float,
                    precision: str = TEACHER_PRECISION) -> jax.Array:
  """SDTT targets [B, L, V]: the teacher's log x_theta at the step each token was unmasked.

  log_probs_fn(x, t) -> SUBS log x_theta [B, L, V]. Step i runs from t_i = max(t - i dt, t_min)
  to s_i = max(t_i - dt, 0) with the MDLM posterior (a masked token becomes v w.p.
  (alpha_s - alpha_t)/(1 - alpha_t) x_theta[v], stays masked w.p. (1 - alpha_s)/(1 - alpha_t));
  unmasked tokens are copied. Tokens unmasked at step i take step i's row; tokens masked
  throughout take the last step's row (unmasked tokens of x_t: the last row, a one-hot copy).
  """
  x = xt
  target, done, log_x0 = None, jnp.zeros(xt.shape, bool), None
  for i in range(num_steps):
    t_i = jnp.maximum(t - i * dt, t_min)
    s_i = jnp.maximum(t_i - dt, 0.0)
    log_x0 = log_probs_fn(x, t_i)
    logits = masked_posterior_logits(log_x0, schedule.alpha(t_i)[:, None, None],
                                     schedule.alpha(s_i)[:, None, None], mask_id, jnp.float32)
    draw = categorical.sample_categorical(rng.fold_in(key, i), logits, precision)
    x_next = jnp.where(x == mask_id, draw, x)
    updated = x_next != x
    target = jnp.where(updated[..., None], log_x0, 0.0 if target is None else target)
    done = jnp.logical_or(done, updated)
    x = x_next
  return jax.lax.stop_gradient(jnp.where(done[..., None], target, log_x0))


def sdtt_loss(net, student_params, teacher_params, batch: dict, key: jax.Array, dt: jax.Array, *,
              schedule, mask_id: int, t_min: float, num_steps: int, antithetic: bool,
              kind: str, precision: str):
  """The SDTT loss of one batch (student in train mode, teacher frozen). -> (loss, tokens)."""
  x0 = batch["input_ids"]
  k_t, k_x, k_teacher, k_drop = rng.split(key, 4)
  t = sample_t(k_t, x0.shape[0], t_min, antithetic)
  xt = mdlm.q_xt(k_x, x0, schedule.alpha(t), mask_id)
  teacher = net(teacher_params)
  teacher_fn = lambda x, s: subs_log_probs(teacher(x, schedule.sigma(s)), x, mask_id)
  target = teacher_targets(teacher_fn, k_teacher, xt, t, dt, schedule=schedule,
                           num_steps=num_steps, mask_id=mask_id, t_min=t_min)
  logits = net(student_params)(xt, schedule.sigma(t), dropout_key=k_drop)
  weights = valid_weights(batch) * (xt == mask_id)
  return progressive.mean_divergence(subs_log_probs(logits, xt, mask_id), target, weights,
                                     kind, precision)


def make(ctx: Context) -> Objective:
  """Pure SDTT step: re-copy the round teacher at round boundaries, then one student update
  (progressive.make_objective) with the round's teacher step dt."""
  config = ctx.config
  s, f = config.distill.sdtt, config.diffusion
  t_min = config.sample.eps
  net = functools.partial(nnx.merge, ctx.graphdef)
  loss_fn = functools.partial(sdtt_loss, net, schedule=ctx.process.schedule, mask_id=ctx.mask_id,
                              t_min=t_min, num_steps=s.num_distill_steps,
                              antithetic=f.antithetic, kind=s.divergence,
                              precision=s.loss_precision)

  def round_arg(r):
    dt = teacher_dt(r, s.orig_steps, s.num_distill_steps, t_min)
    return dt, {"student_dt": s.num_distill_steps * dt}

  return progressive.make_objective(
      ctx, loss_fn, s, source="ema_params" if s.use_ema_on_growth else "params",
      reset_student=s.use_ema_on_growth, round_arg=round_arg, scope="sdtt_loss")


def validate(config) -> None:
  """The rounds must keep a whole number of student steps."""
  s = config.distill.sdtt
  if s.orig_steps % s.num_distill_steps ** s.num_rounds:
    raise ConfigError(f"config.distill.sdtt.num_rounds: {s.num_rounds} rounds of "
                      f"{s.num_distill_steps}x leave no whole number of student steps from "
                      f"orig_steps={s.orig_steps}")


SPEC = register(ObjectiveSpec("sdtt", make, "SDTT (baseline)", fields=FIELDS, validate=validate,
                              teacher=True, algos=("mdlm",)))
