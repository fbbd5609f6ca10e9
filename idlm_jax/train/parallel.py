"""Device mesh, logical-axis sharding rules, global batches and the two parallel strategies.

parallel.strategy = "pjit" (default): the train step runs under `jax.jit` with NamedShardings;
  parameters and optimizer moments are sharded by LOGICAL_RULES (FSDP over 'fsdp', tensor
  parallel over 'tensor'), the batch over ('data', 'fsdp'); XLA inserts the collectives.
parallel.strategy = "pmap": pure data parallelism with explicit collectives. The mesh puts every
  device on 'data' (shape (n, 1, 1)), so the state is replicated; the same train step runs per
  device on its rows of the batch (`pmap_train_step`), with the gradients averaged by
  `lax.pmean` inside `objectives.state.apply_gradients` (its `gradient_reduction` hook)
  and the metrics averaged after the step. It is written with `jax.shard_map`, which is what
  `jax.pmap` itself has been built on since JAX 0.8: the replicated state is an ordinary global
  array (no leading device axis to replicate and unreplicate), so checkpoints are the same
  TrainState under both strategies and restore into either.
"""

import contextlib
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from idlm_jax.fields import ConfigError, Field
from idlm_jax.objectives import state as state_lib

FIELDS = {
    "parallel.strategy": Field(
        "pjit", '"pjit": jit with NamedSharding over the mesh (FSDP/tensor parallel); "pmap": '
        "replicated state on an (n, 1, 1) mesh, the step per device with an explicit gradient "
        "pmean (ici_mesh/dcn_mesh ignored).", choices=("pjit", "pmap")),
    "parallel.ici_mesh": Field((1, -1, 1), "mesh sizes over ('data', 'fsdp', 'tensor') within a "
                               "slice (ICI); -1 is filled with the remaining devices."),
    "parallel.dcn_mesh": Field((-1, 1, 1), "mesh sizes over ('data', 'fsdp', 'tensor') across "
                               "slices (DCN); -1 is filled with the remaining slices."),
}


def validate(config) -> None:
  for key in ("ici_mesh", "dcn_mesh"):
    mesh = config.parallel[key]
    if len(mesh) != 3 or list(mesh).count(-1) > 1 or any(s == 0 or s < -1 for s in mesh):
      raise ConfigError(f"config.parallel.{key}: needs 3 sizes for ('data', 'fsdp', 'tensor'), "
                        f"each >= 1 or one -1 (fill), got {mesh!r}")


MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over data and fsdp
# logical parameter axis -> mesh axis (FSDP over 'embed', tensor parallel over the rest)
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("adaln", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query K/V projections (models/dllm.py)
    ("vocab", "tensor"),
    ("cond", None),
    ("length", None),
    # activations (models/layers.py `constrain`): the residual stream is split by batch
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
)


