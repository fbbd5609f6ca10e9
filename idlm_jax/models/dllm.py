"""Bidirectional diffusion LLM decoders in Flax NNX: LLaDA-8B and Dream-7B, one implementation.

Both published dLLMs are pre-norm Llama-style decoders run WITHOUT a causal mask:

  x = embed(ids)
  per layer:  x = x + o_proj(attn(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n))),  n = RMSNorm(x)
              x = x + down_proj(silu(gate_proj(n)) * up_proj(n)),              n = RMSNorm(x)
  logits = lm_head(RMSNorm(x))           (Dream: shifted one position, see below)

The official files this matches (tests/models/test_dllm.py checks the logits to 1e-4 in float32):
  - LLaDA (Nie et al. 2025, "Large Language Diffusion Models"): `modeling_llada.py` of the HF
    repo GSAI-ML/LLaDA-8B-{Base,Instruct}, `LLaDALlamaBlock` (block_type "llama"): RMSNorm
    `attn_norm` / `ff_norm` (float32 statistics, weight only), q/k/v/`attn_out` projections,
    MLP `ff_out(act(ff_proj(n)) * up_proj(n))` with activation "silu", so `ff_proj` is the
    GATE and `up_proj` the up branch; final `ln_f` and an untied `ff_out` head of
    `embedding_size` columns (`weight_tying` false). RoPE (`RotaryEmbedding`, rope_full_precision)
    is the rotate-half (GPT-NeoX) convention, inv_freq = 1/theta^(arange(0, hd, 2)/hd), in
    float32; k/v heads are shared by `repeat_interleave` (query head h uses kv head
    h // (n_heads / n_kv_heads)); attention is softmax(q k^T / sqrt(hd)) with no mask except
    key padding (`attention_mask`: an additive -inf bias on padded keys).
  - Dream (Ye et al. 2025, "Dream 7B"): `modeling_dream.py` of Dream-org/Dream-v0-{Base,
    Instruct}-7B, a Qwen2 decoder with `is_causal=False`: `input_layernorm`,
    `self_attn.{q,k,v}_proj` WITH biases, `o_proj` without, `post_attention_layernorm`,
    `mlp.down_proj(silu(gate_proj) * up_proj)`, final `norm`, `lm_head`; RoPE from the
    transformers "default" rope init (same convention and inv_freq as above) and grouped-query
    attention via `repeat_kv` (same grouping as above).
  - Dream's logit shift (`generation_utils.py` `_sample`, also Fast-dLLM's
    `generation_utils_block.py`): `logits = cat([logits[:, :1], logits[:, :-1]], 1)`: the
    prediction for position i is the output at position i-1, and position 0 keeps its OWN
    output. `DLLMConfig.shift_logits` applies exactly that, in one place (`shift_right`, applied
    to the output features, which is the same as shifting the logits since the head is
    position-wise), so the logits and `features` of a Dream model are already aligned.

Numerics follow the project's DiT (`models/dit.py`): parameters float32, the residual stream,
RMSNorm and RoPE in float32, matmuls in `dtype` (float32 or bfloat16), logits float32.

Logical sharding names (`nnx.get_partition_spec`; mesh axes from train/parallel.LOGICAL_RULES):
  embed.embedding ('vocab', 'embed'); *_norm.scale ('embed',); q_proj.kernel ('embed', 'heads'),
  bias ('heads',); k_proj/v_proj.kernel ('embed', 'kv_heads'), bias ('kv_heads',);
  o_proj.kernel ('heads', 'embed'); gate_proj/up_proj.kernel ('embed', 'mlp');
  down_proj.kernel ('mlp', 'embed'); lm_head.kernel ('embed', 'vocab').

KV cache (Fast-dLLM, Wu et al. 2025, arXiv 2505.22618; its `generate_with_prefix_cache` /
`generate_with_dual_cache`): `forward_with_cache` is a full forward that also returns every
layer's K/V after RoPE (`KVCache`, static shapes); `forward_block` runs only a block of positions
[s, s + Lb) and attends to the block's fresh K/V plus the cached K/V of every other position
(kind "dual") or of the prefix [0, s) only (kind "prefix": positions >= s + Lb are not attended;
Fast-dLLM's prefix cache is the case s + Lb = L, i.e. the block is the whole remainder). The
block start may be a traced integer (`lax.dynamic_update_slice`). See `forward_block` for the
exact equalities (tested) and for the Dream shift at the block's first position.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from idlm_jax import rng
from idlm_jax.models import layers

ARCHS = ("llada", "dream")
CACHE_KINDS = ("dual", "prefix")
INIT_STD = 0.02  # random init (checkpoints are loaded over it): Dream's initializer_range


@dataclasses.dataclass(frozen=True)
class DLLMConfig:
  """Architecture of a LLaDA- or Dream-style bidirectional decoder (hashable, static).

  `arch` names the checkpoint layout (models/hf_dllm.py); everything else is architecture:
  `vocab_size` is the width of the logits the model returns; `embedding_size` (>= vocab_size;
  None: equal) the rows of the embedding table and columns of the head (LLaDA's config field;
  extra columns are sliced off the logits). `mlp_hidden_size` is the SwiGLU width (LLaDA
  `mlp_hidden_size`, Dream `intermediate_size`). `qkv_bias`: biases on q/k/v (Dream; LLaDA's
  `include_qkv_bias`). `tie_embeddings`: the head is the embedding table (LLaDA `weight_tying`,
  Dream `tie_word_embeddings`; false for both published models). `shift_logits`: Dream's
  one-position shift. The token ids are metadata for samplers.
  """
  arch: str
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  mlp_hidden_size: int
  rope_theta: float
  rms_norm_eps: float
  qkv_bias: bool = False
  tie_embeddings: bool = False
  shift_logits: bool = False
  embedding_size: Optional[int] = None
  max_sequence_length: int = 4096
  mask_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None

  def __post_init__(self):
    problems = []
    if self.arch not in ARCHS:
      problems.append(f"arch must be one of {ARCHS}, got {self.arch!r}")
    if self.d_model % self.n_heads:
      problems.append(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
    elif (self.d_model // self.n_heads) % 2:
      problems.append(f"head_dim {self.d_model // self.n_heads} must be even for RoPE")
    if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
      problems.append(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
    if self.embedding_size is not None and self.embedding_size < self.vocab_size:
      problems.append(f"embedding_size {self.embedding_size} < vocab_size {self.vocab_size}")
    if self.mask_token_id is not None and not 0 <= self.mask_token_id < self.vocab_size:
      problems.append(f"mask_token_id {self.mask_token_id} is outside [0, {self.vocab_size})")
    if problems:
      raise ValueError("invalid DLLMConfig: " + "; ".join(problems))

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def rows(self) -> int:
    """Rows of the embedding table / columns of the head (embedding_size or vocab_size)."""
    return self.embedding_size or self.vocab_size

  def replace(self, **changes) -> "DLLMConfig":
    return dataclasses.replace(self, **changes)


def llada_8b() -> DLLMConfig:
  """GSAI-ML/LLaDA-8B-{Base,Instruct} config.json: d_model 4096, n_layers 32, n_heads 32,
  n_kv_heads 32, mlp_hidden_size 12288, vocab_size = embedding_size 126464, rope_theta 5e5,
  rms_norm_eps 1e-5, include_bias/include_qkv_bias false, weight_tying false, max_sequence_length
  4096, mask_token_id 126336, eos = pad 126081."""
  return DLLMConfig(
      arch="llada", vocab_size=126464, embedding_size=126464, d_model=4096, n_layers=32,
      n_heads=32, n_kv_heads=32, mlp_hidden_size=12288, rope_theta=500000.0, rms_norm_eps=1e-5,
      qkv_bias=False, tie_embeddings=False, shift_logits=False, max_sequence_length=4096,
      mask_token_id=126336, pad_token_id=126081, eos_token_id=126081)


def dream_7b() -> DLLMConfig:
  """Dream-org/Dream-v0-{Base,Instruct}-7B config.json (Qwen2.5-7B shapes): hidden_size 3584,
  num_hidden_layers 28, num_attention_heads 28, num_key_value_heads 4, intermediate_size 18944,
  vocab_size 152064, rope_theta 1e6, rms_norm_eps 1e-6, tie_word_embeddings false,
  max_position_embeddings 131072, mask_token_id 151666, pad = eos 151643; q/k/v biases."""
  return DLLMConfig(
      arch="dream", vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
      mlp_hidden_size=18944, rope_theta=1000000.0, rms_norm_eps=1e-6, qkv_bias=True,
      tie_embeddings=False, shift_logits=True, max_sequence_length=131072,
      mask_token_id=151666, pad_token_id=151643, eos_token_id=151643)


def tiny(arch: str = "llada") -> DLLMConfig:
  """A test-sized model of either family (the parity fixtures in tests/models/data use it)."""
  if arch == "llada":
    return DLLMConfig(
        arch="llada", vocab_size=300, embedding_size=320, d_model=64, n_layers=2, n_heads=4,
        n_kv_heads=4, mlp_hidden_size=128, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_sequence_length=64, mask_token_id=299, pad_token_id=298, eos_token_id=298)
  if arch == "dream":
    return DLLMConfig(
        arch="dream", vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
        mlp_hidden_size=128, rope_theta=1000000.0, rms_norm_eps=1e-6, qkv_bias=True,
        shift_logits=True, max_sequence_length=64, mask_token_id=299, pad_token_id=298,
        eos_token_id=298)
  raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


PRESETS = {"llada_8b": llada_8b, "dream_7b": dream_7b, "tiny_llada": lambda: tiny("llada"),
           "tiny_dream": lambda: tiny("dream")}


class KVCache(NamedTuple):
  """Per-layer keys and values after RoPE: k, v [n_layers, B, L, n_kv_heads, head_dim]."""
  k: jax.Array
  v: jax.Array

  @classmethod
  def zeros(cls, config: DLLMConfig, batch: int, length: int, dtype=jnp.float32) -> "KVCache":
    shape = (config.n_layers, batch, length, config.n_kv_heads, config.head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


# ---------------------------------------------------------------------------- pure functions


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float):
  """cos/sin [..., L, 1, hd/2] (float32) of integer positions [..., L].

  inv_freq = 1/theta^(arange(0, hd, 2)/hd) and angle = position * inv_freq, both in float32:
  LLaDA's `RotaryEmbedding.get_rotary_embedding` and transformers' default rope init (Dream).
  """
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]


def shift_right(h: jax.Array, first: Optional[jax.Array] = None) -> jax.Array:
  """Dream's alignment cat([first, h[:, :-1]], 1) on [B, L, ...]; first defaults to h[:, :1]."""
  first = h[:, :1] if first is None else first[:, None]
  return jnp.concatenate([first, h[:, :-1]], axis=1)


