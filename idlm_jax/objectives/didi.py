"""DiDi-Instruct: integral-KL distillation of an MDLM teacher by policy gradient
(reference/didi_instruct.md §1-3, §8).

  grad L = E_{tau, x ~ p_nu, z ~ Q(.|x)} [ omega(tau)/pi(tau) R(z, tau) grad log p_nu(x) ]   (§1.1)

R = log q_nu/q_theta is estimated by a discriminator d (teacher trunk + spectral-norm head,
models/discriminator.py) fitted to tell real sequences (data, or teacher samples) from student
samples, both masked at the same tau. One train step (§8), from B real rows:
  1. tau ~ Beta(a, b) clamped to [tau_min, tau_max], one per rollout, N = B G rollouts.
  2. Two-step student rollout (SUBS, ancestral): all-[MASK] at t=1 -> x_tau -> x0_hat at t0;
     log p_nu(x0_hat) ~ logp_1 + logp_2, each the sum of log x_theta at the NEWLY unmasked
     tokens (intermediate-state matching, §1.3; staying masked has a constant probability).
  3. z_real, z_fake: real rows (repeated G times) and x0_hat masked at rate 1 - alpha(tau).
  4. Discriminator update: label-smoothed BCE on masked positions, 1/2 (real + fake).
  5. Reward (updated d, no dropout): r = mean over z_fake's masked positions of the clipped
     log-odds log(sig(d) + 1e-6) - log(1 - sig(d) + 1e-6); grouped normalisation over each G
     consecutive rollouts, A = clip((r - mean_g) / (std_g + 1e-8)).
  6. Student update: L = -mean(sg(omega A) (logp_1 + logp_2)) + kl_beta (kl_hi KL_1 + kl_lo KL_2)
     - entropy_beta H, with KL_k = forward KL(teacher || student) at rollout step k; omega =
     -alpha'/(1 - alpha) at tau clipped (optionally / pi(tau)).
The rollout's log-probabilities are differentiated with ONE forward per step (jax.vjp, kept
across the discriminator update), where the reference recomputes each step with grad. The
first step's input is the same for every rollout (all-[MASK] at t = 1), so the teacher (and the
student, without dropout) run it on one row (first_step_output). Without dropout the
discriminator's frozen blocks (all but the last unfreeze_blocks) run once on the fake side:
the update cannot move them, so the reward reads their output from the update's forward. In
one pass XLA merges the two forwards anyway; with train.microbatches the update and the
rewards are separate loops that it cannot merge, and this saves 8 of DiT-small's 12 blocks
over the N rollouts (~0.6x a teacher step's FLOPs).
Every network (student, teacher, discriminator trunk) sees sigma through the same DIT, which
zeros it for `model.time_conditioning=False`, so the time input is handled consistently
(§3.2's pitfall); the discriminator and the student are new copies made after the teacher is
loaded (train/state.create_state; §3.1's pitfall).
"""

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from idlm_jax import fields as F
from idlm_jax import rng
from idlm_jax.decoding import ancestral
from idlm_jax.diffusion import categorical, mdlm
from idlm_jax.diffusion.processes import valid_weights
from idlm_jax.fields import Check, ConfigError, Field
from idlm_jax.models import discriminator as disc_lib
from idlm_jax.objectives import accumulate
from idlm_jax.objectives.base import Context, Objective, ObjectiveSpec, register
from idlm_jax.objectives.state import AuxNet, apply_gradients, make_optimizer

