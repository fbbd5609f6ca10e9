"""IDLM: inverse distillation of a diffusion LM teacher into a few-step student (idlm.md).

  L_IDLM(theta) = L(f*, p_theta) - min_f L(f, p_theta)            (idlm.md §1.1)

L is the teacher's own training loss, f* the frozen teacher, f the fake model fitted to the
student's samples. The student G_theta is a few-step denoiser fed noised REAL data (§3.2): its
output G in the simplex is the soft x0 (§2.1) that is re-noised at an independent time t2 and
scored by teacher and fake. One train step (§3.3): `distill.fake_steps` fake updates (fake
loss L(f, sg G) on fresh batches), then one student update (L(f*, G) - L(f, G) with the fake
frozen); two AdamW optimizers, two EMAs, fp32 master weights.

Each teacher family's pieces are its process's `inverse_parts` (diffusion/processes), the
relaxations diffusion/relax.py:
  mdlm  SUBS student; hard x_t2 ~ Cat(a G + (1 - a) e_mask); gradient only through the loss
        weights (relax.mdlm_inverse_token_loss); ablations "gumbel", "straight_through" feed
        a relaxed x_t2 to the networks and differentiate through it.
  sedd  absorbing SEDD: student G from the score network's masked-position ratios; the same
        hard x_t2; score entropy with soft target ratios r G (App. A of the paper).
  duo   (and udlm): Gaussian latent of G, low-temperature softmax input to teacher and fake
        with the pathwise gradient (relax.duo_soft_input), hard argmax token for the loss,
        UDLM NELBO with soft x0 (uniform.nelbo_per_token_soft).

Prompted rows (IDLM v2's conditional setting, e.g. data.source "reasoning": batches with a
`prompt_mask`, IDLM-MDLM only): the prompt is clamped everywhere. The student's noised input
never masks it (so G is one-hot on it), the re-noised x_t2 that teacher and fake see has it
put back (`clamp_prompt`), a LLaDA network gets the key padding mask of the left prompt pads
(`conditional`), and every loss averages over the response positions only (`loss_weights`).
With hard x_t2 the prompt positions are unmasked, so their per-position losses are 0 anyway;
the normalisation then counts response tokens only. The student's validation NELBO
(eval_step) stays MDLM's unconditional bound.
"""
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax import fields as F
from idlm_jax import rng
from idlm_jax.diffusion.processes import PROCESSES, InverseParts, valid_weights
from idlm_jax.diffusion.processes import chunked
from idlm_jax.diffusion.processes.base import Renoised
from idlm_jax.fields import ConfigError, Field
from idlm_jax.models import dllm
from idlm_jax.objectives import accumulate
from idlm_jax.objectives.base import (Context, Objective, ObjectiveSpec, chunk_error,
                                      register)
from idlm_jax.objectives.state import apply_gradients

FIELDS = {
    "distill.fake_steps": Field(1, "fake-model updates per student update (each on its own "
                                "batch; 1:1).", check=F.at_least(1)),
    "distill.fake_lr": Field(0.0, "the fake model's AdamW lr (0: optim.lr); other optim.* are "
                             "shared.", check=F.non_negative_or_off("0: optim.lr")),
    "distill.relaxation": Field(
        "simplex", 'IDLM-MDLM relaxation of the re-noised student sample: "simplex" (the paper: '
        'hard x_t, gradient through the loss weights), or the ablations "gumbel" (soft '
        'Gumbel-softmax x_t at temperature relax_tau) and "straight_through" (hard one-hot with '
        "softmax gradient).", choices=("simplex", "gumbel", "straight_through")),
    "distill.relax_tau": Field(0.1, 'temperature of the "gumbel" relaxation.', check=F.positive),
    "distill.student_grid": Field(
        0, "the student's input times: 0 draws t in [eps, 1] (antithetic; the paper), K > 0 "
        "the first K points of linspace(1, eps, K + 1), where a K-step sampler calls it "
        "(diffusion/schedules.student_t).", check=F.at_least(0)),
    "distill.stop_path": Field(False, "IDLM-Duo ablation: no pathwise gradient through the soft "
                               "input."),
}


