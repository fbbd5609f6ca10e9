"""Generative perplexity exactly as the Duo/MDLM code (reference/teachers.md §5.3).

1. Decode samples with the diffusion tokenizer, special tokens kept as text.
2. Retokenize with the evaluator tokenizer (no special tokens added), truncation to
   `max_length`, padding (pad = the evaluator's EOS) to the longest retokenized sample.
3. Score with the causal LM: token NLL = CE(logits[:, :-1], ids[:, 1:]).
4. Valid targets: `(cumsum(ids == eos) == 1) | (ids != eos)`, shifted by one ([1:]): every
   non-EOS token, plus the first EOS and (as the cumsum == 1 run) everything up to the second
   EOS. Later EOS tokens (padding included) do not count.
5. Gen PPL = exp(sum NLL * valid / sum valid), pooled over *all* samples (not a mean of
   per-sample perplexities).

Duo scores `num_samples // batch_size` full batches and so drops a remainder; here every sample
is scored (the last batch is padded with dummy rows of weight 0).

Evaluators (`load_evaluator`): "embedded" is the GPT-2-architecture LM shipped in
`evals/assets/ar_embedded` (trained by configs/ar_embedded.py on the embedded corpus, demo BPE);
a HF name (`gpt2` .. `gpt2-large`, online) or a local folder with config.json and
model.safetensors (HF GPT-2 layout) and optionally card.json naming its tokenizer (default the
shipped GPT-2 BPE).

CLI: `python -m idlm_jax.evals.genppl export --config=configs/ar_embedded.py --workdir=DIR
[--out=idlm_jax/evals/assets/ar_embedded]` writes a trained "ar" checkpoint as an evaluator.
"""

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
EMBEDDED = ASSETS / "ar_embedded"


# ---------------------------------------------------------------------------- pure metric


def valid_targets(ids: np.ndarray, eos_id: int) -> np.ndarray:
  """[B, T-1] 0/1 weights of the targets ids[:, 1:] (the first-EOS rule of Duo/MDLM)."""
  ids = np.asarray(ids)
  is_eos = ids == eos_id
  first_eos = np.cumsum(is_eos, axis=-1) == 1
  return (first_eos | ~is_eos)[:, 1:].astype(np.float64)


def pooled_ppl(nll: np.ndarray, weights: np.ndarray) -> dict:
  """exp(sum nll*w / sum w) over every sample (corpus-level), plus the per-sample perplexities
  (for reference only: their mean is NOT Gen PPL)."""
  nll = np.asarray(nll, np.float64)
  w = np.asarray(weights, np.float64)
  total, count = float((nll * w).sum()), float(w.sum())
  per = (nll * w).sum(-1) / np.maximum(w.sum(-1), 1.0)
  mean_nll = total / max(count, 1.0)
  return {"gen_ppl": math.exp(min(mean_nll, 700.0)), "nll": mean_nll, "tokens": count,
          "per_sample_ppl": np.exp(np.minimum(per, 700.0))}