FIELDS = {
    "distill.didi.group_size": Field(
        4, "DiDi-Instruct (objective \"didi\"): the student is optimised by optim.* (the paper: "
        "grad_clip 0.5, EMA 0.999); the discriminator (teacher trunk + spectral-norm head, "
        'TrainState.aux["disc"]) by AdamW with optim.* betas/schedule and the fields below. One '
        "step: B = train.global_batch_size real rows, B x group_size student rollouts. G: "
        "rollouts per real row; rewards are normalised within each G.",
        check=F.at_least(2, "grouped reward normalisation")),
    "distill.didi.real": Field("data", 'the discriminator\'s real side: "data" rows or '
                               '"teacher" samples.', choices=("data", "teacher")),
    "distill.didi.teacher_steps": Field(64, 'ancestral steps of the teacher samples when real = '
                                        '"teacher".', check=F.at_least(1)),
    "distill.didi.disc_lr": Field(1e-5, "discriminator AdamW learning rate.", check=F.positive),
    "distill.didi.disc_grad_clip": Field(1.0, "discriminator global-norm clipping (0 disables).",
                                         check=F.non_negative_or_off("0 disables")),
    "distill.didi.disc_weight_decay": Field(0.0, "discriminator AdamW weight decay.",
                                            check=F.non_negative),
    "distill.didi.unfreeze_blocks": Field(4, "trainable last blocks of the discriminator trunk "
                                          "(+ the head).", check=F.non_negative),
    "distill.didi.label_smoothing": Field(0.1, "BCE targets 1 - s (real) and s (fake).",
                                          check=Check(lambda v: 0 <= v < 0.5, "in [0, 0.5)")),
    "distill.didi.tau_a": Field(2.0, "coupled time tau ~ Beta(tau_a, tau_b) (Beta(2,2); "
                                "Beta(1,1) = uniform) ...", check=F.positive),
    "distill.didi.tau_b": Field(2.0, "... (the second Beta parameter) ...", check=F.positive),
    "distill.didi.tau_min": Field(0.02, "... clamped to [tau_min, tau_max].", check=F.unit_open),
    "distill.didi.tau_max": Field(0.98, "upper end of tau's clamp.", check=F.unit_open),
    "distill.didi.t0": Field(1e-3, "end time of the student's second rollout step (1 -> tau -> "
                             "t0).", check=F.unit_right_open),
    "distill.didi.omega_min": Field(0.1, "omega(tau) = -alpha'/(1 - alpha) clipped to "
                                    "[omega_min, omega_max].", check=F.non_negative),
    "distill.didi.omega_max": Field(10.0, "upper clip of omega(tau).", check=F.positive),
    "distill.didi.importance_weight": Field(False, "divide omega by the Beta pdf pi(tau)."),
    "distill.didi.reward_clip": Field(8.0, "per-token discriminator log-odds clipped to "
                                      "+-reward_clip.", check=F.positive),
    "distill.didi.advantage_clip": Field(3.0, "group-normalised advantages clipped to "
                                         "+-advantage_clip.", check=F.positive),
    "distill.didi.kl_beta": Field(1.0, "weight of kl_hi KL_1 + kl_lo KL_2, forward KL(teacher || "
                                  "student) ...", check=F.non_negative),
    "distill.didi.kl_hi": Field(0.01, "... at rollout step 1 (all-mask input)",
                                check=F.non_negative),
    "distill.didi.kl_lo": Field(0.01, "... at rollout step 2 (input x_tau)", check=F.non_negative),
    "distill.didi.entropy_beta": Field(5e-4, "entropy bonus (subtracted from the loss).",
                                       check=F.non_negative),
    "distill.didi.nan_to_num": Field(True, "replace NaN/Inf gradient entries by finite values "
                                     "(reference)."),
}

ROLLOUT_PRECISION = "inverse_cdf"  # draws inside the step (distill.train_draw; no x64 there)
LOG_ODDS_EPS = 1e-6  # the reference's log(sig + 1e-6) - log(1 - sig + 1e-6)
ADV_EPS = 1e-8


# ------------------------------------------------------------------ pure maths


def sample_tau(key: jax.Array, n: int, a: float, b: float, lo: float, hi: float):
  """(tau [n], pi(tau) [n]): tau ~ Beta(a, b) clamped to [lo, hi]; pi is the Beta pdf (§2.2)."""
  tau = jnp.clip(rng.beta(key, a, b, (n,)), lo, hi)
  return tau, jnp.exp(jax.scipy.stats.beta.logpdf(tau, a, b))