def loss_weights(batch: dict) -> jax.Array:
  """[B, L] float32: the positions every IDLM loss averages over: valid tokens, minus the
  prompt of prompted rows (`prompt_mask` 1: conditioning, never generated)."""
  valid = valid_weights(batch)
  if "prompt_mask" in batch:
    valid = valid * (1.0 - batch["prompt_mask"].astype(jnp.float32))
  return valid


def _per_token(per_position: jax.Array, batch: dict):
  """(mean over the loss positions, their count): the normalisation of every teacher loss."""
  return _mean((per_position * loss_weights(batch)).sum(), batch)


def _mean(total: jax.Array, batch: dict):
  """(total / the number of loss positions, that number)."""
  tokens = loss_weights(batch).sum()
  return total / jnp.maximum(tokens, 1.0), tokens


def conditional(model, batch: dict):
  """The network as the process pieces call it, model(x, sigma, dropout_key=...); for the
  prompted rows of a LLaDA decoder also with the batch's key padding mask (left prompt pads
  hidden, as the SFT loss and block decoding run it)."""
  if "prompt_mask" not in batch or not isinstance(model, dllm.DLLM):
    return model
  mask = batch["attention_mask"]
  return lambda x, sigma=None, dropout_key=None: model(x, sigma, dropout_key=dropout_key,
                                                         attention_mask=mask)


def features(model, batch: dict):
  """`model.features` as the chunked pieces call it, features(x, sigma, dropout_key), with the
  key padding mask of prompted LLaDA rows as in `conditional`."""
  kwargs = {}
  if "prompt_mask" in batch and isinstance(model, dllm.DLLM):
    kwargs = {"attention_mask": batch["attention_mask"]}
  return lambda x, sigma, dropout_key=None: model.features(x, sigma, dropout_key=dropout_key,
                                                           **kwargs)


def clamp_prompt(r: Renoised, batch: dict) -> Renoised:
  """The re-noised student sample with the prompt of prompted rows put back (teacher and fake
  see the real prompt, never [MASK]); hard or soft (probability-vector) network inputs."""
  if "prompt_mask" not in batch:
    return r
  keep, x0 = batch["prompt_mask"] > 0, batch["input_ids"]
  tokens = jnp.where(keep, x0, r.tokens).astype(r.tokens.dtype)
  if r.net_in.ndim == 2:
    net_in = jnp.where(keep, x0, r.net_in).astype(r.net_in.dtype)
  else:
    one_hot = jax.nn.one_hot(x0, r.net_in.shape[-1], dtype=r.net_in.dtype)
    net_in = jnp.where(keep[..., None], one_hot, r.net_in)
  return r._replace(net_in=net_in, tokens=tokens)


def student_sample(proc: InverseParts, net, student_params, batch: dict, k_student: jax.Array,
                   k_renoise: jax.Array, dropout_key=None):
  """(G, r): the student's soft x0 of noised real data and its re-noised sample at t2, both
  with the prompt of prompted rows clamped (module docstring, "Prompted rows")."""
  G = proc.student(conditional(net(student_params), batch), batch, k_student, dropout_key)
  return G, clamp_prompt(proc.renoise(G, k_renoise), batch)


def _net(model, batch: dict) -> chunked.Net:
  return chunked.Net(features(model, batch), model)


def chunked_student_sample(proc: InverseParts, student, batch: dict, k_student: jax.Array,
                           k_renoise: jax.Array, dropout_key=None):
  """`student_sample` over position chunks (proc.chunked): (st, head, r), the student's noised
  input and output features (processes.chunked.Student), its head, and the re-noised sample
  (prompt clamped; soft inputs: its draws, for `chunked_features`)."""
  st = proc.chunked.student(_net(student, batch), batch, k_student, dropout_key)
  head = student.head()
  return st, head, clamp_prompt(proc.chunked.renoise(head, st, k_renoise), batch)


