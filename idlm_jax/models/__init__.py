"""Flax NNX models of idlm_jax: the DDiT denoiser and its PyTorch name mapping.

Importing this package turns off Flax's eager variable sharding (`flax_always_shard_variable`,
default True in flax 0.12.x): parameters carry logical sharding names as metadata but are
created unsharded, so a model builds without a mesh. The trainer places the state itself
(e.g. creating it under `jax.jit` with `out_shardings` from `nnx.get_partition_spec`).
The global config flag is used rather than `nnx.use_eager_sharding(False)`, whose setting
lives on a thread-local stack and would not reach other threads.
"""

import math

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from idlm_jax.models.dit import (
    DIT,
    from_torch_state_dict,
    rotary_inv_freq,
    to_torch_state_dict,
    torch_param_names,
)

flax.config.update("flax_always_shard_variable", False)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = [
    "DIT", "DTYPES", "build_model", "count_params", "from_torch_state_dict", "rotary_inv_freq",
    "to_torch_state_dict", "torch_param_names",
]


def build_model(model_cfg, vocab_size: int, rngs: nnx.Rngs) -> DIT:
  """The denoiser named by the `model` config section (configs/base.py)."""
  if model_cfg.name == "gpt2":  # causal LM for the "ar" objective (Gen PPL evaluator)
    from idlm_jax.models import gpt2
    return gpt2.build(model_cfg, vocab_size, model_cfg.n_positions, rngs)
  if model_cfg.name != "dit":
    raise ValueError(f"model.name must be 'dit', got {model_cfg.name!r}")
  if model_cfg.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {model_cfg.dtype!r}")
  return DIT(
      vocab_size=vocab_size,
      hidden_size=model_cfg.hidden_size,
      n_blocks=model_cfg.n_blocks,
      n_heads=model_cfg.n_heads,
      cond_dim=model_cfg.cond_dim,
      mlp_ratio=model_cfg.mlp_ratio,
      dropout=model_cfg.dropout,
      dtype=DTYPES[model_cfg.dtype],
      attention=model_cfg.attention,
      time_conditioning=model_cfg.time_conditioning,
      vocab_pad_multiple=model_cfg.vocab_pad_multiple,
      remat=model_cfg.remat,
      rngs=rngs,
  )


def _param_size(leaf) -> int:
  """Element count of a Param (0 for other Variables) or of a plain array / ShapeDtypeStruct."""
  if isinstance(leaf, nnx.Variable):
    return math.prod(leaf.get_value().shape) if isinstance(leaf, nnx.Param) else 0
  return math.prod(leaf.shape)


def count_params(tree) -> int:
  """Number of parameters in a module or state (concrete or abstract, e.g. from nnx.eval_shape)."""
  state = nnx.state(tree) if isinstance(tree, nnx.Module) else tree
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return sum(_param_size(leaf) for leaf in leaves)
