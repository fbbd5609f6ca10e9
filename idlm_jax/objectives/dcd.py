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
import optax
from flax import nnx

from idlm_jax.diffusion import uniform
from idlm_jax.diffusion.schedules import sample_t
from idlm_jax.objectives import Objective, diffusion, progressive, teachers
from idlm_jax.train.state import apply_gradients


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
  k_t, k_w, k_drop = jax.random.split(key, 3)
  t, s = trajectory_times(sample_t(k_t, x0.shape[0], eps, antithetic), delta)
  z_t, z_s = trajectory(k_w, x0, transform.gamma(t), transform.gamma(s), transform.vocab_size)
  sigma = lambda u: -jnp.log(transform.alpha(u))
  log_p = jax.nn.log_softmax(
      net(student_params)(z_t, sigma(t), dropout_key=k_drop).astype(jnp.float32), axis=-1)
  log_q = jax.lax.stop_gradient(jax.nn.log_softmax(
      net(teacher_params)(z_s, sigma(s)).astype(jnp.float32), axis=-1))
  return progressive.mean_divergence(log_p, log_q, teachers.valid_weights(batch), kind,
                                     precision)


def get_transform(config):
  """Duo's T: gamma -> alpha over [diffusion.gamma_min, gamma_max] for the model vocabulary."""
  from idlm_jax.data import tokenizers
  from idlm_jax.diffusion import duo_integral
  f = config.diffusion
  return duo_integral.DuoTransform.create(
      tokenizers.get_tokenizer(config.data.tokenizer).model_vocab_size, f.gamma_min,
      f.gamma_max, cache_dir=config.data.cache_dir, num_points=f.duo_table_points)


def make_objective(config, graphdef, tx, mask_id: int) -> Objective:
  """Pure DCD step: re-copy the round teacher at round boundaries, then one student update."""
  d = config.distill.dcd
  f = config.diffusion
  if f.algo != "duo":
    raise ValueError(f"dcd: distils Duo teachers, got diffusion.algo={f.algo!r}")
  ema = config.optim.ema
  net = functools.partial(nnx.merge, graphdef)
  loss_fn = functools.partial(dcd_loss, net, get_transform(config), eps=f.eps,
                              antithetic=f.antithetic, kind=d.divergence,
                              precision=d.loss_precision)
  _, eval_sums = diffusion.teacher_losses(config, mask_id)
  source = "ema_params" if d.teacher_ema else "params"

  def train_step(state, frozen, batch):
    del frozen  # the round teacher lives in the state (progressive.py)
    state = progressive.copy_student_to_teacher(state, d.round_steps, d.num_rounds, source)
    key = jax.random.fold_in(state.key(), state.step)
    r = progressive.round_index(state.step, d.round_steps, d.num_rounds)
    delta = step_size(r, d.T)
    teacher = state.aux[progressive.ROUND_TEACHER]
    (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, teacher.params, batch, key, delta)
    state = apply_gradients(state, grads, tx, ema)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": tokens,
               "round": r.astype(jnp.float32), "dt": delta}
    return state, metrics

  def eval_step(params, frozen, batch, key):
    """The student's own validation NELBO (UDLM's closed form) as a denoising check."""
    del frozen
    return eval_sums(net(params), batch, key)

  return Objective(train_step=train_step, eval_step=eval_step,
                   aux_txs={progressive.ROUND_TEACHER: progressive.ROUND_TEACHER_TX})