def time_weight(schedule, tau: jax.Array, lo: float, hi: float, pi=None) -> jax.Array:
  """omega(tau) = -alpha'(tau) / (1 - alpha(tau)) clipped to [lo, hi] (1/tau for log-linear),
  divided by pi(tau) when given (the importance weight)."""
  w = jnp.clip(mdlm.nelbo_weight(schedule.alpha(tau), schedule.dalpha(tau)), lo, hi)
  return w if pi is None else w / pi


def token_log_odds(logits: jax.Array, clip: float) -> jax.Array:
  """clip(log(sig(d) + 1e-6) - log(1 - sig(d) + 1e-6), +-clip): ~ d, the estimated log ratio."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  return jnp.clip(jnp.log(p + LOG_ODDS_EPS) - jnp.log(1.0 - p + LOG_ODDS_EPS), -clip, clip)


def sequence_rewards(logits: jax.Array, masked: jax.Array, clip: float) -> jax.Array:
  """r [N]: mean clipped log-odds over each row's masked positions (0 with none)."""
  masked = masked.astype(jnp.float32)
  return (token_log_odds(logits, clip) * masked).sum(-1) / jnp.maximum(masked.sum(-1), 1.0)


def group_advantages(rewards: jax.Array, group_size: int, clip: float) -> jax.Array:
  """A = clip((r - mean_g r) / (std_g r + 1e-8), +-clip) over consecutive groups of G rollouts;
  std is the unbiased estimate (torch's default), GRPO-style (§2.1)."""
  g = rewards.reshape(-1, group_size).astype(jnp.float32)
  centred = g - g.mean(axis=1, keepdims=True)
  std = jnp.sqrt((centred ** 2).sum(axis=1, keepdims=True) / (group_size - 1))
  return jnp.clip(centred / (std + ADV_EPS), -clip, clip).reshape(-1)


def masked_mean(values: jax.Array, weights: jax.Array, count=None) -> jax.Array:
  """sum(values * weights) / max(count, 1), count = sum(weights) unless given (a microbatch
  divides by the whole batch's count: objectives/accumulate.py)."""
  count = weights.sum() if count is None else count
  return (values * weights).sum() / jnp.maximum(count, 1.0)


def smoothed_bce(logits: jax.Array, target: float, weights: jax.Array, count=None) -> jax.Array:
  """Masked mean of BCE-with-logits softplus(d) - y d at smoothed label y."""
  return masked_mean(jax.nn.softplus(logits) - target * logits, weights, count)


def discriminator_loss(logits_real, masked_real, logits_fake, masked_fake,
                       smoothing: float, counts=(None, None)) -> jax.Array:
  """L_D = 1/2 (BCE(real, 1 - s) + BCE(fake, s)), each over its masked positions (§1.2);
  counts: the whole batch's (real, fake) masked counts when this is a microbatch."""
  return 0.5 * (smoothed_bce(logits_real, 1.0 - smoothing, masked_real, counts[0]) +
                smoothed_bce(logits_fake, smoothing, masked_fake, counts[1]))


def policy_gradient_loss(logp: jax.Array, weight: jax.Array, advantage: jax.Array) -> jax.Array:
  """-mean(sg(omega A) log p): its gradient is the score-function estimator (§1.3)."""
  return -jnp.mean(jax.lax.stop_gradient(weight * advantage) * logp)


def forward_kl(log_teacher: jax.Array, log_student: jax.Array, masked: jax.Array,
               count=None) -> jax.Array:
  """Mean over masked positions of KL(teacher || student) = sum_v p_T (log p_T - log p_S);
  the teacher is a constant (§2.3). count: see masked_mean."""
  log_teacher = jax.lax.stop_gradient(log_teacher)
  kl = jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=-1)
  return masked_mean(kl, masked, count)


def mean_entropy(log_p: jax.Array, masked: jax.Array, count=None) -> jax.Array:
  """Mean categorical entropy -sum_v p log p over masked positions."""
  return masked_mean(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1), masked, count)