@contextlib.contextmanager
def mesh_context(mesh: Mesh):
  """The mesh and logical axis rules under which steps are traced and run."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
    yield


def fill_mesh_shape(shape: Sequence[int], n: int, what: str) -> tuple[int, ...]:
  """Replace one -1 in `shape` with whatever makes the product equal to n."""
  shape = list(shape)
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n % known:
      raise ValueError(f"parallel.{what}: {tuple(shape)} cannot fill {n} devices")
    shape[shape.index(-1)] = n // known
  if math.prod(shape) != n:
    raise ValueError(f"parallel.{what}: {tuple(shape)} uses {math.prod(shape)} devices, "
                     f"but {n} are available")
  return tuple(shape)


def make_mesh(parallel_cfg, devices=None) -> Mesh:
  """Mesh over ('data', 'fsdp', 'tensor'); DCN sizes across slices, ICI sizes within one.

  Under the pmap strategy the sizes are (n, 1, 1) whatever ici_mesh/dcn_mesh say.
  """
  devices = list(jax.devices() if devices is None else devices)
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  dcn_shape, ici_shape = parallel_cfg.dcn_mesh, parallel_cfg.ici_mesh
  if parallel_cfg.get("strategy", "pjit") == "pmap":  # every device on 'data': replicated state
    dcn_shape, ici_shape = (-1, 1, 1), (-1, 1, 1)
  dcn = fill_mesh_shape(dcn_shape, num_slices, "dcn_mesh")
  ici = fill_mesh_shape(ici_shape, len(devices) // num_slices, "ici_mesh")
  if num_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  else:
    try:
      grid = mesh_utils.create_device_mesh(ici, devices)
    except (ValueError, NotImplementedError, AssertionError):
      grid = np.asarray(devices).reshape(ici)
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def logical_to_mesh(spec: Sequence[Any], rules=LOGICAL_RULES) -> P:
  """A logical PartitionSpec (names like 'embed') -> a mesh PartitionSpec."""
  table = dict(rules)
  out = []
  for name in spec:
    if name is None:
      out.append(None)
    elif name not in table:
      raise KeyError(f"no sharding rule for logical axis {name!r}; known: {sorted(table)}")
    else:
      out.append(table[name])
  return P(*out)


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> dict:
  """NamedShardings (pure dict) for a model's parameters from their logical axis names.

  A mesh axis of size > 1 shards a dimension only if it divides it; otherwise that dimension
  stays replicated (e.g. a 2048-row vocab on 3 devices).
  """
  specs = nnx.get_partition_spec(abstract_state)
  specs, shapes = nnx.to_pure_dict(specs), nnx.to_pure_dict(abstract_state)

  def one(spec, shape):
    mesh_spec = logical_to_mesh(tuple(spec) + (None,) * (len(shape.shape) - len(spec)))
    fixed = [ax if _divides(mesh, ax, dim) else None for ax, dim in zip(mesh_spec, shape.shape)]
    return NamedSharding(mesh, P(*fixed))

  return jax.tree.map(one, specs, shapes, is_leaf=lambda x: isinstance(x, P))


def _divides(mesh: Mesh, axes, dim: int) -> bool:
  if axes is None:
    return True
  axes = axes if isinstance(axes, tuple) else (axes,)
  return dim % math.prod(mesh.shape[a] for a in axes) == 0


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Assemble this host's numpy rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def batch_divisor(mesh: Mesh) -> int:
  """Global batch sizes must be multiples of this (devices along the batch axes)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def to_host(tree):
  """NumPy copies of a pytree of arrays, also of arrays sharded over several processes.

  `jax.device_get` fails on an array whose shards live on other hosts' devices (e.g. sampled
  tokens sharded over the batch axes); those are all-gathered across processes instead, so
  every process must call this with the same tree (it is a collective).
  """
  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)


# ------------------------------------------------------------------ the pmap strategy

def reduce_metrics(metrics: dict, axes) -> dict:
  """Per-device step metrics -> global ones: counts named `tokens` are summed, the rest
  (per-device means: loss, gradient norms) averaged."""
  return {k: jax.lax.psum(v, axes) if k == "tokens" else jax.lax.pmean(v, axes)
          for k, v in metrics.items()}


def pmap_train_step(train_step: Callable, mesh: Mesh, device_keys: bool = True) -> Callable:
  """The pmap strategy's step: `train_step(state, frozen, batch)` run on every device with the
  replicated state and frozen networks and that device's rows of the batch (or of each batch
  of a tuple), gradients `lax.pmean`-ed over all devices, metrics reduced by `reduce_metrics`.

  Wrap the result in `jax.jit` with the state/batch shardings as for pjit. device_keys: each
  device folds its index into the state's key, so devices draw independent noise (diffusion
  times, masks, dropout); False makes every device draw the same noise for its rows (then a
  batch of n identical per-device slices reproduces the pjit step on one slice exactly, which
  is how tests/train/test_pmap.py compares the two strategies).

  Loss normalisation: each device normalises by its own token count and the gradients are
  averaged (PyTorch DDP's rule, the papers' trainers); pjit divides the global sum by the
  global count. The two agree when every device holds the same number of loss tokens (packed
  rows, or equally padded ones), and differ slightly with unevenly padded rows.
  """
  axes = tuple(mesh.axis_names)

  def per_device(state, frozen, batch):
    rng = state.rng
    if device_keys:
      key = jax.random.fold_in(state.key(), jax.lax.axis_index(axes))
      state = state.replace(rng=jax.random.key_data(key))
    # per-device code: no activation sharding constraints (the mesh axes are manual here)
    with state_lib.gradient_reduction(lambda grads: jax.lax.pmean(grads, axes)), \
        nnx.logical_axis_rules(()):
      state, metrics = train_step(state, frozen, batch)
    return state.replace(rng=rng), reduce_metrics(metrics, axes)

  # check_vma=False: gradients w.r.t. the replicated params stay per-device (pmap semantics)
  # until the explicit pmean; with vma checking, autodiff would psum them already.
  return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(BATCH_AXES)),
                       out_specs=(P(), P()), check_vma=False)
