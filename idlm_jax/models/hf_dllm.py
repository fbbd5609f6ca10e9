"""Published LLaDA / Dream Hugging Face checkpoints <-> models.dllm.DLLM, torch-free.

A checkpoint folder holds `config.json` and `model.safetensors` or a sharded
`model.safetensors.index.json` (+ the shards it names); safetensors are read with NumPy by
`models.readers.read_safetensors` (BF16 through ml_dtypes) and cast to the float32 parameters.

Names (HF key -> nnx path; "T": the [out, in] torch weight is transposed into an [in, out] kernel)

  LLaDA (modeling_llada.py, LLaDAModelLM -> LLaDAModel, block_type "llama")
    model.transformer.wte.weight               embed.embedding          [E, d]
    model.transformer.blocks.{i}.attn_norm.weight    layers.{i}.attn_norm.scale
    model.transformer.blocks.{i}.{q,k,v}_proj.weight layers.{i}.{q,k,v}_proj.kernel   T
    model.transformer.blocks.{i}.{q,k,v}_proj.bias   layers.{i}.{q,k,v}_proj.bias  (qkv bias)
    model.transformer.blocks.{i}.attn_out.weight     layers.{i}.o_proj.kernel         T
    model.transformer.blocks.{i}.ff_norm.weight      layers.{i}.mlp_norm.scale
    model.transformer.blocks.{i}.ff_proj.weight      layers.{i}.gate_proj.kernel      T  (silu'd)
    model.transformer.blocks.{i}.up_proj.weight      layers.{i}.up_proj.kernel        T
    model.transformer.blocks.{i}.ff_out.weight       layers.{i}.down_proj.kernel      T
    model.transformer.ln_f.weight              final_norm.scale
    model.transformer.ff_out.weight            lm_head.kernel    [d, E]  T  (untied)

  Dream (modeling_dream.py, DreamModel -> DreamBaseModel, Qwen2 layout)
    model.embed_tokens.weight                  embed.embedding
    model.layers.{i}.input_layernorm.weight    layers.{i}.attn_norm.scale
    model.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}  layers.{i}.{q,k,v}_proj.{kernel T,bias}
    model.layers.{i}.self_attn.o_proj.weight   layers.{i}.o_proj.kernel        T
    model.layers.{i}.post_attention_layernorm.weight  layers.{i}.mlp_norm.scale
    model.layers.{i}.mlp.{gate,up,down}_proj.weight   layers.{i}.{gate,up,down}_proj.kernel  T
    model.norm.weight                          final_norm.scale
    lm_head.weight                             lm_head.kernel                  T  (untied)

Neither model stores RoPE buffers (LLaDA keeps sin/cos in a BufferCache, Dream's inv_freq is
non-persistent). `config_from_hf` reads both config.json formats, with the defaults of the
official config classes (LLaDA `ModelConfig`, `DreamConfig`) for absent fields, and refuses
options the official code supports but DLLM does not (named in the error).
"""

from __future__ import annotations

import json
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from idlm_jax.models import dllm
from idlm_jax.models.readers import ConversionError, read_safetensors, write_safetensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Defaults of LLaDA's configuration_llada.ModelConfig for the fields read here (a config.json
# may omit any of them; these are then what the official model uses).
LLADA_DEFAULTS = {
    "d_model": 768, "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4,
    "mlp_hidden_size": None, "activation_type": "swiglu", "block_type": "sequential",
    "block_group_size": 1, "alibi": False, "rope": False, "multi_query_attention": None,
    "attention_layer_norm": False, "input_emb_norm": False, "layer_norm_type": "default",
    "layer_norm_with_affine": True, "rms_norm_eps": 1e-5, "max_sequence_length": 1024,
    "rope_theta": 10000.0, "include_qkv_bias": False, "include_bias": False,
    "scale_logits": False, "vocab_size": 50257, "embedding_size": 50304, "weight_tying": True,
    "eos_token_id": 50256, "pad_token_id": 50256, "mask_token_id": 50256,
}
# What DLLM implements: LLaDA-8B's values of the structural fields.
LLADA_REQUIRED = {
    "activation_type": "silu", "block_type": "llama", "block_group_size": 1, "alibi": False,
    "rope": True, "attention_layer_norm": False, "input_emb_norm": False,
    "layer_norm_type": "rms", "layer_norm_with_affine": True, "include_bias": False,
    "scale_logits": False,
}
# Defaults of Dream's configuration_dream.DreamConfig.__init__.
DREAM_DEFAULTS = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "rope_theta": 10000.0, "rope_scaling": None,
    "mask_token_id": 151666, "pad_token_id": 151643, "eos_token_id": None,
}


