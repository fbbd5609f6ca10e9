"""The train state pytree every objective's step updates, the optimizer, EMA and the gradient
reduction hook of the pmap strategy. (Creating the state sharded: train/state.py.)"""

import contextlib
import contextvars
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax import fields as F
from idlm_jax.fields import Field

FIELDS = {
    "optim.lr": Field(3e-4, "AdamW peak learning rate.", check=F.positive),
    "optim.warmup_steps": Field(2500, "linear warm-up from 0, then optim.decay.",
                                check=F.non_negative),
    "optim.decay": Field("constant", 'after warm-up: "constant" (MDLM), "cosine" or "linear" '
                         "(to final_lr_fraction * lr at train.steps; DiDi-Instruct's reference "
                         "decays linearly).", choices=("constant", "cosine", "linear")),
    "optim.final_lr_fraction": Field(0.1, "the decays' final learning rate / lr.",
                                     check=F.unit_closed),
    "optim.b1": Field(0.9, "Adam beta1.", check=F.unit_right_open),
    "optim.b2": Field(0.999, "Adam beta2.", check=F.unit_right_open),
    "optim.adam_eps": Field(1e-8, "Adam epsilon.", check=F.positive),
    "optim.weight_decay": Field(0.0, "AdamW decoupled weight decay.", check=F.non_negative),
    "optim.grad_clip": Field(1.0, "global-norm clipping; 0 disables.",
                             check=F.non_negative_or_off("0 disables")),
    "optim.ema": Field(0.9999, "EMA decay, with warm-up decay min(ema, (1+n)/(10+n)); 0 "
                       "disables EMA.", check=F.Check(lambda v: 0.0 <= v < 1.0,
                                                      "in [0, 1) (0 disables)")),
}


@flax.struct.dataclass
class NetState:
  """An extra trained network of an objective (IDLM's fake model, DiDi's discriminator)."""

  step: jax.Array  # int32 [], this network's optimizer steps (its EMA warm-up counter)
  params: Any
  opt_state: Any
  ema_params: Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; model structure and optimizer stay outside.

  The top-level params are THE model: the teacher being pretrained, or the student being
  distilled (so evaluation, sampling and `restore_params` read every run alike). `aux` holds
  the other networks an objective trains, by name ({} for teacher pretraining).
  """

  step: jax.Array  # int32 [], optimizer steps taken
  params: Any  # pure dict of float32 arrays (nnx.to_pure_dict of the model's Params)
  opt_state: Any
  ema_params: Any  # EMA of params (same tree; equals params when EMA is off)
  rng: jax.Array  # uint32 raw key data; step keys are fold_in(key, step)
  aux: dict = flax.struct.field(default_factory=dict)  # name -> NetState

  def key(self) -> jax.Array:
    return jax.random.wrap_key_data(self.rng)


def learning_rate(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over warmup_steps, then constant (MDLM), or a cosine or linear
  (DiDi-Instruct's reference) decay from lr to final_lr_fraction * lr at total_steps."""
  lr, warm = optim_cfg.lr, optim_cfg.warmup_steps
  decay_steps, final = max(total_steps - warm, 1), optim_cfg.final_lr_fraction
  if optim_cfg.decay == "constant":
    after = optax.constant_schedule(lr)
  elif optim_cfg.decay == "linear":
    after = optax.linear_schedule(lr, final * lr, decay_steps)
  else:
    after = optax.cosine_decay_schedule(lr, decay_steps, final)
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW with global-norm clipping (MDLM: lr 3e-4, betas (0.9, 0.999), clip 1.0)."""
  adamw = optax.adamw(learning_rate(optim_cfg, total_steps), b1=optim_cfg.b1, b2=optim_cfg.b2,
                      eps=optim_cfg.adam_eps, weight_decay=optim_cfg.weight_decay)
  if optim_cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), adamw)
  return adamw


def ema_update(ema, params, step: jax.Array, decay: float):
  """EMA with warm-up decay min(decay, (1 + n) / (10 + n)), n = updates so far (MDLM ema.py)."""
  if decay == 0:
    return params
  n = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  return jax.tree.map(lambda e, p: e * d + (1.0 - d) * p, ema, params)


class AuxNet(NamedTuple):
  """An objective's extra network whose params differ from the model's (DiDi's discriminator):
  an `aux_txs` value in place of a bare optimizer. init(source_params, key) -> its params
  (source: the model's initial params, i.e. the teacher's in distillation); abstract: its
  nnx.State of abstract Params (for the shardings)."""

  tx: optax.GradientTransformation
  init: Callable
  abstract: nnx.State


def init_net(params, tx: optax.GradientTransformation) -> NetState:
  """A fresh NetState starting at `params` (its EMA starts there too)."""
  return NetState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                  ema_params=params)


def apply_gradients(state, grads, tx: optax.GradientTransformation, ema_decay: float):
  """One optimizer step plus the EMA update; increments `step` (a TrainState or a NetState).

  The gradients first go through `reduce_gradients`: the identity under pjit, the
  device `lax.pmean` of the pmap strategy (so every objective gets it without knowing).
  """
  grads = reduce_gradients(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = ema_update(state.ema_params, params, state.step, ema_decay)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)


# ------------------------------------------------------------------ the pmap strategy's hook

_GRAD_REDUCTION: contextvars.ContextVar = contextvars.ContextVar("grad_reduction", default=None)


@contextlib.contextmanager
def gradient_reduction(reduce: Callable[[Any], Any]):
  """While a step is traced inside this context, `reduce_gradients` applies `reduce`.

  `apply_gradients` calls `reduce_gradients` on every gradient tree before the optimizer, so
  every objective that updates its networks through it (all of them) gets the pmap
  strategy's `lax.pmean` (train/parallel.py) without knowing about it.
  """
  token = _GRAD_REDUCTION.set(reduce)
  try:
    yield
  finally:
    _GRAD_REDUCTION.reset(token)


def reduce_gradients(grads):
  """The gradients as the optimizer must see them: averaged over devices under the pmap
  strategy (inside `gradient_reduction`), unchanged otherwise (pjit reduces implicitly)."""
  reduce = _GRAD_REDUCTION.get()
  return grads if reduce is None else reduce(grads)

