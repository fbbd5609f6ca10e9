"""Generate the LLaDA / Dream parity fixtures of tests/models/test_dllm.py with the OFFICIAL code.

Nothing of the official code is in this repository: this script imports the official modeling
files from directories given on the command line at run time, builds a tiny random model with
each, and writes, per model, a Hugging Face folder (config.json + model.safetensors written by
the official model's own `save_pretrained`) plus `parity.npz` (inputs and the official logits).

  python benchmarks/parity/make_dllm_parity.py \
      --llada-official DIR_WITH_modeling_llada.py_AND_configuration_llada.py \
      --dream-official DIR_WITH_modeling_dream.py_configuration_dream.py_generation_utils.py \
      --out tests/models/data

Needs torch and transformers 4.46.x (the version LLaDA-8B's config.json names, and one the
Dream file's rope-init API works with), e.g. a scratch venv outside the repository. The official
files used for the committed fixtures are listed in tests/models/data/README.md.

Weights are drawn LARGE ENOUGH TO MATTER: RMSNorm weights U(0.9, 1.1), embeddings N(0, 1),
linear weights N(0, 1/fan_in), q/k/v biases N(0, 0.1^2). With the usual std-0.02 init the
logits hardly depend on the attention, so a wrong rotary convention or a gate/up swap would
change them by less than 1e-8 and a parity test would prove nothing.

npz contents: input_ids [B, L] (about 40% mask tokens), logits [B, L, V'] (the official
forward's output, float32 model; LLaDA V' = embedding_size, Dream's logits UNSHIFTED as the
model returns them: the shift lives in Dream's generation code), logits_bf16 (the same model
cast to bfloat16), and a padded batch: pad_mask [B, L] (1 = token), logits_padded (LLaDA: the
2-D attention_mask; Dream: the 4-D mask and cumsum positions its generation code builds for
left padding; rows of padding are not meaningful).
"""

import argparse
import copy
import importlib
import json
import math
import pathlib
import sys

import numpy as np
import torch

B, L = 3, 16
VOCAB, EMBEDDING = 300, 320
MASK_ID, PAD_ID = 299, 298


def import_official(directory: pathlib.Path, module: str):
  """`module` from `directory` (as a package when its imports are relative, else plainly)."""
  directory = directory.resolve()
  for p in (str(directory.parent), str(directory)):
    if p not in sys.path:
      sys.path.insert(0, p)
  try:
    return importlib.import_module(f"{directory.name}.{module}")
  except ImportError:
    return importlib.import_module(module)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
  """Every parameter drawn as in the module docstring (by name and rank)."""
  gen = torch.Generator().manual_seed(seed)
  for name, p in model.named_parameters():
    if p.ndim == 1 and ("norm" in name or name.endswith("ln_f.weight")):
      p.copy_(0.9 + 0.2 * torch.rand(p.shape, generator=gen))
    elif p.ndim == 1:  # q/k/v biases
      p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    elif "wte" in name or "embed_tokens" in name:
      p.copy_(torch.randn(p.shape, generator=gen))
    else:  # nn.Linear weight [out, in]
      p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def inputs(seed: int):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, VOCAB - 2, (B, L))
  ids = np.where(rng.random((B, L)) < 0.4, MASK_ID, ids)
  pad = np.ones((B, L), np.int64)
  pad[1, :5] = 0   # left padding (Dream's generation convention)
  pad[2, :2] = 0
  ids_padded = np.where(pad == 1, ids, PAD_ID)
  return ids, pad, ids_padded


@torch.no_grad()
def run(model, ids, **kwargs) -> np.ndarray:
  out = model(torch.as_tensor(ids), **kwargs).logits
  return out.float().numpy()


def write(model, folder: pathlib.Path, arrays: dict) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(folder, safe_serialization=True)
  for extra in ("generation_config.json",):
    (folder / extra).unlink(missing_ok=True)
  cfg = json.loads((folder / "config.json").read_text())
  cfg.pop("torch_dtype", None)
  (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
  np.savez_compressed(folder / "parity.npz", **arrays)


def make_llada(official: pathlib.Path, out: pathlib.Path) -> None:
  configuration = import_official(official, "configuration_llada")
  modeling = import_official(official, "modeling_llada")
  config = configuration.LLaDAConfig(
      d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, mlp_ratio=2,
      vocab_size=VOCAB, embedding_size=EMBEDDING, rope=True, rope_full_precision=True,
      rope_theta=500000.0, rms_norm_eps=1e-5, activation_type="silu", block_type="llama",
      layer_norm_type="rms", include_bias=False, include_qkv_bias=False, weight_tying=False,
      mask_token_id=MASK_ID, pad_token_id=PAD_ID, eos_token_id=PAD_ID, max_sequence_length=64,
      residual_dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0,
      flash_attention=False, init_device="cpu", alibi=False, attention_layer_norm=False,
      input_emb_norm=False, scale_logits=False, block_group_size=1, multi_query_attention=None,
      use_cache=False)
  model = modeling.LLaDAModelLM(config, init_params=False).eval()
  randomize(model, seed=0)
  ids, pad, ids_padded = inputs(seed=1)
  arrays = dict(input_ids=ids, logits=run(model, ids), pad_mask=pad, input_ids_padded=ids_padded,
                logits_padded=run(model, ids_padded, attention_mask=torch.as_tensor(pad)))
  arrays["logits_bf16"] = run(copy.deepcopy(model).to(torch.bfloat16), ids)
  write(model, out / "llada_tiny", arrays)


def make_dream(official: pathlib.Path, out: pathlib.Path) -> None:
  configuration = import_official(official, "configuration_dream")
  modeling = import_official(official, "modeling_dream")
  config = configuration.DreamConfig(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
      mask_token_id=MASK_ID, pad_token_id=PAD_ID, eos_token_id=PAD_ID, attention_dropout=0.0)
  model = modeling.DreamModel(config).eval()
  randomize(model, seed=0)
  ids, pad, ids_padded = inputs(seed=1)
  # Dream's generation code for a left-padded batch: a [B, 1, L, L] mask that is true where
  # both query and key are tokens, and RoPE positions cumsum(mask) - 1 (1 on padding).
  m = torch.as_tensor(pad).bool()
  mask4d = m[:, None, None, :] & m[:, None, :, None]
  positions = torch.where(m, m.long().cumsum(-1) - 1, torch.ones_like(m, dtype=torch.long))
  arrays = dict(input_ids=ids, logits=run(model, ids), pad_mask=pad, input_ids_padded=ids_padded,
                positions_padded=positions.numpy(),
                logits_padded=run(model, ids_padded, attention_mask=mask4d,
                                  position_ids=positions))
  arrays["logits_bf16"] = run(copy.deepcopy(model).to(torch.bfloat16), ids)
  write(model, out / "dream_tiny", arrays)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--llada-official", type=pathlib.Path, required=True)
  parser.add_argument("--dream-official", type=pathlib.Path, required=True)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("tests/models/data"))
  args = parser.parse_args()
  torch.manual_seed(0)
  make_llada(args.llada_official, args.out)
  make_dream(args.dream_official, args.out)
  import transformers
  print(f"wrote {args.out}/llada_tiny and {args.out}/dream_tiny "
        f"(torch {torch.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
  main()