def ancestral_step(key, log_x0, x, alpha_t, alpha_s, mask_id: int,
                   precision: str = ROLLOUT_PRECISION):
  """One MDLM ancestral step t -> s ([N] times): (x_s, log-prob of the newly unmasked tokens
  [N]), differentiable in log_x0 only (the draw is a constant)."""
  logits = mdlm.masked_posterior_logits(jax.lax.stop_gradient(log_x0),
                                            alpha_t[:, None, None], alpha_s[:, None, None],
                                            mask_id, jnp.float32)
  draw = categorical.sample_categorical(key, logits, precision)
  x_s = jnp.where(x == mask_id, draw, x)
  newly = (x == mask_id) & (x_s != mask_id)
  picked = jnp.take_along_axis(log_x0, x_s[..., None], axis=-1)[..., 0]
  return x_s, jnp.where(newly, picked, 0.0).sum(-1)


class Rollout(NamedTuple):
  x_tau: jax.Array  # int32 [N, L]
  x0: jax.Array  # int32 [N, L]: the student sample x0_hat
  logp: jax.Array  # [N] logp_1 + logp_2 (differentiable)
  kl: jax.Array  # [] kl_hi KL_1 + kl_lo KL_2
  entropy: jax.Array  # [] mean of the two steps' masked-position entropies


def first_step_output(net, n: int, seq_len: int, mask_id: int, shared: bool) -> jax.Array:
  """net(all-[MASK], t=1): [n, L, V], or [1, L, V] with `shared`. Every row has the same input
  (all-[MASK] at t = 1), so a network without per-row randomness (no dropout) gives every row
  the same output, and one row stands for all (broadcast it; the gradient sums over rows)."""
  rows = 1 if shared else n
  return net(jnp.full((rows, seq_len), mask_id, jnp.int32), jnp.ones((rows,)))


class RolloutNorms(NamedTuple):
  """The whole batch's normalisers when a rollout is one microbatch of it: `fraction` of the
  batch's rows it holds (every position is masked at t = 1) and the batch's number of masked
  positions of x_tau (`masked_tau`, known after a forward pass over every microbatch)."""
  fraction: jax.Array
  masked_tau: jax.Array


def student_rollout(student, teacher, key, tau, *, schedule, mask_id: int, seq_len: int,
                    t0: float, kl_hi: float = 0.0, kl_lo: float = 0.0,
                    student_2=None, shared_first: bool = False,
                    precision: str = ROLLOUT_PRECISION, norms: RolloutNorms = None) -> Rollout:
  """The two-step rollout 1 -> tau -> t0 (§1.3). student/teacher(x, t) -> SUBS log x_theta
  [N, L, V]; teacher=None skips the KL terms; student_2 (default: student) runs the second
  step (the same network with another dropout draw). The teacher is deterministic, so its
  first-step output is computed on one row; `shared_first=True` does the same for the
  student (valid when it has no dropout): the values and gradients are those of N rows, the
  first step's network work is 1/N. `precision`: the draws' categorical.DRAWS entry.
  `norms`: the rollout is a microbatch and kl/entropy are its shares of the batch's means
  (they add up over the microbatches)."""
  student_2 = student_2 or student
  n = tau.shape[0]
  k1, k2 = rng.split(key)
  frac, count2 = (1.0, None) if norms is None else norms
  one, end = jnp.ones((n,)), jnp.full((n,), t0)
  x1 = jnp.full((n, seq_len), mask_id, jnp.int32)
  log1 = first_step_output(student, n, seq_len, mask_id, shared_first)
  x_tau, logp1 = ancestral_step(k1, jnp.broadcast_to(log1, (n,) + log1.shape[1:]), x1,
                                schedule.alpha(one), schedule.alpha(tau), mask_id, precision)
  log2 = student_2(x_tau, tau)
  x0, logp2 = ancestral_step(k2, log2, x_tau, schedule.alpha(tau), schedule.alpha(end), mask_id,
                             precision)
  m1 = jnp.ones(log1.shape[:2], jnp.float32)  # all positions masked at t = 1
  m2 = (x_tau == mask_id).astype(jnp.float32)
  kl = jnp.zeros(())
  if teacher is not None and kl_hi:
    kl += kl_hi * frac * forward_kl(first_step_output(teacher, 1, seq_len, mask_id, True),
                                    log1, m1)
  if teacher is not None and kl_lo:
    kl += kl_lo * forward_kl(teacher(x_tau, tau), log2, m2, count2)
  entropy = 0.5 * (frac * mean_entropy(log1, m1) + mean_entropy(log2, m2, count2))
  return Rollout(x_tau, x0, logp1 + logp2, kl, entropy)