def key_mask(attention_mask: Optional[jax.Array], length: int,
             limit: Optional[jax.Array] = None) -> Optional[jax.Array]:
  """Boolean [B or 1, 1, 1, L] mask of the keys a query may attend to (None: all).

  attention_mask [B, L] (1/True = a real token, 0 = padding, HF convention) masks keys only,
  as LLaDA's additive bias does; `limit` (traced int) also hides keys at positions >= limit.
  """
  valid = None
  if attention_mask is not None:
    if attention_mask.shape[-1] != length:
      raise ValueError(f"attention_mask has length {attention_mask.shape[-1]}, expected {length}")
    valid = attention_mask.astype(bool)
  if limit is not None:
    below = (jnp.arange(length) < limit)[None]
    valid = below if valid is None else valid & below
  return None if valid is None else valid[:, None, None, :]


# ---------------------------------------------------------------------------- layers


def _dense(d_in: int, d_out: int, axes: tuple, *, bias: bool, dtype, rngs) -> nnx.Linear:
  init = layers.partitioned(nnx.initializers.normal(INIT_STD), axes)
  return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=init,
                    bias_init=layers.partitioned(nnx.initializers.zeros_init(), (axes[1],)),
                    rngs=rngs)


class RMSNorm(nnx.Module):
  """weight * x / sqrt(mean(x^2) + eps) with float32 statistics (LLaDA RMSLayerNorm, Dream
  DreamRMSNorm); returns float32."""

  def __init__(self, dim: int, eps: float):
    self.eps = eps
    init = layers.partitioned(nnx.initializers.ones_init(), ("embed",))
    self.scale = nnx.Param(init(jax.random.key(0), (dim,), jnp.float32))  # ones: key unused

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return self.scale[...] * (x * jax.lax.rsqrt(var + self.eps))


