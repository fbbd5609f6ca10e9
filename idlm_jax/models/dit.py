"""The DDiT denoiser of MDLM/SEDD/Duo/UDLM (MDLM `models/dit.py`; reference/teachers.md §1.4-1.5).

Module attributes mirror the PyTorch names, so a PyTorch state_dict converts by a mechanical
rename and transpose (`to_torch_state_dict` / `from_torch_state_dict`):

  torch                                   nnx path                                 transpose
  vocab_embed.embedding          [V, d]   vocab_embed.embedding          [V, d]      no
  sigma_map.mlp.{0,2}.weight     [o, i]   sigma_map.mlp_{0,2}.kernel     [i, o]      yes
  blocks.{i}.norm1.weight        [d]      blocks.{i}.norm1.scale         [d]         no
  blocks.{i}.mlp.{0,2}.bias      [o]      blocks.{i}.mlp_{0,2}.bias      [o]         no
  output_layer.linear.weight     [V, d]   output_layer.linear.kernel     [d, V]      yes
  rotary_emb.inv_freq            [hd/2]   (a constant buffer, recomputed; not a parameter)

With `model.vocab_pad_multiple` the nnx arrays have Vp = padded_vocab_size(V) rows/columns
(`vocab_embed.embedding`, `output_layer.linear.{kernel,bias}`; rows V.. zero); the PyTorch
side always has V: `to_torch_state_dict` drops the padding, `from_torch_state_dict` adds it.

Logical sharding names per parameter (`nnx.get_partition_spec`):
  vocab_embed.embedding ('vocab', 'embed'); sigma_map.mlp_{0,2}.kernel (None, 'cond'), bias
  ('cond',); norm*.scale ('embed',); attn_qkv.kernel ('embed', 'heads'); attn_out.kernel
  ('heads', 'embed'); mlp_0.kernel ('embed', 'mlp'), bias ('mlp',); mlp_2.kernel ('mlp',
  'embed'), bias ('embed',); adaLN_modulation.kernel ('cond', 'adaln'), bias ('adaln',);
  output_layer.linear.kernel ('embed', 'vocab'), bias ('vocab',).
"""

import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from idlm_jax import rng
from idlm_jax.models import layers
from idlm_jax.models.torch_pickle import ConversionError

ROPE_BASE = 10000.0
ROTARY_BUFFER = "rotary_emb.inv_freq"
# PyTorch keys whose first axis (torch layout) is the vocabulary: padded/unpadded in conversion.
VOCAB_KEYS = ("vocab_embed.embedding", "output_layer.linear.weight", "output_layer.linear.bias")
# PyTorch module registration order, which is the order of `DIT.parameters()` and so of the
# Lightning EMA `shadow_params` list (teachers.md §1.5).
_REGISTRATION_ORDER = (
    "vocab_embed", "sigma_map", "blocks", "output_layer", "norm1", "attn_qkv", "attn_out",
    "norm2", "mlp_0", "mlp_2", "norm_final", "linear", "adaLN_modulation", "embedding",
    "kernel", "scale", "bias")


class EmbeddingLayer(nnx.Module):
  """Raw [V, d] input embedding, untied from the output (MDLM EmbeddingLayer).

  With `padded_size` > V the table has padded_size rows; rows V.. are zero and never read
  (ids are < V; probability inputs use the first V rows).
  """

  def __init__(self, hidden_size: int, vocab_size: int, padded_size: Optional[int] = None, *,
               rngs: nnx.Rngs):
    rows = padded_size or vocab_size
    init = layers.padded_rows(layers.torch_uniform(hidden_size), vocab_size)
    init = layers.partitioned(init, ("vocab", "embed"))
    self.vocab_size = vocab_size
    self.embedding = nnx.Param(init(rngs.params(), (rows, hidden_size), jnp.float32))

  def __call__(self, x: jax.Array, dtype) -> jax.Array:
    """E[ids] for int ids [B, L]; the expected embedding x @ E for probabilities [B, L, V]."""
    table = self.embedding[...]
    if jnp.issubdtype(x.dtype, jnp.integer):
      return jnp.take(table, x, axis=0)
    table = table[:self.vocab_size]
    if jnp.dtype(dtype) == jnp.float32:  # exact: one-hot rows reproduce E[ids] bit for bit.
      return jnp.matmul(x.astype(jnp.float32), table, precision=jax.lax.Precision.HIGHEST)
    return jnp.matmul(x.astype(dtype), table.astype(dtype)).astype(jnp.float32)


