"""GPT-2 causal LM in Flax NNX, loading Hugging Face GPT-2 weights (the Gen PPL evaluator).

Module attributes mirror the Hugging Face `GPT2LMHeadModel` names (`transformer.` prefix
dropped), so a safetensors checkpoint loads by a rename with no transposes: HF GPT-2 uses
Conv1D layers whose `weight` is [in, out], which is exactly an NNX kernel.

  HF key                      nnx path                        shape
  wte.weight                  wte.embedding                   [V, d]   (tied output head)
  wpe.weight                  wpe.embedding                   [P, d]
  h.{i}.ln_1.{weight,bias}    h.{i}.ln_1.{scale,bias}         [d]
  h.{i}.attn.c_attn.weight    h.{i}.attn.c_attn.kernel        [d, 3d]
  h.{i}.attn.c_proj.weight    h.{i}.attn.c_proj.kernel        [d, d]
  h.{i}.mlp.c_fc.weight       h.{i}.mlp.c_fc.kernel           [d, 4d]
  h.{i}.mlp.c_proj.weight     h.{i}.mlp.c_proj.kernel         [4d, d]
  ln_f.{weight,bias}          ln_f.{scale,bias}               [d]

GELU is the tanh approximation ("gelu_new"), LayerNorm eps 1e-5, attention scale 1/sqrt(hd),
causal mask. `load_pretrained(name_or_path)` reads `model.safetensors` + `config.json` from a
local folder or, when online, from the Hub (huggingface_hub imported lazily). safetensors is
parsed torch-free by the package's checked reader (`models.readers.read_safetensors`).
"""

import json
import math
import os
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from idlm_jax import rng
from idlm_jax.models import layers
from idlm_jax.models.readers import read_safetensors as _read_checked
from idlm_jax.models.readers import write_safetensors  # noqa: F401 (the package's writer)

LN_EPS = 1e-5


def _normal(std: float, axes):
  return layers.partitioned(nnx.initializers.normal(std), axes)


def _dense(d_in: int, d_out: int, axes, std: float, dtype, rngs) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, use_bias=True, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=_normal(std, axes),
                    bias_init=layers.partitioned(nnx.initializers.zeros_init(), (axes[1],)),
                    rngs=rngs)


