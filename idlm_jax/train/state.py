"""The train state pytree, the optimizer, EMA and sharded state creation."""

from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax.train import parallel


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


def split_params(model: nnx.Module):
  """(graphdef, pure-dict params) of a model; everything non-Param stays in the graphdef."""
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def abstract_model(build_model: Callable[[nnx.Rngs], nnx.Module], seed: int):
  """(graphdef, abstract params nnx.State) without allocating anything."""
  k_params, _ = jax.random.split(jax.random.key(seed))
  model = nnx.eval_shape(lambda: build_model(nnx.Rngs(params=k_params)))
  return nnx.split(model, nnx.Param)


class AuxNet(NamedTuple):
  """An objective's extra network whose params differ from the model's (DiDi's discriminator):
  an `aux_txs` value in place of a bare optimizer. init(source_params, key) -> its params
  (source: the model's initial params, i.e. the teacher's in distillation); abstract: its
  nnx.State of abstract Params (for the shardings)."""

  tx: optax.GradientTransformation
  init: Callable
  abstract: nnx.State


def _aux_net(spec, params, key) -> NetState:
  """The NetState of one aux_txs entry: a copy of `params`, or an AuxNet's own init."""
  if isinstance(spec, AuxNet):
    return init_net(spec.init(params, key), spec.tx)
  return init_net(params, spec)


def init_net(params, tx: optax.GradientTransformation) -> NetState:
  """A fresh NetState starting at `params` (its EMA starts there too)."""
  return NetState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                  ema_params=params)


def create_state(build_model: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation,
                 seed: int, mesh, init_params=None,
                 aux_txs: Optional[dict] = None) -> tuple[Any, TrainState, Any]:
  """(graphdef, state, state_shardings): the state is created directly sharded, under jit.

  init_params: start from these (sharded) params instead of a random init (distillation: the
  teacher's); the state's copies are new buffers, so the source stays intact. aux_txs:
  {name: optimizer} of the objective's other trained networks, each starting at the same
  params (IDLM's fake model starts as a copy of the teacher).
  """
  root = jax.random.key(seed)
  k_params, k_train = jax.random.split(root)
  aux_txs = aux_txs or {}

  def init(source):
    if source is None:
      _, source = split_params(build_model(nnx.Rngs(params=k_params)))
    params = jax.tree.map(jnp.copy, source)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params, rng=jax.random.key_data(k_train),
                      aux={name: _aux_net(t, params, jax.random.fold_in(k_params, i))
                           for i, (name, t) in enumerate(sorted(aux_txs.items()))})

  graphdef, abstract_params = abstract_model(build_model, seed)
  shardings = state_shardings(tx, abstract_params, mesh, aux_txs)
  in_sh = None if init_params is None else shardings.params
  state = jax.jit(init, in_shardings=(in_sh,), out_shardings=shardings)(init_params)
  return graphdef, state, shardings


def _opt_shardings(tx, abstract_params: nnx.State, p_sh, rep):
  abstract_opt = jax.eval_shape(tx.init, nnx.to_pure_dict(abstract_params))
  masked = lambda x: isinstance(x, optax.MaskedNode)  # leaves a masked optimizer skips
  return optax.tree_map_params(tx, lambda v, s: v if masked(v) else s, abstract_opt, p_sh,
                               transform_non_params=lambda _: rep, is_leaf=masked)


def state_shardings(tx, abstract_params: nnx.State, mesh,
                    aux_txs: Optional[dict] = None) -> TrainState:
  """Shardings of every TrainState leaf: optimizer moments follow their parameters."""
  p_sh = parallel.param_shardings(abstract_params, mesh)
  rep = parallel.replicated(mesh)
  aux = {name: NetState(step=rep, params=p_sh, opt_state=_opt_shardings(t, abstract_params, p_sh,
                                                                         rep), ema_params=p_sh)
         for name, t in (aux_txs or {}).items() if not isinstance(t, AuxNet)}
  for name, t in (aux_txs or {}).items():  # networks with their own structure (AuxNet)
    if isinstance(t, AuxNet):
      a_sh = parallel.param_shardings(t.abstract, mesh)
      aux[name] = NetState(step=rep, params=a_sh, opt_state=_opt_shardings(t.tx, t.abstract, a_sh,
                                                                            rep), ema_params=a_sh)
  return TrainState(step=rep, params=p_sh, opt_state=_opt_shardings(tx, abstract_params, p_sh, rep),
                    ema_params=p_sh, rng=rep, aux=aux)


def abstract_state(state: TrainState, shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings, the restore target for checkpoints."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                      shardings)


def apply_gradients(state, grads, tx: optax.GradientTransformation, ema_decay: float):
  """One optimizer step plus the EMA update; increments `step` (a TrainState or a NetState).

  The gradients first go through `parallel.reduce_gradients`: the identity under pjit, the
  device `lax.pmean` of the pmap strategy (so every objective gets it without knowing).
  """
  grads = parallel.reduce_gradients(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = ema_update(state.ema_params, params, state.step, ema_decay)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