# ---------------------------------------------------------------------------- configs


def detect_arch(hf_config: dict) -> str:
  """'llada' or 'dream' from config.json's model_type / architectures."""
  model_type = str(hf_config.get("model_type", "")).lower()
  archs = [str(a) for a in hf_config.get("architectures") or []]
  if model_type == "llada" or any(a.startswith("LLaDA") for a in archs):
    return "llada"
  if model_type == "dream" or any(a.startswith("Dream") for a in archs):
    return "dream"
  raise ConversionError(f"config.json is neither LLaDA nor Dream (model_type "
                        f"{hf_config.get('model_type')!r}, architectures {archs})")


def _llada_config(raw: dict) -> dllm.DLLMConfig:
  cfg = {**LLADA_DEFAULTS, **{k: v for k, v in raw.items() if k in LLADA_DEFAULTS}}
  bad = [f"{k}={cfg[k]!r} (supported: {v!r})" for k, v in LLADA_REQUIRED.items() if cfg[k] != v]
  if bad:
    raise ConversionError("LLaDA config.json uses options models.dllm does not implement: " +
                          ", ".join(bad))
  n_heads, n_kv, mqa = cfg["n_heads"], cfg["n_kv_heads"], cfg["multi_query_attention"]
  # configuration_llada.ModelConfig.effective_n_kv_heads
  if n_kv is None:
    n_kv = 1 if mqa is True else n_heads
  elif mqa is not None and n_kv != (1 if mqa else n_heads):
    raise ConversionError(f"LLaDA config.json: n_kv_heads={n_kv} contradicts "
                          f"multi_query_attention={mqa}")
  mlp = cfg["mlp_hidden_size"] or cfg["mlp_ratio"] * cfg["d_model"]
  return dllm.DLLMConfig(
      arch="llada", vocab_size=cfg["vocab_size"], embedding_size=cfg["embedding_size"],
      d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=n_heads, n_kv_heads=n_kv,
      mlp_hidden_size=mlp, rope_theta=float(cfg["rope_theta"]),
      rms_norm_eps=float(cfg["rms_norm_eps"]), qkv_bias=bool(cfg["include_qkv_bias"]),
      tie_embeddings=bool(cfg["weight_tying"]), shift_logits=False,
      max_sequence_length=cfg["max_sequence_length"], mask_token_id=cfg["mask_token_id"],
      pad_token_id=cfg["pad_token_id"], eos_token_id=cfg["eos_token_id"])


def _dream_config(raw: dict) -> dllm.DLLMConfig:
  cfg = {**DREAM_DEFAULTS, **{k: v for k, v in raw.items() if k in DREAM_DEFAULTS}}
  bad = []
  if cfg["hidden_act"] != "silu":
    bad.append(f"hidden_act={cfg['hidden_act']!r} (supported: 'silu')")
  if cfg["rope_scaling"] is not None:
    bad.append(f"rope_scaling={cfg['rope_scaling']!r} (supported: None)")
  if bad:
    raise ConversionError("Dream config.json uses options models.dllm does not implement: " +
                          ", ".join(bad))
  heads = cfg["num_attention_heads"]
  return dllm.DLLMConfig(
      arch="dream", vocab_size=cfg["vocab_size"], d_model=cfg["hidden_size"],
      n_layers=cfg["num_hidden_layers"], n_heads=heads,
      n_kv_heads=cfg["num_key_value_heads"] or heads, mlp_hidden_size=cfg["intermediate_size"],
      rope_theta=float(cfg["rope_theta"]), rms_norm_eps=float(cfg["rms_norm_eps"]),
      qkv_bias=True, tie_embeddings=bool(cfg["tie_word_embeddings"]), shift_logits=True,
      max_sequence_length=cfg["max_position_embeddings"], mask_token_id=cfg["mask_token_id"],
      pad_token_id=cfg["pad_token_id"], eos_token_id=cfg["eos_token_id"])