def _ln(d: int, rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(d, epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32,
                       scale_init=layers.partitioned(nnx.initializers.ones_init(), ("embed",)),
                       bias_init=layers.partitioned(nnx.initializers.zeros_init(), ("embed",)),
                       rngs=rngs)


class Attention(nnx.Module):
  def __init__(self, d: int, n_heads: int, n_layers: int, dtype, rngs):
    self.n_heads, self.dtype = n_heads, dtype
    self.c_attn = _dense(d, 3 * d, ("embed", "heads"), 0.02, dtype, rngs)
    self.c_proj = _dense(d, d, ("heads", "embed"), 0.02 / math.sqrt(2 * n_layers), dtype, rngs)

  def __call__(self, x):
    b, s, d = x.shape
    hd = d // self.n_heads
    q, k, v = jnp.split(self.c_attn(x.astype(self.dtype)), 3, axis=-1)
    q, k, v = (t.reshape(b, s, self.n_heads, hd) for t in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(hd), is_causal=True)
    return self.c_proj(out.reshape(b, s, d)).astype(jnp.float32)


class MLP(nnx.Module):
  def __init__(self, d: int, n_layers: int, dtype, rngs):
    self.dtype = dtype
    self.c_fc = _dense(d, 4 * d, ("embed", "mlp"), 0.02, dtype, rngs)
    self.c_proj = _dense(4 * d, d, ("mlp", "embed"), 0.02 / math.sqrt(2 * n_layers), dtype, rngs)

  def __call__(self, x):
    return self.c_proj(nnx.gelu(self.c_fc(x.astype(self.dtype)), approximate=True)).astype(
        jnp.float32)


class Block(nnx.Module):
  def __init__(self, d: int, n_heads: int, n_layers: int, dropout: float, dtype, rngs):
    self.dropout = dropout
    self.ln_1 = _ln(d, rngs)
    self.attn = Attention(d, n_heads, n_layers, dtype, rngs)
    self.ln_2 = _ln(d, rngs)
    self.mlp = MLP(d, n_layers, dtype, rngs)

  def __call__(self, x, dropout_key=None):
    k1, k2 = (None, None) if dropout_key is None else rng.split(dropout_key)
    x = x + layers.dropout(self.attn(self.ln_1(x)), self.dropout, k1)
    return x + layers.dropout(self.mlp(self.ln_2(x)), self.dropout, k2)


class GPT2(nnx.Module):
  """GPT-2 LM: logits [B, L, V] (float32) of the next token at every position."""

  def __init__(self, *, vocab_size: int, n_positions: int, hidden_size: int, n_layers: int,
               n_heads: int, dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
    if hidden_size % n_heads:
      raise ValueError(f"hidden_size {hidden_size} not divisible by n_heads {n_heads}")
    self.vocab_size, self.n_positions, self.dropout = vocab_size, n_positions, dropout
    self.wte = nnx.Embed(vocab_size, hidden_size, param_dtype=jnp.float32,
                         embedding_init=_normal(0.02, ("vocab", "embed")), rngs=rngs)
    self.wpe = nnx.Embed(n_positions, hidden_size, param_dtype=jnp.float32,
                         embedding_init=_normal(0.01, (None, "embed")), rngs=rngs)
    self.h = nnx.List([Block(hidden_size, n_heads, n_layers, dropout, dtype, rngs)
                       for _ in range(n_layers)])
    self.ln_f = _ln(hidden_size, rngs)

  def __call__(self, ids: jax.Array, sigma: Optional[jax.Array] = None, *,
               dropout_key: Optional[jax.Array] = None) -> jax.Array:
    """ids [B, L] int -> float32 logits [B, L, V]; `sigma` is accepted and ignored."""
    del sigma
    length = ids.shape[1]
    if length > self.n_positions:
      raise ValueError(f"sequence of {length} tokens exceeds n_positions={self.n_positions}")
    x = self.wte.embedding[...][ids] + self.wpe.embedding[...][:length][None]
    keys = [None] * len(self.h)
    if dropout_key is not None and self.dropout > 0:
      keys = list(rng.split(dropout_key, len(self.h)))
    for block, key in zip(self.h, keys):
      x = block(x, key)
    x = self.ln_f(x)
    return jnp.einsum("bld,vd->blv", x, self.wte.embedding[...],
                      precision=jax.lax.Precision.HIGHEST)


def build(model_cfg, vocab_size: int, n_positions: int, rngs: nnx.Rngs) -> GPT2:
  """GPT-2 from the `model` config section (n_blocks layers, no cond)."""
  return GPT2(vocab_size=vocab_size, n_positions=n_positions, hidden_size=model_cfg.hidden_size,
              n_layers=model_cfg.n_blocks, n_heads=model_cfg.n_heads, dropout=model_cfg.dropout,
              dtype=layers.DTYPES[model_cfg.dtype], rngs=rngs)


# ---------------------------------------------------------------------------- HF weights


def hf_key(path: tuple) -> str:
  """nnx path -> HF GPT-2 key (without `transformer.`)."""
  parts = [str(p) for p in path]
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(parts[-1], parts[-1])
  return ".".join(parts[:-1] + [leaf])


def read_safetensors(path) -> dict[str, np.ndarray]:
  """{name: NumPy array} of a .safetensors file, BF16 widened to float32.

  The package's one checked, torch-free reader (`models.readers.read_safetensors`: bounded
  header, known dtypes, offsets inside the file) plus the widening GPT-2 loading wants;
  `write_safetensors` is the package's writer, re-exported.
  """
  return {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v
          for k, v in _read_checked(path).items()}


def from_hf_state_dict(sd: dict, model: GPT2) -> GPT2:
  """Copy HF GPT-2 weights (keys with or without `transformer.`) into `model` in place."""
  sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
  state = nnx.state(model, nnx.Param)
  flat = []
  problems = []
  for path, var in nnx.to_flat_state(state):
    key = hf_key(path)
    if key not in sd:
      problems.append(f"missing key {key!r}")
      continue
    value = np.asarray(sd[key], np.float32)
    if value.shape != tuple(var.get_value().shape):
      problems.append(f"{key}: checkpoint {value.shape} != model {var.get_value().shape}")
      continue
    flat.append((path, var.replace(jnp.asarray(value))))
  if problems:
    raise ValueError("GPT-2 weights do not match the model:\n  " + "\n  ".join(problems))
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def resolve_local(name_or_path: str) -> pathlib.Path:
  """A folder with config.json + model.safetensors: local path, else the HF hub (online)."""
  p = pathlib.Path(os.path.expanduser(name_or_path))
  if p.is_dir():
    return p
  try:
    import huggingface_hub  # lazily: only needed for hub names
  except ImportError as e:
    raise FileNotFoundError(f"GPT-2 evaluator {name_or_path!r} is not a local folder and "
                            "huggingface_hub is not installed: download config.json and "
                            "model.safetensors into a folder and pass its path") from e
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(
        name_or_path, allow_patterns=["config.json", "model.safetensors"]))
  except Exception as e:  # offline, unknown repo, ...
    raise FileNotFoundError(f"could not fetch GPT-2 evaluator {name_or_path!r} from the "
                            f"Hugging Face hub ({type(e).__name__}: {e}); offline, pass a local "
                            "folder with config.json and model.safetensors") from e


def load_pretrained(name_or_path: str, dtype=jnp.float32) -> GPT2:
  """HF GPT-2 (`gpt2` ... `gpt2-large`, or a local folder) as a GPT2 module."""
  folder = resolve_local(name_or_path)
  cfg = json.loads((folder / "config.json").read_text())
  model = GPT2(vocab_size=cfg["vocab_size"], n_positions=cfg["n_positions"],
               hidden_size=cfg["n_embd"], n_layers=cfg["n_layer"], n_heads=cfg["n_head"],
               dtype=dtype, rngs=nnx.Rngs(0))
  return from_hf_state_dict(read_safetensors(folder / "model.safetensors"), model)