# ------------------------------------------------------------------ networks and optimizers


def disc_optimizer(config, labels: dict) -> optax.GradientTransformation:
  """AdamW at distill.didi.disc_lr with clipping disc_grad_clip on the leaves labelled "train"
  (disc_lib.trainable_labels); every other leaf gets a zero update and no moments."""
  d = config.distill.didi
  o = ml_collections.ConfigDict(config.optim.to_dict())
  o.update(lr=d.disc_lr, grad_clip=d.disc_grad_clip, weight_decay=d.disc_weight_decay)
  train = make_optimizer(o, config.train.steps)
  return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels)


def disc_network(config, vocab_size: int):
  """(graphdef, abstract params nnx.State) of the discriminator, nothing allocated."""
  return disc_lib.abstract(config.model, vocab_size)


def _nan_to_num(tree):
  return jax.tree.map(jnp.nan_to_num, tree)


def _nonfinite(tree) -> jax.Array:
  """Number of leaves holding a NaN/Inf entry (float32, a finite metric so the loop's NaN stop
  does not fire on what nan_to_num repairs). A leaf's sum is NaN/Inf iff it holds one (or
  overflows float32). Not an int count of entries: with train.microbatches > 1 some gradient
  leaves become compile-time constants after the accumulation scan, and XLA constant-folded
  the int sum(~isfinite) over those [V, d] leaves: 49 of the 70 s that the DiT-small DiDi
  step took to compile on a CPU (20 s now, one block, k = 2)."""
  return sum((~jnp.isfinite(jnp.sum(x))).astype(jnp.float32) for x in jax.tree.leaves(tree))


def discriminator_update(disc, disc_net, tx, labels, sides, key: rng.RowKey, smoothing: float,
                         nan_to_num: bool, frozen_blocks: Optional[int] = None):
  """One discriminator step on sides = (z_real, m_real, z_fake, m_fake, sigma), k stacked
  microbatches [k, rows, ...] (k = 1: the whole batch), `key` a RowKey whose rows are [k, rows]:
  power iteration of the spectral norms, then the BCE gradient of the leaves labelled "train"
  (the frozen ones are stop-gradient inside the loss, so no backward runs through the frozen
  blocks; the optimizer zeroes their updates). Each microbatch's BCE sums are divided by the
  whole batch's masked counts, so the summed gradient is the whole batch's.

  frozen_blocks = j (valid without dropout: the blocks then compute the same in the update
  and in the reward): the embedding and the first j blocks (all frozen) run once, outside the
  gradient, and their output on the fake side [k, rows, L, d] is returned for the rewards,
  which the update cannot change (Discriminator.logits_from). None: every block runs inside
  the loss, in train mode. -> (NetState, metrics, fake-side hidden states or None)."""
  params = disc_lib.power_iterate_params(disc.params)
  frozen = jax.tree.map(lambda label: label == "frozen", labels)
  counts = (sides[1].sum(), sides[3].sum())

  def one(x):
    (z_real, m_real, z_fake, m_fake, sigma), rows = x
    k_r, k_f = rng.split(key.replace(rows=rows))
    h_real, h_fake = z_real, z_fake
    if frozen_blocks is not None:
      trunk = disc_net(params)
      h_real, h_fake = (jax.lax.stop_gradient(trunk.hidden(z, sigma, blocks=frozen_blocks))
                        for z in (z_real, z_fake))

    def logits(model, h, dropout_key):
      if frozen_blocks is None:
        return model(h, sigma, dropout_key=dropout_key)
      return model.logits_from(h, sigma, start=frozen_blocks)

    def loss_fn(p):
      p = jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, p, frozen)
      model = disc_net(p)
      logits_real, logits_fake = logits(model, h_real, k_r), logits(model, h_fake, k_f)
      loss = discriminator_loss(logits_real, m_real, logits_fake, m_fake, smoothing, counts)
      acc = 0.5 * (masked_mean((logits_real > 0).astype(jnp.float32), m_real, counts[0]) +
                   masked_mean((logits_fake < 0).astype(jnp.float32), m_fake, counts[1]))
      return loss, acc

    kept = None if frozen_blocks is None else h_fake
    return jax.value_and_grad(loss_fn, has_aux=True)(params), kept

  ((loss, acc), grads), h_fake = accumulate.sum_and_stack(one, (sides, key.rows))
  metrics = {"disc_loss": loss, "disc_acc": acc, "disc_nonfinite": _nonfinite(grads)}
  grads = _nan_to_num(grads) if nan_to_num else grads
  disc = apply_gradients(disc.replace(params=params), grads, tx, 0.0)  # no EMA: RGAS reads params
  return disc, {**metrics, "disc_grad_norm": optax.tree.norm(grads)}, h_fake