def chunked_features(proc: InverseParts, head, st, r: Renoised, models, batch: dict,
                     dropout_keys):
  """(each of `models`' output features at the re-noised sample r, r with its tokens)."""
  return proc.chunked.features(head, st, r, tuple(_net(m, batch) for m in models),
                               dropout_keys)


def fake_loss(proc: InverseParts, net, fake_params, student_params, batch: dict, key: jax.Array):
  """L(f, sg G): the teacher's loss of the fake model on re-noised student outputs, with the
  student frozen (no dropout) and the fake in train mode. -> (loss, tokens)."""
  k_s, k_r, k_d = rng.split(key, 3)
  if proc.chunked is not None:
    student, fake = net(jax.lax.stop_gradient(student_params)), net(fake_params)
    st, head, r = chunked_student_sample(proc, student, batch, k_s, k_r)
    (h_fake,), r = chunked_features(proc, head, st, r, (fake,), batch, (k_d,))
    return _mean(proc.chunked.fake_loss(head, st, fake.head(), h_fake, r, loss_weights(batch)),
                 batch)
  G, r = jax.tree.map(jax.lax.stop_gradient,
                      student_sample(proc, net, student_params, batch, k_s, k_r))
  out = proc.output(_with_dropout(conditional(net(fake_params), batch), k_d), r)
  return _per_token(proc.fake_loss(out, r, G), batch)


def inverse_loss(proc: InverseParts, net, student_params, fake_params, teacher_params, batch: dict,
                 key: jax.Array):
  """L(f*, G) - L(f, G) on one batch (student in train mode; teacher and fake frozen: only
  student_params is differentiated). -> (loss, tokens)."""
  k_s, k_r, k_d = rng.split(key, 3)
  if proc.chunked is not None:
    st, head, r = chunked_student_sample(proc, net(student_params), batch, k_s, k_r, k_d)
    teacher, fake = net(teacher_params), net(fake_params)
    (h_teacher, h_fake), r = chunked_features(proc, head, st, r, (teacher, fake), batch,
                                              (None, None))
    return _mean(proc.chunked.inverse_loss(head, st, teacher.head(), h_teacher, fake.head(),
                                           h_fake, r, loss_weights(batch)), batch)
  G, r = student_sample(proc, net, student_params, batch, k_s, k_r, k_d)
  out_teacher = proc.output(conditional(net(teacher_params), batch), r)
  out_fake = proc.output(conditional(net(fake_params), batch), r)
  return _per_token(proc.inverse_loss(out_teacher, out_fake, r, G), batch)


def parts(config, process) -> InverseParts:
  """The process's IDLM pieces with config.distill's options (relaxation, draw, ...)."""
  d = config.distill
  return process.inverse_parts(relaxation=d.relaxation, relax_tau=d.relax_tau,
                               draw=d.train_draw, stop_path=d.stop_path,
                               student_grid=d.student_grid)


