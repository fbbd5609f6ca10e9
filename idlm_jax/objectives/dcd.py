"""DCD: discrete consistency distillation of a Duo teacher (Sahoo et al. 2025, Duo `ch-1`
`Distillation`; reference/teachers.md §4.4).

Round r (progressive.py) has the step delta_r = 2^r / T. One train step:
  1. t ~ U[eps, 1] (antithetic), then t <- clip(t + delta, 0, 1) and s = t - delta.
  2. gamma_t, gamma_s linear in t over [gamma_min, gamma_max] (diffusion.gamma_*; DCD: [-4, -1]).
  3. ONE Gaussian draw eps ~ N(0, I) [B, L, K] gives w_t = a~_t x + s~_t eps and
     w_s = a~_s x + s~_s eps: the deterministic discrete trajectory z_t = argmax w_t,
     z_s = argmax w_s (the Gaussian probability-flow ODE seen through argmax).
  4. Student x_theta(z_t, sigma_t), teacher x_theta^-(z_s, sigma_s), sigma = -log alpha and
     alpha = T(a~) through the Duo integral table (diffusion/duo_integral.py).
  5. Loss: KL(student || teacher) per token ("kl-bwd"; "kl-fwd" optional), averaged over all
     valid tokens.
The teacher is re-copied from the current (raw, or EMA with teacher_ema) student at each
round boundary; the reference's copy at step 0 is a no-op here (teacher = student at start).
Paper: T = 512, 5 rounds of 10k steps (delta 1/512 -> 16/512), batch 128, lr 6e-5, warm-up
500, EMA 0.999. The student is a Duo model: sample it with the Duo ancestral sampler
(greedy tail recommended), or load its workdir as an IDLM-DCD teacher (configs/idlm_dcd_owt.py).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from idlm_jax import fields as F
from idlm_jax import rng
from idlm_jax.diffusion import uniform
from idlm_jax.diffusion.processes import valid_weights
from idlm_jax.diffusion.schedules import sample_t
from idlm_jax.fields import ConfigError, Field
from idlm_jax.objectives import progressive
from idlm_jax.objectives.base import Context, Objective, ObjectiveSpec, register

FIELDS = {
    "distill.dcd.T": Field(512, 'objective "dcd" (Duo\'s discrete consistency distillation, '
                           "teachers.md §4.4; the trajectory's gamma range is diffusion."
                           "gamma_min/gamma_max, DCD: [-4, -1]): round 0 step size delta = 1/T; "
                           "round r: 2^r / T.", check=F.at_least(2)),
    "distill.dcd.round_steps": Field(10_000, "train steps per round (update_teacher_every).",
                                     check=F.at_least(1)),
    "distill.dcd.num_rounds": Field(5, "rounds (delta 1/512 -> 16/512 over the paper's 5).",
                                    check=F.at_least(1)),
    "distill.dcd.divergence": Field("kl-bwd", '"kl-bwd" (KL(student || teacher), the paper) or '
                                    '"kl-fwd".', choices=("kl-bwd", "kl-fwd")),
    "distill.dcd.teacher_ema": Field(False, "True: the round teacher is the student's EMA (else "
                                     "its raw weights)."),
    "distill.dcd.loss_precision": Field("float32", '"float32" or "float64" (x64 inside the loss '
                                        "only).", choices=("float32", "float64")),
}


def step_size(round_index: jax.Array, T: int) -> jax.Array:
  """delta_r = 2^r / T (float32 [])."""
  return jnp.power(2.0, round_index.astype(jnp.float32)) / T


def trajectory_times(t: jax.Array, delta: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(t, s): t <- clip(t + delta, 0, 1), s = t - delta (ch-1 `Distillation.nll`)."""
  t = jnp.clip(t + delta, 0.0, 1.0)
  return t, t - delta


def trajectory(key: jax.Array, x0: jax.Array, gamma_t: jax.Array, gamma_s: jax.Array,
               vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """(z_t, z_s) int32 [B, L]: argmax of the Gaussian latents at gamma_t and gamma_s built from
  the same noise (uniform.gaussian_latent with the same key draws the same eps)."""
  w_t = uniform.gaussian_latent(key, x0, gamma_t, vocab_size)
  w_s = uniform.gaussian_latent(key, x0, gamma_s, vocab_size)
  return (jnp.argmax(w_t, axis=-1).astype(jnp.int32),
          jnp.argmax(w_s, axis=-1).astype(jnp.int32))


def dcd_loss(net, transform, student_params, teacher_params, batch: dict, key: jax.Array,
             delta: jax.Array, *, eps: float, antithetic: bool, kind: str, precision: str):
  """The DCD loss of one batch (student in train mode, teacher frozen). -> (loss, tokens)."""
  x0 = batch["input_ids"]
  k_t, k_w, k_drop = rng.split(key, 3)
  t, s = trajectory_times(sample_t(k_t, x0.shape[0], eps, antithetic), delta)
  z_t, z_s = trajectory(k_w, x0, transform.gamma(t), transform.gamma(s), transform.vocab_size)
  sigma = lambda u: -jnp.log(transform.alpha(u))
  log_p = jax.nn.log_softmax(
      net(student_params)(z_t, sigma(t), dropout_key=k_drop).astype(jnp.float32), axis=-1)
  log_q = jax.lax.stop_gradient(jax.nn.log_softmax(
      net(teacher_params)(z_s, sigma(s)).astype(jnp.float32), axis=-1))
  return progressive.mean_divergence(log_p, log_q, valid_weights(batch), kind,
                                     precision)


def make(ctx: Context) -> Objective:
  """Pure DCD step: re-copy the round teacher at round boundaries, then one student update
  (progressive.make_objective) with the round's step size delta."""
  config = ctx.config
  d, f = config.distill.dcd, config.diffusion
  net = functools.partial(nnx.merge, ctx.graphdef)
  loss_fn = functools.partial(dcd_loss, net, ctx.process.transform, eps=f.eps,
                              antithetic=f.antithetic, kind=d.divergence,
                              precision=d.loss_precision)

  def round_arg(r):
    delta = step_size(r, d.T)
    return delta, {"dt": delta}

  return progressive.make_objective(
      ctx, loss_fn, d, source="ema_params" if d.teacher_ema else "params",
      round_arg=round_arg, scope="dcd_loss")


def validate(config) -> None:
  """The last round's step 2^(R-1)/T must stay below 1."""
  d = config.distill.dcd
  if 2 ** (d.num_rounds - 1) >= d.T:
    raise ConfigError(f"config.distill.dcd.num_rounds: the last step 2^{d.num_rounds - 1}"
                      f"/T must be < 1 (T={d.T})")


SPEC = register(ObjectiveSpec("dcd", make, "Duo-DCD (baseline)", fields=FIELDS,
                              validate=validate, teacher=True, algos=("duo",)))