class DecoderLayer(nnx.Module):
  """Pre-norm bidirectional attention + SwiGLU MLP (LLaDALlamaBlock / DreamDecoderLayer)."""

  def __init__(self, config: DLLMConfig, dtype, attention: str, dropout: float, *,
               rngs: nnx.Rngs):
    c = config
    d, hd = c.d_model, c.head_dim
    self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, hd
    self.dtype, self.attention, self.dropout = dtype, attention, dropout
    self.attn_norm = RMSNorm(d, c.rms_norm_eps)
    self.q_proj = _dense(d, c.n_heads * hd, ("embed", "heads"), bias=c.qkv_bias, dtype=dtype,
                         rngs=rngs)
    self.k_proj = _dense(d, c.n_kv_heads * hd, ("embed", "kv_heads"), bias=c.qkv_bias,
                         dtype=dtype, rngs=rngs)
    self.v_proj = _dense(d, c.n_kv_heads * hd, ("embed", "kv_heads"), bias=c.qkv_bias,
                         dtype=dtype, rngs=rngs)
    self.o_proj = _dense(c.n_heads * hd, d, ("heads", "embed"), bias=False, dtype=dtype,
                         rngs=rngs)
    self.mlp_norm = RMSNorm(d, c.rms_norm_eps)
    self.gate_proj = _dense(d, c.mlp_hidden_size, ("embed", "mlp"), bias=False, dtype=dtype,
                            rngs=rngs)
    self.up_proj = _dense(d, c.mlp_hidden_size, ("embed", "mlp"), bias=False, dtype=dtype,
                          rngs=rngs)
    self.down_proj = _dense(c.mlp_hidden_size, d, ("mlp", "embed"), bias=False, dtype=dtype,
                            rngs=rngs)

  def __call__(self, x: jax.Array, rope, mask: Optional[jax.Array], cache=None, write_at=None,
               skip: int = 0, dropout_key: Optional[jax.Array] = None):
    """x [B, T, d] float32 -> (x, (keys, values)) with the K/V the queries attended to.

    Without `cache`: keys/values are the T rows' own (full forward). With cache = (k, v)
    [B, L, Hkv, hd]: rows skip.. of the fresh K/V are written at position `write_at` and the
    queries attend to that merged [B, L] set (block forward), masked by `mask`.
    """
    b, t, _ = x.shape
    h = self.attn_norm(x).astype(self.dtype)
    q = self.q_proj(h).reshape(b, t, self.n_heads, self.head_dim)
    k = self.k_proj(h).reshape(b, t, self.n_kv_heads, self.head_dim)
    v = self.v_proj(h).reshape(b, t, self.n_kv_heads, self.head_dim)
    q, k = layers.apply_rope(q, *rope), layers.apply_rope(k, *rope)
    if cache is not None:
      z = jnp.zeros((), jnp.int32)  # int32 indices also when x64 is on (float64 decoding)
      start = (z, jnp.asarray(write_at, jnp.int32), z, z)
      k = jax.lax.dynamic_update_slice(cache[0], k[:, skip:].astype(cache[0].dtype), start)
      v = jax.lax.dynamic_update_slice(cache[1], v[:, skip:].astype(cache[1].dtype), start)
    impl = None
    if mask is None:  # cuDNN only for the unmasked full forward; masked: XLA
      impl = layers.attention_implementation(self.attention, self.dtype, self.head_dim)
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                       scale=1.0 / math.sqrt(self.head_dim),
                                       implementation=impl)
    key_attn, key_mlp = (None, None) if dropout_key is None else rng.split(dropout_key)
    attn = self.o_proj(out.reshape(b, t, self.n_heads * self.head_dim))
    x = x + layers.dropout(attn, self.dropout, key_attn).astype(jnp.float32)
    h = self.mlp_norm(x).astype(self.dtype)
    mlp = self.down_proj(nnx.silu(self.gate_proj(h)) * self.up_proj(h))
    return x + layers.dropout(mlp, self.dropout, key_mlp).astype(jnp.float32), (k, v)