def make(ctx: Context) -> Objective:
  """Pure IDLM step: `fake_steps` fake updates, then one student update (idlm.md §3.5)."""
  c = ctx.config
  d = c.distill
  proc = parts(c, ctx.process)
  fake_steps = int(d.fake_steps)
  fake_tx = ctx.optimizer(c.train.steps * fake_steps,
                          **({"lr": d.fake_lr} if d.fake_lr > 0 else {}))
  tx, ema = ctx.tx, c.optim.ema
  net = functools.partial(nnx.merge, ctx.graphdef)
  k = c.train.microbatches

  def fake_loss_fn(fake_params, batch, key, student_params):
    loss, tokens = fake_loss(proc, net, fake_params, student_params, batch, key)
    return loss, (tokens, {})

  def student_loss_fn(student_params, batch, key, fake_params, teacher_params):
    loss, tokens = inverse_loss(proc, net, student_params, fake_params, teacher_params, batch,
                                key)
    return loss, (tokens, {})

  def train_step(state, frozen, batches):
    batches = batches if isinstance(batches, tuple) else (batches,)
    if len(batches) != fake_steps + 1:
      raise ValueError(f"idlm: {len(batches)} batches for fake_steps={fake_steps}")
    key = jax.random.fold_in(state.key(), state.step)
    fake = state.aux["fake"]
    fake_losses, fake_norms = [], []
    for i in range(fake_steps):  # fake first, each on its own batch (§3.3)
      with jax.named_scope("fake_update"):  # k microbatches, one update (accumulate.py)
        loss, _, grads, _ = accumulate.mean_grad(fake_loss_fn, fake.params, batches[i],
                                                 jax.random.fold_in(key, i), k, state.params)
        fake = apply_gradients(fake, grads, fake_tx, ema)
      fake_losses.append(loss)
      fake_norms.append(optax.tree.norm(grads))
    with jax.named_scope("student_update"):
      loss, tokens, grads, _ = accumulate.mean_grad(
          student_loss_fn, state.params, batches[-1], jax.random.fold_in(key, fake_steps), k,
          fake.params, frozen["teacher"])
      state = apply_gradients(state, grads, tx, ema)
    state = state.replace(aux={**state.aux, "fake": fake})
    metrics = {"loss": loss, "inverse_loss": loss, "grad_norm": optax.tree.norm(grads),
               "fake_loss": jnp.mean(jnp.stack(fake_losses)),
               "fake_grad_norm": jnp.mean(jnp.stack(fake_norms)), "tokens": tokens}
    return state, metrics

  def eval_step(params, frozen, batch, key):
    """The student's own validation NELBO under the teacher's loss (a denoising check)."""
    del frozen
    return ctx.process.eval_sums(net(params), batch, key)

  return Objective(train_step=train_step, eval_step=eval_step,
                   batches_per_step=fake_steps + 1, aux_txs={"fake": fake_tx})


def _with_dropout(model, dropout_key):
  """model(x, sigma) with residual dropout from `dropout_key` (train mode)."""
  return lambda x, sigma: model(x, sigma, dropout_key=dropout_key)


def validate(config) -> None:
  """IDLM-SEDD is absorbing (the paper's); the relaxation ablations are IDLM-MDLM's; prompted
  rows (data.source "reasoning") are clamped by IDLM-MDLM only; the chunked loss
  (model.loss_chunk) is IDLM-MDLM's and IDLM-SEDD's with the paper's relaxation and
  inverse-CDF draws, and IDLM-Duo's (and UDLM's)."""
  d, f = config.distill, config.diffusion
  if config.model.loss_chunk > 0 and (
      f.algo not in ("mdlm", "sedd", "duo", "udlm") or d.relaxation != "simplex"
      or (f.algo in ("mdlm", "sedd") and d.train_draw != "inverse_cdf")):
    raise chunk_error(config)
  if config.data.source == "reasoning" and f.algo != "mdlm":
    raise ConfigError(f"config.diffusion.algo: IDLM on prompted rows (data.source "
                      f"'reasoning') clamps prompts for 'mdlm' teachers only, got {f.algo!r}")
  if f.algo == "sedd" and f.process != "absorbing":
    raise ConfigError("config.diffusion.process: IDLM distils absorbing SEDD teachers only "
                      f"(got {f.process!r})")
  if d.relaxation not in PROCESSES[f.algo].relaxations:
    raise ConfigError(f"config.distill.relaxation: {d.relaxation!r} is an IDLM-MDLM ablation; "
                      f"diffusion.algo={f.algo!r} uses its own relaxation ('simplex')")


SPEC = register(ObjectiveSpec("idlm", make, "IDLM inverse distillation", fields=FIELDS,
                              validate=validate, teacher=True, prompted=True,
                              chunked_loss=True))