class TimestepEmbedder(nnx.Module):
  """sigma -> MLP([cos, sin] sinusoid of size 256): Linear(256, cond) SiLU Linear(cond, cond)."""

  def __init__(self, cond_dim: int, *, rngs: nnx.Rngs):
    freq = layers.FREQ_EMBED_SIZE
    self.mlp_0 = layers.linear(freq, cond_dim, axes=(None, "cond"), rngs=rngs)
    self.mlp_2 = layers.linear(cond_dim, cond_dim, axes=(None, "cond"), rngs=rngs)

  def __call__(self, sigma: jax.Array) -> jax.Array:
    """Float32 [B, cond] embedding (MDLM runs it outside autocast)."""
    return self.mlp_2(nnx.silu(self.mlp_0(layers.timestep_embedding(sigma))))


class DDiTBlock(nnx.Module):
  """adaLN-zero transformer block with RoPE attention and a GELU(tanh) MLP (MDLM DDiTBlock)."""

  def __init__(self, hidden_size: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4,
               dropout: float = 0.0, dtype=jnp.float32, attention: str = "auto", *,
               rngs: nnx.Rngs):
    if hidden_size % n_heads:
      raise ValueError(f"hidden_size {hidden_size} is not divisible by n_heads {n_heads}")
    d, hidden = hidden_size, mlp_ratio * hidden_size
    self.n_heads, self.dropout, self.dtype, self.attention = n_heads, dropout, dtype, attention
    self.norm1 = layers.layer_norm(d, rngs=rngs)
    self.attn_qkv = layers.linear(d, 3 * d, axes=("embed", "heads"), use_bias=False,
                                  dtype=dtype, rngs=rngs)
    self.attn_out = layers.linear(d, d, axes=("heads", "embed"), use_bias=False, dtype=dtype,
                                  rngs=rngs)
    self.norm2 = layers.layer_norm(d, rngs=rngs)
    self.mlp_0 = layers.linear(d, hidden, axes=("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.mlp_2 = layers.linear(hidden, d, axes=("mlp", "embed"), dtype=dtype, rngs=rngs)
    self.adaLN_modulation = layers.linear(cond_dim, 6 * d, axes=("cond", "adaln"),
                                          zero_init=True, dtype=dtype, rngs=rngs)

  def _attention(self, h: jax.Array, rope) -> jax.Array:
    """qkv projection, 'b s (three h d)' split, RoPE on q and k, attention, output projection."""
    b, s, d = h.shape
    qkv = self.attn_qkv(h).reshape(b, s, 3, self.n_heads, d // self.n_heads)
    q = layers.apply_rope(qkv[:, :, 0], *rope)
    k = layers.apply_rope(qkv[:, :, 1], *rope)
    impl = layers.attention_implementation(self.attention, self.dtype, d // self.n_heads)
    out = layers.self_attention(q, k, qkv[:, :, 2], impl)
    return self.attn_out(out.reshape(b, s, d))

  def __call__(self, x: jax.Array, c: jax.Array, rope, *,
               dropout_key: Optional[jax.Array] = None) -> jax.Array:
    """x [B, L, d] float32 residual stream, c [B, cond] = SiLU(sigma_map(sigma))."""
    mods = self.adaLN_modulation(c)[:, None, :].astype(jnp.float32)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mods, 6, axis=-1)
    key_attn, key_mlp = (None, None) if dropout_key is None else rng.split(dropout_key)

    h = layers.modulate(self.norm1(x), shift_msa, scale_msa).astype(self.dtype)
    x = layers.gated_residual(x, gate_msa, self._attention(h, rope), self.dropout, key_attn)

    h = layers.modulate(self.norm2(x), shift_mlp, scale_mlp).astype(self.dtype)
    h = self.mlp_2(nnx.gelu(self.mlp_0(h), approximate=True))
    return layers.gated_residual(x, gate_mlp, h, self.dropout, key_mlp)


class DDitFinalLayer(nnx.Module):
  """adaLN(shift, scale) -> LayerNorm -> zero-initialised Linear(d, V) (MDLM DDitFinalLayer).

  With `padded_size` > V the projection has padded_size columns (a tile-aligned logits
  matmul); the padded logits are sliced off, so callers always see exactly V logits.
  """

  def __init__(self, hidden_size: int, vocab_size: int, cond_dim: int, dtype=jnp.float32,
               padded_size: Optional[int] = None, *, rngs: nnx.Rngs):
    self.dtype, self.vocab_size = dtype, vocab_size
    self.norm_final = layers.layer_norm(hidden_size, rngs=rngs)
    self.linear = layers.linear(hidden_size, padded_size or vocab_size, axes=("embed", "vocab"),
                                zero_init=True, dtype=dtype, rngs=rngs)
    self.adaLN_modulation = layers.linear(cond_dim, 2 * hidden_size, axes=("cond", "adaln"),
                                          zero_init=True, dtype=dtype, rngs=rngs)

  def features(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """adaLN-modulated LayerNorm of the residual stream [B, L, d], in the compute dtype: the
    input of the output projection."""
    mods = self.adaLN_modulation(c)[:, None, :].astype(jnp.float32)
    shift, scale = jnp.split(mods, 2, axis=-1)
    return layers.modulate(self.norm_final(x), shift, scale).astype(self.dtype)

  def project(self, h: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Logits [..., V] of features h [..., d], computed in the compute dtype (as torch
    autocast's bf16 logits) and cast to `dtype` (float32 by default; None keeps the compute
    dtype, which is what the PyTorch reference's forward returns: float32 logits are the
    same values, cast).

    No float32 matmul output (preferred_element_type) here: its backward runs float32
    matmuls, which made a bf16 training step of the small model ~25% slower on an H100.
    The slice to V fuses with the bias add and cast (benchmarks/results/cpu_hlo_checks.md).
    """
    logits = self.linear(h)[..., :self.vocab_size]
    return logits if dtype is None else logits.astype(dtype)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """Float32 logits [B, L, V]: `project(features(x, c))`."""
    return self.project(self.features(x, c))


class DIT(nnx.Module):
  """The DDiT denoiser: logits = DIT(x_t, sigma) (MDLM `DIT.forward`, teachers.md §1.4).

  `dtype` is the matmul compute dtype (float32 or bfloat16); parameters are float32, and the
  residual stream, LayerNorm and modulation stay in float32 (MDLM under bf16 autocast).
  `attention` picks jax.nn.dot_product_attention's kernel: "auto" (cuDNN on GPU in 16-bit,
  else JAX's default, which is XLA in jax 0.10-0.11), "xla" or "cudnn". The residual stream
  gets sharding hints with the logical names `layers.ACTIVATION_AXES` at block boundaries,
  active only under a mesh and `flax.core.spmd.logical_axis_rules` that map them.
  `vocab_pad_multiple` (0/1: off) pads the embedding rows and output columns to a multiple
  (`padded_vocab_size`); logits keep exactly `vocab_size` entries. `remat="block"` recomputes
  each block's activations in the backward pass (`nnx.remat`), trading compute for memory.
  """

  def __init__(self, *, vocab_size: int, hidden_size: int, n_blocks: int, n_heads: int,
               cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.0, dtype=jnp.float32,
               attention: str = "auto", time_conditioning: bool = True,
               vocab_pad_multiple: int = 0, remat: str = "none", rngs: nnx.Rngs):
    if attention not in layers.ATTENTION_KINDS:
      raise ValueError(f"attention must be one of {layers.ATTENTION_KINDS}, got {attention!r}")
    if (hidden_size // max(n_heads, 1)) % 2:
      raise ValueError(f"head_dim {hidden_size // n_heads} must be even for RoPE")
    if remat not in layers.REMAT_KINDS:
      raise ValueError(f"remat must be one of {layers.REMAT_KINDS}, got {remat!r}")
    self.vocab_size, self.hidden_size, self.n_heads = vocab_size, hidden_size, n_heads
    self.padded_vocab_size = layers.padded_vocab_size(vocab_size, vocab_pad_multiple)
    self.dtype, self.dropout, self.time_conditioning = dtype, dropout, time_conditioning
    self.remat = remat
    self.vocab_embed = EmbeddingLayer(hidden_size, vocab_size, self.padded_vocab_size,
                                      rngs=rngs)
    self.sigma_map = TimestepEmbedder(cond_dim, rngs=rngs)
    self.blocks = nnx.List([
        DDiTBlock(hidden_size, n_heads, cond_dim, mlp_ratio, dropout, dtype, attention,
                  rngs=rngs) for _ in range(n_blocks)])
    self.output_layer = DDitFinalLayer(hidden_size, vocab_size, cond_dim, dtype,
                                       self.padded_vocab_size, rngs=rngs)

  @property
  def head_dim(self) -> int:
    """Per-head width d / n_heads."""
    return self.hidden_size // self.n_heads

  @property
  def padding_params(self) -> int:
    """Parameters added by vocabulary padding (embedding rows, output columns and bias)."""
    return (self.padded_vocab_size - self.vocab_size) * (2 * self.hidden_size + 1)

  def __call__(self, x: jax.Array, sigma: jax.Array, *,
               dropout_key: Optional[jax.Array] = None,
               logits_dtype=jnp.float32) -> jax.Array:
    """Logits [B, L, V] for ids [B, L] (or probabilities [B, L, V]) and sigma [B]: float32,
    or `logits_dtype=None` for the compute dtype's (bf16 under model.dtype bfloat16: half the
    bytes written, the same values before the cast; what torch autocast returns).

    dropout_key=None is evaluation (no dropout); a PRNG key enables residual dropout.
    Equal to `project(features(x, sigma))`.
    """
    return self.project(self.features(x, sigma, dropout_key=dropout_key), logits_dtype)

  def project(self, h: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Logits [..., V] of output features h [..., d] (the output projection only), so that a
    loss can take the logits a chunk of positions at a time (diffusion/chunks.py).
    Float32 by default; `dtype=None` keeps the compute dtype."""
    return self.output_layer.project(h, dtype)

  def head(self):
    """(project, params): `project(params, h) == self.project(h)`, a pure function of the
    output layer's own parameters (diffusion/chunks.chunk_sum takes their gradient chunk by
    chunk)."""
    graphdef, params = nnx.split(self.output_layer)
    return (lambda p, h: nnx.merge(graphdef, p).project(h)), params

  def embedding(self):
    """(embed, params): `embed(params, x)` is the input embedding [B, L, d] float32 of ids or
    probabilities x, a pure function of the embedding table, so that a soft [B, L, V] input
    can be embedded a chunk of positions at a time (processes/chunked.py, IDLM-Duo)."""
    graphdef, params = nnx.split(self.vocab_embed)
    dtype = self.dtype
    return (lambda p, x: nnx.merge(graphdef, p)(x, dtype)), params

  def features(self, x: jax.Array, sigma: jax.Array, *,
               dropout_key: Optional[jax.Array] = None) -> jax.Array:
    """The output projection's input [B, L, d] (compute dtype): every layer but the last
    Linear(d, V), for ids [B, L] (or probabilities [B, L, V]) and sigma [B]."""
    if x.ndim == 3 and x.shape[-1] != self.vocab_size:
      raise ValueError(f"probability input has {x.shape[-1]} classes, expected {self.vocab_size}")
    return self.features_from_embedding(self.vocab_embed(x, self.dtype), sigma,
                                        dropout_key=dropout_key)

  def features_from_embedding(self, e: jax.Array, sigma: jax.Array, *,
                              dropout_key: Optional[jax.Array] = None) -> jax.Array:
    """`features` from the input embedding e [B, L, d] (what `embedding()` gives): the blocks
    and the final layer's norm and modulation."""
    if e.shape[-1] != self.hidden_size:
      raise ValueError(f"embedding width {e.shape[-1]}, expected {self.hidden_size}")
    if not self.time_conditioning:
      sigma = jnp.zeros_like(sigma)  # MDLM: the network ignores t, adaLN sees c(0).
    h = layers.constrain(e)
    c = nnx.silu(self.sigma_map(sigma))
    rope = layers.rope_cos_sin(h.shape[1], self.head_dim, ROPE_BASE)
    keys = [None] * len(self.blocks)
    if dropout_key is not None and self.dropout > 0.0:
      keys = list(rng.split(dropout_key, len(self.blocks)))
    run = nnx.remat(_run_block) if self.remat == "block" else _run_block
    for block, key in zip(self.blocks, keys):
      h = layers.constrain(run(block, h, c, rope, key))
    return self.output_layer.features(h, c)


def _run_block(block: DDiTBlock, h: jax.Array, c: jax.Array, rope, key) -> jax.Array:
  """One block as a function of the module (the unit `nnx.remat` recomputes)."""
  return block(h, c, rope, dropout_key=key)


# ---------------------------------------------------------------------------- torch mapping


def rotary_inv_freq(head_dim: int) -> np.ndarray:
  """The `rotary_emb.inv_freq` buffer of MDLM's Rotary: 1/10000^(arange(0, hd, 2)/hd), float32."""
  exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  return (1.0 / (np.float32(ROPE_BASE) ** exponent)).astype(np.float32)


def _torch_key(path: tuple) -> tuple[str, bool]:
  """nnx path -> (PyTorch state_dict key, whether the array is transposed)."""
  modules = [{"mlp_0": "mlp.0", "mlp_2": "mlp.2"}.get(str(p), str(p)) for p in path[:-1]]
  leaf = str(path[-1])
  name, transpose = {"kernel": ("weight", True), "scale": ("weight", False)}.get(
      leaf, (leaf, False))
  return ".".join(modules + [name]), transpose


def _as_state(tree) -> nnx.State:
  """nnx.State of a Module, or the State itself."""
  return nnx.state(tree) if isinstance(tree, nnx.Module) else tree


def _leaf_value(v):
  """Raw array (or ShapeDtypeStruct) of a Variable or plain leaf."""
  return v.get_value() if isinstance(v, nnx.Variable) else v


def _registration_rank(path: tuple) -> tuple[int, ...]:
  """Sort key putting nnx paths in PyTorch `parameters()` order (block indices numerically)."""
  return tuple(p if isinstance(p, int) else _REGISTRATION_ORDER.index(str(p)) for p in path)


def torch_param_names(state) -> dict[str, tuple[tuple, bool]]:
  """PyTorch key -> (nnx path, transpose) for every DIT parameter, in `parameters()` order."""
  paths = sorted((tuple(path) for path, _ in nnx.to_flat_state(_as_state(state))),
                 key=_registration_rank)
  return {_torch_key(path)[0]: (path, _torch_key(path)[1]) for path in paths}


def to_torch_state_dict(state, *, head_dim: Optional[int] = None,
                        vocab_size: Optional[int] = None) -> dict[str, np.ndarray]:
  """float32 NumPy arrays under PyTorch keys and layouts; adds the RoPE buffer if head_dim given.

  Vocabulary padding is removed: the `VOCAB_KEYS` keep their first `vocab_size` rows
  (default: a DIT module's own `vocab_size`; a bare state is exported as stored unless
  vocab_size is given).
  """
  if vocab_size is None and isinstance(state, DIT):
    vocab_size = state.vocab_size
  flat = dict(nnx.to_flat_state(_as_state(state)))
  out = {}
  for key, (path, transpose) in torch_param_names(state).items():
    value = np.asarray(jax.device_get(_leaf_value(flat[path])))
    value = value.T if transpose else value
    out[key] = value[:vocab_size] if key in VOCAB_KEYS and vocab_size else value
  if head_dim is not None:
    out[ROTARY_BUFFER] = rotary_inv_freq(head_dim)
  return out


def _check_buffer(value, head_dim: Optional[int]) -> list[str]:
  """Problems with a `rotary_emb.inv_freq` buffer found in a checkpoint (it is not loaded)."""
  if head_dim is None:
    return []
  expected = rotary_inv_freq(head_dim)
  value = np.asarray(value)
  if value.shape != expected.shape:
    return [f"key '{ROTARY_BUFFER}': checkpoint shape {value.shape} != model shape "
            f"{expected.shape}"]
  if not np.allclose(value, expected, rtol=1e-6, atol=0.0):
    return [f"key '{ROTARY_BUFFER}': values differ from 1/10000^(arange(0, {head_dim}, 2)/"
            f"{head_dim})"]
  return []


# The config fields that set each axis (torch layout) of each PyTorch key, for error messages.
_V = "the tokenizer's vocabulary (config.data.tokenizer)"
_D, _C = "config.model.hidden_size", "config.model.cond_dim"
_M = "config.model.mlp_ratio x config.model.hidden_size"
_AXIS_FIELDS = {
    "vocab_embed.embedding": (_V, _D),
    "sigma_map.mlp.0.weight": (_C, "the 256 sinusoid features (fixed)"),
    "sigma_map.mlp.0.bias": (_C,), "sigma_map.mlp.2.weight": (_C, _C),
    "sigma_map.mlp.2.bias": (_C,),
    "blocks.*.norm1.weight": (_D,), "blocks.*.norm2.weight": (_D,),
    "blocks.*.attn_qkv.weight": ("3 x " + _D, _D), "blocks.*.attn_out.weight": (_D, _D),
    "blocks.*.mlp.0.weight": (_M, _D), "blocks.*.mlp.0.bias": (_M,),
    "blocks.*.mlp.2.weight": (_D, _M), "blocks.*.mlp.2.bias": (_D,),
    "blocks.*.adaLN_modulation.weight": ("6 x " + _D, _C),
    "blocks.*.adaLN_modulation.bias": ("6 x " + _D,),
    "output_layer.norm_final.weight": (_D,),
    "output_layer.linear.weight": (_V, _D), "output_layer.linear.bias": (_V,),
    "output_layer.adaLN_modulation.weight": ("2 x " + _D, _C),
    "output_layer.adaLN_modulation.bias": ("2 x " + _D,),
}


def _shape_fields(key: str, found: tuple, expected: tuple) -> str:
  """Which config fields set the axes of `key` that differ (for a shape-mismatch message)."""
  fields = _AXIS_FIELDS.get(re.sub(r"^blocks\.\d+\.", "blocks.*.", key))
  if fields is None:
    return ""
  if len(found) != len(expected):
    return f"; {len(expected)} axes, set by {', '.join(dict.fromkeys(fields))}"
  bad = [f"axis {i} is {fields[i]}" for i, (a, b) in enumerate(zip(found, expected)) if a != b]
  return f"; {', '.join(bad)}" if bad else ""


def _vocab_rows(state) -> Optional[int]:
  """Rows of the (possibly padded) input embedding of a DIT state, None if it has none."""
  flat = dict(nnx.to_flat_state(state))
  leaf = flat.get(("vocab_embed", "embedding"))
  return None if leaf is None else int(_leaf_value(leaf).shape[0])


def pad_vocab_rows(state_dict, rows: Optional[int]) -> dict:
  """`state_dict` with the `VOCAB_KEYS` zero-padded along their first axis to `rows`.

  Only when all three are present, agree on a vocabulary V and V < rows; anything else is
  returned unchanged (and shape mismatches are reported by `from_torch_state_dict`).
  """
  if rows is None or not all(k in state_dict and np.ndim(state_dict[k]) >= 1
                             for k in VOCAB_KEYS):
    return state_dict
  sizes = {np.shape(state_dict[k])[0] for k in VOCAB_KEYS}
  if len(sizes) != 1 or sizes.pop() >= rows:
    return state_dict
  out = dict(state_dict)
  for k in VOCAB_KEYS:
    value = np.asarray(state_dict[k])
    out[k] = np.pad(value, [(0, rows - value.shape[0])] + [(0, 0)] * (value.ndim - 1))
  return out


def from_torch_state_dict(state_dict, abstract_state, *,
                          head_dim: Optional[int] = None) -> nnx.State:
  """A DIT nnx.State (host NumPy values, dtypes and sharding metadata of abstract_state).

  `state_dict` maps PyTorch keys (no `backbone.` prefix) to arrays in PyTorch layout;
  `abstract_state` is e.g. `nnx.state(nnx.eval_shape(lambda: DIT(...)))`. A missing or
  unexpected key, or a shape mismatch, raises ConversionError (a ValueError) naming the key,
  both shapes and the config fields that set the axes that differ.
  The `rotary_emb.inv_freq` buffer may be present; it is checked when head_dim is given.
  A vocabulary-padded model (`model.vocab_pad_multiple`) takes an unpadded checkpoint: the
  `VOCAB_KEYS` get zero rows up to the model's padded size (`pad_vocab_rows`).
  """
  abstract_state = _as_state(abstract_state)
  state_dict = pad_vocab_rows(state_dict, _vocab_rows(abstract_state))
  flat = dict(nnx.to_flat_state(abstract_state))
  names = torch_param_names(abstract_state)
  problems = [f"unexpected key '{k}' with shape {tuple(np.shape(v))}"
              for k, v in state_dict.items() if k not in names and k != ROTARY_BUFFER]
  if ROTARY_BUFFER in state_dict:
    problems += _check_buffer(state_dict[ROTARY_BUFFER], head_dim)
  leaves = []
  for key, (path, transpose) in names.items():
    var = flat[path]
    model_shape = tuple(_leaf_value(var).shape)
    torch_shape = model_shape[::-1] if transpose else model_shape
    if key not in state_dict:
      problems.append(f"missing key '{key}' (model shape {torch_shape} in torch layout)")
      continue
    value = np.asarray(state_dict[key])
    if value.shape != torch_shape:
      problems.append(f"key '{key}': checkpoint shape {value.shape} != model shape "
                      f"{torch_shape} (torch layout"
                      f"{_shape_fields(key, value.shape, torch_shape)})")
      continue
    value = value.T if transpose else value
    value = np.ascontiguousarray(value, dtype=_leaf_value(var).dtype)
    leaves.append((path, var.replace(value)))
  if problems:  # a ConversionError (a ValueError): the converter reports it as one message
    raise ConversionError("PyTorch state_dict does not match the DIT:\n  " +
                          "\n  ".join(problems))
  return nnx.from_flat_state(leaves)
