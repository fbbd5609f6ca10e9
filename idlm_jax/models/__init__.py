"""Flax NNX models of idlm_jax: the DDiT denoiser (and its PyTorch name mapping), the GPT-2
evaluator, DiDi's discriminator and the LLaDA/Dream diffusion LLMs.

Parameters carry logical sharding names as metadata but are created unsharded
(`layers.partitioned`), so a model builds without a mesh; the trainer places the state itself.
"""

import math

import jax
from flax import nnx

from idlm_jax import fields as F
from idlm_jax.fields import ConfigError, Field
from idlm_jax.models import dllm, gpt2
from idlm_jax.models.dit import (
    DIT,
    from_torch_state_dict,
    rotary_inv_freq,
    to_torch_state_dict,
    torch_param_names,
)
from idlm_jax.models.layers import DTYPES

FIELDS = {
    "model.name": Field("dit", 'the network: "dit" (the DDiT denoiser of MDLM/SEDD/Duo, '
                        'reference/teachers.md §1.4), "gpt2" (the causal evaluator of the '
                        '"ar" objective) or "llada" (a LLaDA-architecture bidirectional '
                        "decoder, models/dllm.py: RMSNorm, SwiGLU of width mlp_ratio x "
                        "hidden_size, RoPE, no time input; objective \"llada_sft\").",
                        choices=("dit", "gpt2", "llada")),
    "model.hidden_size": Field(768, "width d of the residual stream.", check=F.positive),
    "model.n_blocks": Field(12, "transformer blocks.", check=F.positive),
    "model.n_heads": Field(12, "attention heads (head size hidden_size / n_heads, even).",
                           check=F.positive),
    "model.cond_dim": Field(128, "width of the adaLN time conditioning.", check=F.positive),
    "model.mlp_ratio": Field(4, "MLP width / hidden_size.", check=F.positive),
    "model.dropout": Field(0.1, "residual dropout (attention dropout is always 0).",
                           check=F.unit_right_open),
    "model.dtype": Field("float32", 'compute dtype of matmuls: "float32" or "bfloat16" (params '
                         "stay float32).", choices=tuple(DTYPES)),
    "model.attention": Field("auto", "attention kernel for jax.nn.dot_product_attention: "
                             '"auto" (cuDNN on GPU where possible), "xla" or "cudnn".',
                             choices=("auto", "xla", "cudnn")),
    "model.time_conditioning": Field(False, "feed sigma(t) to the network (MDLM feeds 0: its "
                                     "network ignores t; SEDD/UDLM/Duo need True)."),
    "model.vocab_pad_multiple": Field(
        128, "pad the DiT's embedding rows and output columns to a multiple of this (GPT-2 "
        "50258 -> 50304, bert 30522 -> 30592; 0 or 1 = off); logits keep vocab_size entries "
        "and PyTorch conversion pads/unpads. Checkpoints store the padded shapes.",
        check=F.non_negative_or_off("0 or 1: no padding")),
    "model.remat": Field("none", '"block": recompute each DiT block\'s activations in the '
                         "backward pass (nnx.remat), less activation memory for ~1/3 more "
                         'compute; "none": keep them.', choices=("none", "block")),
    "model.loss_chunk": Field(
        0, "> 0: the loss takes the output projection, log-softmax and loss this many "
        "sequence positions at a time, its gradient taken chunk by chunk in the forward pass "
        "(diffusion/chunks.py), so no full [B, L, V] float32 tensor is ever live; same loss "
        'and gradients. 0 = off. Objective "diffusion" with diffusion.algo "mdlm" (no extra '
        'FLOPs), or "idlm" with "mdlm" or absorbing "sedd" (distill.relaxation "simplex", '
        'train_draw "inverse_cdf"; one more output projection of the student per loss), or '
        'with "duo"/"udlm" (soft inputs embedded a chunk at a time and recomputed in the '
        'backward pass: ~11 more [B, L, d] x [d, V] products per step, ~1 teacher step).',
        check=F.non_negative_or_off("0: off")),
    "model.n_positions": Field(1024, 'model.name "gpt2": learned positions.', check=F.positive),
    "model.n_kv_heads": Field(0, 'model.name "llada": key/value heads (grouped-query '
                              "attention; 0 = n_heads).", check=F.non_negative),
    "model.rope_theta": Field(10_000.0, 'model.name "llada": RoPE base (LLaDA-8B: 5e5).',
                              check=F.positive),
}


def validate(config) -> None:
  m = config.model
  if m.name == "llada" and m.n_kv_heads and m.n_heads % m.n_kv_heads:
    raise ConfigError(f"config.model.n_kv_heads: {m.n_kv_heads} must divide n_heads "
                      f"{m.n_heads}")
  if m.hidden_size % m.n_heads or (m.hidden_size // m.n_heads) % 2:
    raise ConfigError(f"config.model.hidden_size: {m.hidden_size} must split into "
                      f"{m.n_heads} heads of even size (rotary embedding)")
  if m.name == "gpt2" and config.data.seq_len > m.n_positions:  # learned positions: a hard cap
    raise ConfigError(f"config.data.seq_len: {config.data.seq_len} exceeds the gpt2 model's "
                      f"model.n_positions={m.n_positions} (learned position embeddings)")


__all__ = [
    "DIT", "DTYPES", "FIELDS", "build_model", "count_params", "from_torch_state_dict", "rotary_inv_freq",
    "to_torch_state_dict", "torch_param_names",
]


def llada_config(model_cfg, vocab_size: int) -> dllm.DLLMConfig:
  """The DLLMConfig of a model section with name "llada" (LLaDA layout, no bias, untied)."""
  return dllm.DLLMConfig(
      arch="llada", vocab_size=vocab_size, d_model=model_cfg.hidden_size,
      n_layers=model_cfg.n_blocks, n_heads=model_cfg.n_heads,
      n_kv_heads=model_cfg.n_kv_heads or model_cfg.n_heads,
      mlp_hidden_size=model_cfg.mlp_ratio * model_cfg.hidden_size,
      rope_theta=float(model_cfg.rope_theta), rms_norm_eps=1e-5)


def build_model(model_cfg, vocab_size: int, rngs: nnx.Rngs) -> DIT:
  """The network named by the `model` config section (models.FIELDS)."""
  if model_cfg.name == "gpt2":  # causal LM for the "ar" objective (Gen PPL evaluator)
    return gpt2.build(model_cfg, vocab_size, model_cfg.n_positions, rngs)
  if model_cfg.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {model_cfg.dtype!r}")
  if model_cfg.name == "llada":
    return dllm.DLLM(llada_config(model_cfg, vocab_size), dtype=DTYPES[model_cfg.dtype],
                     attention=model_cfg.attention, remat=model_cfg.remat,
                     dropout=model_cfg.dropout, rngs=rngs)
  if model_cfg.name != "dit":
    raise ValueError(f"model.name must be one of 'dit', 'gpt2', 'llada', got {model_cfg.name!r}")
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
