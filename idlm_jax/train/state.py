"""Creating the sharded TrainState (objectives/state.py defines it) and its shardings."""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from idlm_jax.objectives.state import AuxNet, NetState, TrainState, init_net
from idlm_jax.train import parallel


def split_params(model: nnx.Module):
  """(graphdef, pure-dict params) of a model; everything non-Param stays in the graphdef."""
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def abstract_model(build_model: Callable[[nnx.Rngs], nnx.Module], seed: int):
  """(graphdef, abstract params nnx.State) without allocating anything."""
  k_params, _ = jax.random.split(jax.random.key(seed))
  model = nnx.eval_shape(lambda: build_model(nnx.Rngs(params=k_params)))
  return nnx.split(model, nnx.Param)


def _aux_net(spec, params, key) -> NetState:
  """The NetState of one aux_txs entry: a copy of `params`, or an AuxNet's own init."""
  if isinstance(spec, AuxNet):
    return init_net(spec.init(params, key), spec.tx)
  return init_net(params, spec)


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