def _run_layer(layer: DecoderLayer, x, rope, mask, key):
  """One layer of the full forward as a function of the module (the unit nnx.remat recomputes)."""
  return layer(x, rope, mask, dropout_key=key)



def _project(head, h: jax.Array, vocab: int) -> jax.Array:
  """Float32 logits [..., vocab] of h: `head` is the tied nnx.Embed (h E^T) or the lm_head."""
  if isinstance(head, nnx.Embed):
    logits = jnp.matmul(h, head.embedding[...].astype(h.dtype).T)
  else:
    logits = head(h)
  return logits[..., :vocab].astype(jnp.float32)

class DLLM(nnx.Module):
  """LLaDA / Dream decoder: logits = DLLM(ids) [B, L, V] (see the module docstring).

  `dtype` is the matmul compute dtype (float32 or bfloat16); parameters are float32.
  `attention` picks jax.nn.dot_product_attention's kernel for unmasked forwards ("auto": cuDNN
  on GPU in 16-bit, "xla", "cudnn"); masked ones (padding, block forwards) use XLA.
  `remat="block"` recomputes each layer in the backward pass. `dropout` is a residual dropout
  rate for fine-tuning (both published models use 0).
  """

  def __init__(self, config: DLLMConfig, *, dtype=jnp.float32, attention: str = "auto",
               remat: str = "none", dropout: float = 0.0, rngs: nnx.Rngs):
    if attention not in layers.ATTENTION_KINDS:
      raise ValueError(f"attention must be one of {layers.ATTENTION_KINDS}, got {attention!r}")
    if remat not in layers.REMAT_KINDS:
      raise ValueError(f"remat must be one of {layers.REMAT_KINDS}, got {remat!r}")
    c = config
    self.config, self.dtype, self.remat, self.dropout = c, dtype, remat, dropout
    self.vocab_size = c.vocab_size
    emb_init = layers.partitioned(nnx.initializers.normal(INIT_STD), ("vocab", "embed"))
    self.embed = nnx.Embed(c.rows, c.d_model, param_dtype=jnp.float32, embedding_init=emb_init,
                           rngs=rngs)
    self.layers = nnx.List([DecoderLayer(c, dtype, attention, dropout, rngs=rngs)
                            for _ in range(c.n_layers)])
    self.final_norm = RMSNorm(c.d_model, c.rms_norm_eps)
    if not c.tie_embeddings:
      self.lm_head = _dense(c.d_model, c.rows, ("embed", "vocab"), bias=False, dtype=dtype,
                            rngs=rngs)

  # -------------------------------------------------------------------------- pieces

  def _embed(self, x: jax.Array) -> jax.Array:
    """float32 [B, L, d] for ids [B, L] or the expected embedding of probabilities [B, L, V]."""
    table = self.embed.embedding[...]
    if jnp.issubdtype(x.dtype, jnp.integer):
      return jnp.take(table, x, axis=0)
    if x.shape[-1] != self.vocab_size:
      raise ValueError(f"probability input has {x.shape[-1]} classes, expected {self.vocab_size}")
    return jnp.matmul(x.astype(jnp.float32), table[:self.vocab_size],
                      precision=jax.lax.Precision.HIGHEST)

  def _positions(self, positions, length: int, start=0) -> jax.Array:
    if positions is None:
      return (jnp.asarray(start, jnp.int32) + jnp.arange(length, dtype=jnp.int32))[None]
    if positions.shape[-1] != length:
      raise ValueError(f"positions has length {positions.shape[-1]}, expected {length}")
    return positions

  def _trunk(self, x, positions, mask, cache: Optional[KVCache] = None, write_at=None,
             skip: int = 0, dropout_key=None):
    """All layers: float32 residual stream [B, T, d] and each layer's attended K/V."""
    h = layers.constrain(self._embed(x))
    rope = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
    keys = [None] * len(self.layers)
    if dropout_key is not None and self.dropout > 0.0:
      keys = list(rng.split(dropout_key, len(self.layers)))
    run = nnx.remat(_run_layer) if self.remat == "block" else _run_layer
    kv = []
    for i, (layer, key) in enumerate(zip(self.layers, keys)):
      if cache is None:
        h, layer_kv = run(layer, h, rope, mask, key)
      else:
        h, layer_kv = layer(h, rope, mask, (cache.k[i], cache.v[i]), write_at, skip)
      h = layers.constrain(h)
      kv.append(layer_kv)
    return h, kv

  def _out(self, h: jax.Array) -> jax.Array:
    """Final RMSNorm in the compute dtype (the head's input), unshifted."""
    return self.final_norm(h).astype(self.dtype)

  # -------------------------------------------------------------------------- interface

  def __call__(self, x: jax.Array, sigma: Optional[jax.Array] = None, *,
               dropout_key: Optional[jax.Array] = None,
               attention_mask: Optional[jax.Array] = None,
               positions: Optional[jax.Array] = None) -> jax.Array:
    """Float32 logits [B, L, V] for ids [B, L] (or probabilities [B, L, V]).

    `sigma` is ignored (LLaDA and Dream are not time-conditioned). attention_mask [B, L]
    (1 = token, 0 = padding) hides padded keys; `positions` [B, L] overrides the RoPE
    positions arange(L) (Dream's left-padded batches use cumsum(mask) - 1). Dream's logits
    are shifted (`shift_right`). Equal to `project(features(...))`.
    """
    return self.project(self.features(x, sigma, dropout_key=dropout_key,
                                      attention_mask=attention_mask, positions=positions))

  def features(self, x: jax.Array, sigma: Optional[jax.Array] = None, *,
               dropout_key: Optional[jax.Array] = None,
               attention_mask: Optional[jax.Array] = None,
               positions: Optional[jax.Array] = None) -> jax.Array:
    """The head's input [B, L, d] (compute dtype, aligned: shifted for Dream)."""
    del sigma
    length = x.shape[1]
    h, _ = self._trunk(x, self._positions(positions, length), key_mask(attention_mask, length),
                       dropout_key=dropout_key)
    h = self._out(h)
    return shift_right(h) if self.config.shift_logits else h

  def project(self, h: jax.Array) -> jax.Array:
    """Float32 logits [..., V] of head inputs h [..., d] (the output projection only)."""
    return _project(self.embed if self.config.tie_embeddings else self.lm_head, h,
                    self.vocab_size)

  def head(self):
    """(project, params): `project(params, h) == self.project(h)`, a pure function of the
    output projection's own parameters (the tied embedding or lm_head;
    diffusion/chunks.chunk_sum takes their gradient chunk by chunk)."""
    graphdef, params = nnx.split(self.embed if self.config.tie_embeddings else self.lm_head)
    vocab = self.vocab_size
    return (lambda p, h: _project(nnx.merge(graphdef, p), h, vocab)), params

  def forward_with_cache(self, x: jax.Array, *, attention_mask: Optional[jax.Array] = None,
                         positions: Optional[jax.Array] = None):
    """(logits [B, L, V], KVCache of every layer's K/V after RoPE for all L positions).

    The logits equal `__call__`'s; the cache holds the compute dtype.
    """
    length = x.shape[1]
    h, kv = self._trunk(x, self._positions(positions, length), key_mask(attention_mask, length))
    h = self._out(h)
    h = shift_right(h) if self.config.shift_logits else h
    cache = KVCache(jnp.stack([k for k, _ in kv]), jnp.stack([v for _, v in kv]))
    return self.project(h), cache

  def forward_block(self, block: jax.Array, start, cache: KVCache, *, kind: str = "dual",
                    prev_token: Optional[jax.Array] = None,
                    attention_mask: Optional[jax.Array] = None,
                    positions: Optional[jax.Array] = None, return_cache: bool = False):
    """Logits [B, Lb, V] of the block of ids [B, Lb] at positions [start, start + Lb).

    Each layer's queries are the block's rows; its keys/values are the cache's (length L)
    with the block's slots replaced by the block's fresh K/V. kind="dual" attends to all L
    positions (prefix and suffix cached); kind="prefix" only to positions < start + Lb (the
    cached prefix and the block). `start` may be traced; the block must fit (start + Lb <= L).
    attention_mask [B, L] is the key padding mask of the whole canvas; `positions` [B, Lb]
    overrides the block's RoPE positions start + arange(Lb).

    Exact equalities (tests/models/test_dllm.py): with the cache of `forward_with_cache(x)`
    and block = x[:, s:e], kind="dual" gives forward(x)[:, s:e]; with the cache of
    `forward_with_cache(x, attention_mask=(pos < e))`, kind="prefix" gives the full forward
    of the truncated sequence x[:, :e] at [s, e) (a cache made from all L positions has
    prefix K/V that saw the suffix, so the prefix kind then differs from any full forward).

    Dream's shift needs the output at position s-1 for position s. With `prev_token` ([B]
    ids at s-1) that position runs as one extra query row (its own K/V taken from the cache,
    not rewritten) and the block's logits are exact (at s = 0 the row is ignored: position 0
    keeps its own output). Without it, the block is shifted on its own, so position s gets
    position s's own output, which is what Fast-dLLM's Dream block decoding does (it commits
    position s from the refresh forward before the block steps, so that logit is never used).
    `return_cache=True` also returns the cache with the block's K/V written in.
    """
    if kind not in CACHE_KINDS:
      raise ValueError(f"kind must be one of {CACHE_KINDS}, got {kind!r}")
    b, lb = block.shape
    length = cache.k.shape[2]
    if lb > length:
      raise ValueError(f"block of {lb} positions does not fit a cache of length {length}")
    start = jnp.asarray(start, jnp.int32)
    pos = self._positions(positions, lb, start)
    extra = bool(self.config.shift_logits and prev_token is not None)
    rows = block
    if extra:
      rows = jnp.concatenate([jnp.asarray(prev_token, block.dtype).reshape(b, 1), block], 1)
      prev_pos = jnp.maximum(pos[:, :1] - 1, 0)
      pos = jnp.concatenate([jnp.broadcast_to(prev_pos, (pos.shape[0], 1)), pos], 1)
    mask = key_mask(attention_mask, length, start + lb if kind == "prefix" else None)
    if mask is None:
      mask = jnp.ones((1, 1, 1, length), bool)
    h, kv = self._trunk(rows, pos, mask, cache=cache, write_at=start, skip=int(extra))
    h = self._out(h)
    if self.config.shift_logits:
      if extra:
        h = shift_right(h[:, 1:], first=jnp.where(start == 0, h[:, 1], h[:, 0]))
      else:
        h = shift_right(h)
    logits = self.project(h)
    if not return_cache:
      return logits
    return logits, KVCache(jnp.stack([k for k, _ in kv]), jnp.stack([v for _, v in kv]))


def build(config: DLLMConfig, *, dtype=jnp.float32, attention: str = "auto",
          remat: str = "none", dropout: float = 0.0, seed: int = 0) -> DLLM:
  """A randomly initialised DLLM (load weights with models.hf_dllm)."""
  return DLLM(config, dtype=dtype, attention=attention, remat=remat, dropout=dropout,
              rngs=nnx.Rngs(seed))