def config_from_hf(hf_config: dict) -> dllm.DLLMConfig:
  """DLLMConfig of a LLaDA or Dream config.json (a dict)."""
  try:
    if detect_arch(hf_config) == "llada":
      return _llada_config(hf_config)
    return _dream_config(hf_config)
  except (TypeError, ValueError) as e:
    if isinstance(e, ConversionError):
      raise
    raise ConversionError(f"config.json does not describe a valid model: {e}") from None


def config_to_hf(config: dllm.DLLMConfig) -> dict:
  """A config.json dict the official code (and `config_from_hf`) reads back as `config`."""
  c = config
  if c.arch == "llada":
    return {
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        **LLADA_REQUIRED, "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads, "multi_query_attention": None,
        "mlp_hidden_size": c.mlp_hidden_size, "mlp_ratio": max(1, c.mlp_hidden_size // c.d_model),
        "vocab_size": c.vocab_size, "embedding_size": c.rows, "rope_theta": c.rope_theta,
        "rope_full_precision": True, "rms_norm_eps": c.rms_norm_eps,
        "include_qkv_bias": c.qkv_bias, "weight_tying": c.tie_embeddings,
        "max_sequence_length": c.max_sequence_length, "mask_token_id": c.mask_token_id,
        "pad_token_id": c.pad_token_id, "eos_token_id": c.eos_token_id,
        "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
        "flash_attention": False, "use_cache": False,
    }
  if c.qkv_bias is not True or c.shift_logits is not True or c.embedding_size not in (
      None, c.vocab_size):
    raise ConversionError("a Dream checkpoint has q/k/v biases, shifted logits and no "
                          "embedding padding; this config differs")
  return {
      "architectures": ["DreamModel"], "model_type": "Dream",
      "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                   "AutoModel": "modeling_dream.DreamModel"},
      "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.mlp_hidden_size,
      "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
      "num_key_value_heads": c.n_kv_heads, "hidden_act": "silu",
      "max_position_embeddings": c.max_sequence_length, "rms_norm_eps": c.rms_norm_eps,
      "tie_word_embeddings": c.tie_embeddings, "rope_theta": c.rope_theta, "rope_scaling": None,
      "mask_token_id": c.mask_token_id, "pad_token_id": c.pad_token_id,
      "eos_token_id": c.eos_token_id, "attention_dropout": 0.0, "use_cache": False,
      "use_sliding_window": False,
  }


# ---------------------------------------------------------------------------- names


_LLADA_LAYER = {
    "attn_norm.weight": ("attn_norm", "scale"), "q_proj.weight": ("q_proj", "kernel"),
    "k_proj.weight": ("k_proj", "kernel"), "v_proj.weight": ("v_proj", "kernel"),
    "q_proj.bias": ("q_proj", "bias"), "k_proj.bias": ("k_proj", "bias"),
    "v_proj.bias": ("v_proj", "bias"), "attn_out.weight": ("o_proj", "kernel"),
    "ff_norm.weight": ("mlp_norm", "scale"), "ff_proj.weight": ("gate_proj", "kernel"),
    "up_proj.weight": ("up_proj", "kernel"), "ff_out.weight": ("down_proj", "kernel"),
}
_DREAM_LAYER = {
    "input_layernorm.weight": ("attn_norm", "scale"),
    "self_attn.q_proj.weight": ("q_proj", "kernel"), "self_attn.q_proj.bias": ("q_proj", "bias"),
    "self_attn.k_proj.weight": ("k_proj", "kernel"), "self_attn.k_proj.bias": ("k_proj", "bias"),
    "self_attn.v_proj.weight": ("v_proj", "kernel"), "self_attn.v_proj.bias": ("v_proj", "bias"),
    "self_attn.o_proj.weight": ("o_proj", "kernel"),
    "post_attention_layernorm.weight": ("mlp_norm", "scale"),
    "mlp.gate_proj.weight": ("gate_proj", "kernel"), "mlp.up_proj.weight": ("up_proj", "kernel"),
    "mlp.down_proj.weight": ("down_proj", "kernel"),
}
_GLOBAL = {
    "llada": {"model.transformer.wte.weight": ("embed", "embedding"),
              "model.transformer.ln_f.weight": ("final_norm", "scale"),
              "model.transformer.ff_out.weight": ("lm_head", "kernel")},
    "dream": {"model.embed_tokens.weight": ("embed", "embedding"),
              "model.norm.weight": ("final_norm", "scale"),
              "lm_head.weight": ("lm_head", "kernel")},
}
_LAYER_PREFIX = {"llada": "model.transformer.blocks.{}.", "dream": "model.layers.{}."}


def hf_param_names(config: dllm.DLLMConfig) -> dict[str, tuple[tuple, bool]]:
  """HF key -> (nnx path, transpose) for every parameter of a DLLM with this config."""
  names = {}
  for key, path in _GLOBAL[config.arch].items():
    if path[0] == "lm_head" and config.tie_embeddings:
      continue
    names[key] = (path, path[-1] == "kernel")
  table = _LLADA_LAYER if config.arch == "llada" else _DREAM_LAYER
  for i in range(config.n_layers):
    for suffix, (module, leaf) in table.items():
      if leaf == "bias" and not config.qkv_bias:
        continue
      names[_LAYER_PREFIX[config.arch].format(i) + suffix] = (
          ("layers", i, module, leaf), leaf == "kernel")
  return names


def _state(tree) -> nnx.State:
  return nnx.state(tree, nnx.Param) if isinstance(tree, nnx.Module) else tree


def _value(v):
  return v.get_value() if isinstance(v, nnx.Variable) else v


def from_hf_state_dict(state_dict: dict, abstract_state, config: dllm.DLLMConfig) -> nnx.State:
  """nnx.State of host float32 arrays (dtypes/sharding metadata of abstract_state).

  abstract_state: e.g. `nnx.state(nnx.eval_shape(lambda: DLLM(config, ...)), nnx.Param)`.
  Every missing or unexpected key and every shape mismatch is listed in one ConversionError
  that names the tensor and both shapes (torch layout).
  """
  flat = dict(nnx.to_flat_state(_state(abstract_state)))
  names = hf_param_names(config)
  problems = [f"unexpected tensor '{k}' with shape {tuple(np.shape(v))}"
              for k, v in state_dict.items() if k not in names]
  unmapped = set(flat) - {tuple(p) for p, _ in names.values()}
  problems += [f"model parameter {'.'.join(map(str, p))} has no checkpoint name" for p in unmapped]
  leaves = []
  for key, (path, transpose) in names.items():
    if path not in flat:
      problems.append(f"tensor '{key}' maps to {'.'.join(map(str, path))}, which the model lacks")
      continue
    var = flat[path]
    shape = tuple(_value(var).shape)
    hf_shape = shape[::-1] if transpose else shape
    if key not in state_dict:
      problems.append(f"missing tensor '{key}' (expected shape {hf_shape})")
      continue
    value = np.asarray(state_dict[key])
    if value.shape != hf_shape:
      problems.append(f"tensor '{key}': checkpoint shape {value.shape} != expected {hf_shape}")
      continue
    value = value.T if transpose else value
    leaves.append((path, var.replace(np.ascontiguousarray(value, dtype=_value(var).dtype))))
  if problems:
    raise ConversionError(f"{config.arch} checkpoint does not match the DLLM config:\n  " +
                          "\n  ".join(problems))
  return nnx.from_flat_state(leaves)


def to_hf_state_dict(model_or_state, config: dllm.DLLMConfig, dtype=np.float32) -> dict:
  """HF key -> NumPy array (torch layout, `dtype`) of a DLLM or its Param state."""
  flat = dict(nnx.to_flat_state(_state(model_or_state)))
  out = {}
  for key, (path, transpose) in hf_param_names(config).items():
    value = np.asarray(jax.device_get(_value(flat[path])))
    out[key] = np.ascontiguousarray(value.T if transpose else value).astype(dtype)
  return out


# ---------------------------------------------------------------------------- folders


def read_weights(folder, dtype=np.float32) -> dict[str, np.ndarray]:
  """All tensors of `model.safetensors` or of the shards of `model.safetensors.index.json`
  (shards: copied into `dtype` one shard at a time, so the host holds the model once in
  `dtype`; a single file: read-only views in the stored dtype).

  With an index, every tensor it lists must be in the shard it names, and no shard may hold
  a tensor the index does not list for it.
  """
  folder = pathlib.Path(folder)
  if (folder / WEIGHTS_FILE).is_file():
    return read_safetensors(folder / WEIGHTS_FILE)
  index_path = folder / INDEX_FILE
  if not index_path.is_file():
    raise ConversionError(f"{folder}: no {WEIGHTS_FILE} or {INDEX_FILE}")
  try:
    weight_map = json.loads(index_path.read_text())["weight_map"]
  except (ValueError, KeyError) as e:
    raise ConversionError(f"{index_path}: not a safetensors index ({e})") from None
  out, problems = {}, []
  for shard in sorted(set(weight_map.values())):
    if not (folder / shard).is_file():
      problems.append(f"shard '{shard}' listed in {INDEX_FILE} is missing")
      continue
    tensors = read_safetensors(folder / shard)
    wanted = {k for k, v in weight_map.items() if v == shard}
    problems += [f"tensor '{k}' is indexed in '{shard}' but not stored there"
                 for k in sorted(wanted - set(tensors))]
    problems += [f"tensor '{k}' is stored in '{shard}' but the index maps it "
                 f"{'elsewhere' if k in weight_map else 'nowhere'}"
                 for k in sorted(set(tensors) - wanted)]
    for k in wanted & set(tensors):
      out[k] = np.array(tensors[k], dtype=dtype)  # copy: drop the shard's buffer
  if problems:
    raise ConversionError(f"{index_path}:\n  " + "\n  ".join(problems))
  return out


def read_config(folder) -> dllm.DLLMConfig:
  path = pathlib.Path(folder) / CONFIG_FILE
  if not path.is_file():
    raise ConversionError(f"{folder}: no {CONFIG_FILE}")
  return config_from_hf(json.loads(path.read_text()))


def load_pretrained(folder, *, dtype=jnp.float32, attention: str = "auto",
                    remat: str = "none", dropout: float = 0.0,
                    config: Optional[dllm.DLLMConfig] = None) -> dllm.DLLM:
  """A DLLM with the weights of a local LLaDA / Dream HF folder (config from config.json
  unless given). Parameters are float32 on the default device; for sharded placement, build
  the abstract model, call `from_hf_state_dict` and place the state yourself."""
  config = config or read_config(folder)
  abstract = nnx.eval_shape(lambda: dllm.DLLM(config, dtype=dtype, attention=attention,
                                              remat=remat, dropout=dropout, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  state = from_hf_state_dict(read_weights(folder), abstract_state, config)
  state = jax.tree.map(jnp.asarray, state)
  return nnx.merge(graphdef, state)


def save_pretrained(model: dllm.DLLM, folder, *, max_shard_bytes: Optional[int] = None,
                    dtype=np.float32) -> pathlib.Path:
  """Write config.json + model.safetensors (or shards of at most `max_shard_bytes` each and
  model.safetensors.index.json) under HF names: the layout `load_pretrained` and the
  official code read."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  config = model.config
  (folder / CONFIG_FILE).write_text(json.dumps(config_to_hf(config), indent=2))
  tensors = to_hf_state_dict(model, config, dtype)
  if max_shard_bytes is None:
    write_safetensors(folder / WEIGHTS_FILE, tensors, {"format": "pt"})
    return folder
  shards, current, size = [], {}, 0
  for key, value in tensors.items():
    if current and size + value.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[key] = value
    size += value.nbytes
  shards.append(current)
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    write_safetensors(folder / name, shard, {"format": "pt"})
    weight_map.update({k: name for k in shard})
  total = sum(v.nbytes for v in tensors.values())
  (folder / INDEX_FILE).write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  return folder