def token_nll(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """[B, T-1] CE(logits[:, :-1], ids[:, 1:]) in float32."""
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def retokenize(texts: Sequence[str], tokenizer, max_length: int) -> np.ndarray:
  """int32 [N, T] ids: encode without added special tokens, truncate to max_length, right-pad
  with EOS to the longest (HF `padding=True, truncation=True`, pad = EOS)."""
  ids = [x[:max_length] for x in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
  width = max(2, max(len(x) for x in ids))
  out = np.full((len(ids), width), tokenizer.eos_id, np.int32)
  for i, x in enumerate(ids):
    out[i, :len(x)] = x
  return out


# ---------------------------------------------------------------------------- evaluator


@dataclasses.dataclass
class Evaluator:
  name: str
  model: Any  # models.gpt2.GPT2
  tokenizer: Any  # data.tokenizers.Tokenizer
  max_length: int
  card: dict

  def describe(self) -> str:
    c = self.card
    extra = f", val PPL {c['val_ppl']:.2f}" if "val_ppl" in c else ""
    return (f"{self.name} (GPT-2 arch, {c.get('n_layer', '?')} layers, d={c.get('n_embd', '?')}, "
            f"tokenizer {self.tokenizer.name}, context {self.max_length}{extra})")


def load_evaluator(name: str, max_length: int = 1024) -> Evaluator:
  """"embedded", a HF GPT-2 name (online) or a local folder (see the module docstring)."""
  from idlm_jax.data import tokenizers
  from idlm_jax.models import gpt2
  folder = EMBEDDED if name == "embedded" else gpt2.resolve_local(name)
  if name == "embedded" and not (folder / "model.safetensors").is_file():
    raise FileNotFoundError(f"the shipped evaluator is missing from {folder}; train it with "
                            "configs/ar_embedded.py and export it (see evals/genppl.py)")
  model = gpt2.load_pretrained(str(folder))
  card = json.loads((folder / "config.json").read_text())
  if (folder / "card.json").is_file():
    card.update(json.loads((folder / "card.json").read_text()))
  tok = tokenizers.get_tokenizer(card.get("tokenizer", "gpt2"))
  return Evaluator(name=name, model=model, tokenizer=tok,
                   max_length=min(max_length, model.n_positions), card=card)


def gen_ppl(evaluator: Evaluator, texts: Sequence[str], batch_size: int = 8) -> dict:
  """Gen PPL of decoded samples under `evaluator` (pooled; see the module docstring)."""
  ids = retokenize(texts, evaluator.tokenizer, evaluator.max_length)
  graphdef, params = nnx.split(evaluator.model)

  @jax.jit
  def nll_fn(params, x):
    return token_nll(nnx.merge(graphdef, params)(x), x)

  n = len(ids)
  pad = (-n) % batch_size
  padded = np.concatenate([ids, np.full((pad, ids.shape[1]), evaluator.tokenizer.eos_id,
                                        np.int32)]) if pad else ids
  start = time.time()
  nll = np.concatenate([np.asarray(nll_fn(params, jnp.asarray(padded[i:i + batch_size])))
                        for i in range(0, len(padded), batch_size)])[:n]
  out = pooled_ppl(nll, valid_targets(ids, evaluator.tokenizer.eos_id))
  out.update(seconds=time.time() - start, retokenized_length=int(ids.shape[1]),
             evaluator=evaluator.describe())
  return out


# ---------------------------------------------------------------------------- export


def export_checkpoint(config, workdir: str, out: str, command: str) -> dict:
  """Write the (EMA) params of a trained "ar" run as an HF-layout evaluator folder."""
  from idlm_jax.models import gpt2
  from idlm_jax.train import loop, parallel
  run = loop.build(config, workdir)
  step = loop.restore_latest(run)
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}")
  params = parallel.to_host(loop.eval_params(run))  # also when sharded over hosts
  val = loop.validate_now(run, step)
  flat = {}

  def walk(tree, path):
    if isinstance(tree, dict):
      for k, v in tree.items():
        walk(v, path + (k,))
    else:
      flat[gpt2.hf_key(path)] = np.asarray(tree, np.float32)

  walk(params, ())
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  gpt2.write_safetensors(out / "model.safetensors", flat)
  m = config.model
  (out / "config.json").write_text(json.dumps({
      "model_type": "gpt2", "vocab_size": int(run.tokenizer.model_vocab_size),
      "n_positions": int(m.n_positions), "n_embd": int(m.hidden_size),
      "n_layer": int(m.n_blocks), "n_head": int(m.n_heads)}, indent=2) + "\n")
  card = {"tokenizer": config.data.tokenizer, "trained_by": "configs/ar_embedded.py",
          "command": command, "step": int(step), "val_nll": val["nelbo"],
          "val_ppl": val["ppl"], "val_tokens": val["tokens"],
          "data": f"embedded corpus ({config.data.embedded_corpora}), seq_len "
                  f"{config.data.seq_len}, validation = hash split of passages",
          "use_ema": bool(config.eval.use_ema)}
  (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
  return card


def main(argv=None):
  import argparse
  import shlex
  import sys
  from idlm_jax import config as config_lib
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("command", choices=["export"])
  p.add_argument("--config", default="configs/ar_embedded.py")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", default=str(EMBEDDED))
  p.add_argument("--train_command", default="")
  a = p.parse_args(argv)
  config = config_lib.load_config(a.config)
  cmd = a.train_command or (f"python -m idlm_jax.main --config={a.config} "
                            f"--workdir={a.workdir}")
  card = export_checkpoint(config, a.workdir, a.out, cmd)
  card["export_command"] = "python -m idlm_jax.evals.genppl " + shlex.join(sys.argv[1:])
  (pathlib.Path(a.out) / "card.json").write_text(json.dumps(card, indent=2) + "\n")
  print(json.dumps(card, indent=2))


if __name__ == "__main__":
  main()