# ------------------------------------------------------------------ the objective


def make(ctx: Context) -> Objective:
  """Pure DiDi-Instruct step: discriminator update, then the student's policy-gradient update."""
  config, mask_id, proc = ctx.config, ctx.mask_id, ctx.process
  d = config.distill.didi
  schedule = proc.schedule
  net = functools.partial(nnx.merge, ctx.graphdef)
  disc_graphdef, disc_abstract = disc_network(config, ctx.vocab_size)
  disc_net = functools.partial(nnx.merge, disc_graphdef)
  labels = disc_lib.trainable_labels(nnx.to_pure_dict(disc_abstract), d.unfreeze_blocks)
  d_tx = disc_optimizer(config, labels)
  G, seq_len, ema, tx = int(d.group_size), config.data.seq_len, config.optim.ema, ctx.tx
  # without dropout the discriminator's frozen blocks compute the same in its update and in
  # the rewards: run them once (discriminator_update's frozen_blocks)
  frozen_blocks = (max(config.model.n_blocks - d.unfreeze_blocks, 0)
                   if config.model.dropout == 0.0 else None)

  def log_probs(params, dropout_key=None):
    return proc.log_probs_fn(net(params), dropout_key)

  def real_rows(frozen, batch, key, n):
    """The real side: data rows (each repeated G times), or fresh teacher samples."""
    if d.real == "teacher":
      out = ancestral.mdlm_ancestral(log_probs(frozen["teacher"]), key, batch_size=n,
                                     seq_len=seq_len, mask_id=mask_id, schedule=schedule,
                                     num_steps=d.teacher_steps, cache=True,
                                     time_conditioned=config.model.time_conditioning,
                                     precision=config.distill.train_draw,
                                     noise_removal="argmax")
      return jax.lax.stop_gradient(out.tokens), jnp.ones((n, seq_len), jnp.float32)
    return (jnp.repeat(batch["input_ids"], G, axis=0),
            jnp.repeat(valid_weights(batch), G, axis=0))

  k = config.train.microbatches
  KEYS = ("tau", "roll", "drop", "real", "zr", "zf", "d")

  def step_keys(key, prompts, n):
    """The step's keys (RowKeys) for the rollouts of the prompt rows `prompts` [..., m]:
    prompt p's G rollouts are the rows p G, ..., p G + G - 1 of the n = B G (jnp.repeat's
    order)."""
    rows = prompts[..., None] * G + jnp.arange(G, dtype=jnp.int32)
    rows = rows.reshape(*prompts.shape[:-1], -1)
    return dict(zip(KEYS, rng.split(rng.row_key(key, rows, n), len(KEYS))))

  def rollout(params, frozen, ks, tau, norms=None):
    # every nnx model is built inside the traced function: with model.remat="block" the
    # nnx.remat'd blocks must not belong to an outer trace level
    teacher = log_probs(frozen["teacher"])
    k_1, k_2 = rng.split(ks["drop"])  # residual dropout (train mode), one draw per step
    r = student_rollout(log_probs(params, k_1), teacher, ks["roll"], tau, schedule=schedule,
                        mask_id=mask_id, seq_len=seq_len, t0=d.t0, kl_hi=d.kl_hi,
                        kl_lo=d.kl_lo, student_2=log_probs(params, k_2),
                        shared_first=config.model.dropout == 0.0,
                        precision=config.distill.train_draw, norms=norms)
    reg = d.kl_beta * r.kl - d.entropy_beta * r.entropy
    return (r.logp, reg), r

  def sides(frozen, batch, ks, tau, x0):
    """(z_real, m_real, z_fake, m_fake, sigma): both sides noised to tau, their masks."""
    x_real, valid = real_rows(frozen, batch, ks["real"], tau.shape[0])
    alpha = schedule.alpha(tau)
    z_real = mdlm.q_xt(ks["zr"], x_real, alpha, mask_id)
    z_fake = mdlm.q_xt(ks["zf"], x0, alpha, mask_id)
    m_real = (z_real == mask_id) * valid
    m_fake = (z_fake == mask_id).astype(jnp.float32)
    return z_real, m_real, z_fake, m_fake, schedule.sigma(tau)

  def rewards_and_weights(disc_params, z_fake, h_fake, m_fake, sigma, tau, pi):
    """(rewards r [N], omega [N], sg(omega A) [N]) under the updated discriminator (no
    dropout) on z_fake, or on h_fake, its frozen blocks' output kept from the update."""
    model = disc_net(disc_params)
    logits = (model(z_fake, sigma) if h_fake is None else
              model.logits_from(h_fake, sigma, start=frozen_blocks))
    rewards = sequence_rewards(logits, m_fake, d.reward_clip)
    adv = group_advantages(rewards, G, d.advantage_clip)  # whole groups: one prompt's G rows
    omega = time_weight(schedule, tau, d.omega_min, d.omega_max,
                        pi if d.importance_weight else None)
    return rewards, omega, jax.lax.stop_gradient(omega * adv)

  def whole_batch(state, frozen, batch, key, n):
    """k = 1: one rollout with its VJP kept for the student update."""
    ks = step_keys(key, jnp.arange(batch["input_ids"].shape[0], dtype=jnp.int32), n)
    tau, pi = sample_tau(ks["tau"], n, d.tau_a, d.tau_b, d.tau_min, d.tau_max)
    with jax.named_scope("student_rollout"):
      (logp, reg), vjp_fn, roll = jax.vjp(lambda p: rollout(p, frozen, ks, tau), state.params,
                                          has_aux=True)
    side = sides(frozen, batch, ks, tau, roll.x0)
    with jax.named_scope("discriminator_update"):
      disc, d_metrics, h_fake = discriminator_update(
          state.aux["disc"], disc_net, d_tx, labels, jax.tree.map(lambda x: x[None], side),
          ks["d"].replace(rows=ks["d"].rows[None]), d.label_smoothing, d.nan_to_num,
          frozen_blocks)
    rewards, omega, coef = rewards_and_weights(
        disc.params, side[2], None if h_fake is None else h_fake[0], side[3], side[4], tau, pi)
    with jax.named_scope("student_update"):
      (grads,) = vjp_fn((-coef / n, jnp.ones_like(reg)))
    sums = {"pg": -jnp.sum(coef * logp) / n, "reg": reg, "kl": roll.kl,
            "entropy": roll.entropy}
    return disc, d_metrics, grads, sums, (rewards, omega, logp, tau)

  def microbatched(state, frozen, batch, key, n):
    """k > 1: (A) the rollouts forward, microbatch by microbatch, keeping both sides' noised
    tokens; (B) one discriminator update on them; (C) each rollout again with its VJP (the
    same keys: the same draws), rewards of (A)'s fake side under the updated discriminator,
    gradients summed."""
    m = batch["input_ids"].shape[0] // k
    micro = accumulate.split(batch, k)
    js = jnp.arange(k, dtype=jnp.int32)

    def keys_tau(j):
      ks = step_keys(key, accumulate.rows(j, k, m), n)
      return ks, sample_tau(ks["tau"], m * G, d.tau_a, d.tau_b, d.tau_min, d.tau_max)

    def forward(_, x):
      j, mb = x
      ks, (tau, _) = keys_tau(j)
      roll = rollout(state.params, frozen, ks, tau)[1]
      return None, (sides(frozen, mb, ks, tau, roll.x0),
                    (roll.x_tau == mask_id).sum().astype(jnp.float32))

    with jax.named_scope("student_rollout"):
      _, (side, masked_tau) = jax.lax.scan(forward, None, (js, micro))
    with jax.named_scope("discriminator_update"):  # its key's rows: [k, m G]
      d_key = step_keys(key, accumulate.rows(js[:, None], k, m), n)["d"]
      disc, d_metrics, h_fake = discriminator_update(
          state.aux["disc"], disc_net, d_tx, labels, side, d_key, d.label_smoothing,
          d.nan_to_num, frozen_blocks)
    norms = RolloutNorms(jnp.float32(1.0 / k), masked_tau.sum())

    def student(x):
      j, z_fake, h_fake, m_fake, sigma = x
      ks, (tau, pi) = keys_tau(j)
      (logp, reg), vjp_fn, roll = jax.vjp(lambda p: rollout(p, frozen, ks, tau, norms),
                                          state.params, has_aux=True)
      rewards, omega, coef = rewards_and_weights(disc.params, z_fake, h_fake, m_fake, sigma,
                                                 tau, pi)
      (grads,) = vjp_fn((-coef / n, jnp.ones_like(reg)))
      sums = {"pg": -jnp.sum(coef * logp) / n, "reg": reg, "kl": roll.kl,
              "entropy": roll.entropy}
      return (grads, sums), (rewards, omega, logp, tau)

    with jax.named_scope("student_update"):
      (grads, sums), per_row = accumulate.sum_and_stack(
          student, (js, side[2], h_fake, side[3], side[4]))
    return disc, d_metrics, grads, sums, jax.tree.map(lambda v: v.reshape(-1), per_row)

  def train_step(state, frozen, batch):
    key = jax.random.fold_in(state.key(), state.step)
    n = batch["input_ids"].shape[0] * G
    disc, d_metrics, grads, sums, (rewards, omega, logp, tau) = (
        whole_batch if k == 1 else microbatched)(state, frozen, batch, key, n)
    nonfinite = _nonfinite(grads)
    grads = _nan_to_num(grads) if d.nan_to_num else grads
    grad_norm = optax.tree.norm(grads)
    state = apply_gradients(state, grads, tx, ema)
    state = state.replace(aux={**state.aux, "disc": disc})
    metrics = {"loss": sums["pg"] + sums["reg"], "pg_loss": sums["pg"], "kl": sums["kl"],
               "entropy": sums["entropy"], "reward": rewards.mean(),
               "reward_std": rewards.std(), "omega": omega.mean(), "logp": logp.mean(),
               "grad_norm": grad_norm, "nonfinite": nonfinite, "tau": tau.mean(),
               "tokens": jnp.float32(n * seq_len), **d_metrics}
    return state, metrics

  def eval_step(params, frozen, batch, key):
    """The student's own validation NELBO under the teacher's loss (a denoising check)."""
    del frozen
    return proc.eval_sums(net(params), batch, key)

  def init_disc(teacher_params, key):
    return disc_lib.init_from_teacher(teacher_params, key, config.model.hidden_size)

  return Objective(train_step=train_step, eval_step=eval_step,
                   aux_txs={"disc": AuxNet(d_tx, init_disc, disc_abstract)})


def validate(config) -> None:
  """tau's clamp must be an interval after t0."""
  di = config.distill.didi
  if not di.tau_min < di.tau_max:
    raise ConfigError(f"config.distill.didi.tau_min: must be < tau_max, got {di.tau_min} >= "
                      f"{di.tau_max}")
  if not di.t0 < di.tau_min:
    raise ConfigError(f"config.distill.didi.t0: the rollout ends after tau, must be < tau_min "
                      f"({di.tau_min}), got {di.t0}")


SPEC = register(ObjectiveSpec("didi", make, "DiDi-Instruct", fields=FIELDS, validate=validate,
                              teacher=True, algos=("mdlm",)))

