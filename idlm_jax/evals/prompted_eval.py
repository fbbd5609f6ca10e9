"""Prompted generation from a LLaDA / Dream checkpoint folder, scored by exact match of the
final number (GSM8K-style JSONL), with block decoding, Fast-dLLM's threshold and R2's rules.

Mode "eval_prompted" (configs/llada_8b.py):

  python -m idlm_jax.main --config=configs/llada_8b.py --workdir=/tmp/llada_gsm8k \
      --config.eval.prompted.checkpoint=/local/LLaDA-8B-Instruct \
      --config.eval.prompted.prompts=/local/gsm8k_test.jsonl

1. the model: `config.json` + `model.safetensors` (or a sharded index) of the folder, read by
   models/hf_dllm.py (torch-free) straight into `eval.prompted.param_dtype`, each parameter
   placed on the mesh (`parallel.*`) by its logical axes (FSDP over 'embed', tensor parallel
   over heads/mlp/vocab); matmuls in `model.dtype`. A folder written by
   `hf_dllm.save_pretrained` (a converted or fine-tuned model) loads the same way.
2. the prompts: each JSONL question, filled into `eval.prompted.user_template`, rendered with
   `eval.prompted.chat_template` (data/chat.py: LLaDA-8B-Instruct's template), tokenized with
   the folder's tokenizer.json (or `eval.prompted.tokenizer`), left-padded to the longest
   prompt with <|endoftext|> (hidden by the attention mask).
3. decoding: decoding/block.py with the decoding settings of `eval.reasoning.*` (gen_length,
   block_length, steps, threshold, cache, rules, batch_size, num_problems) and the rule
   settings of `sample.r2.*`; mask id from the tokenizer (<|mdm_mask|>), checked against
   config.json's mask_token_id.
4. scoring: the response is its tokens before the first <|eot_id|> / <|endoftext|>; the
   prediction is its last number, compared with the number after "####" (data/chat.py).

Writes <workdir>/prompted_eval.json (accuracy, stderr, NFE per sample, tokens/s with
compilation excluded, commits per rule) and <workdir>/prompted_samples.jsonl (one line per
problem: question, gold, prediction, response, NFE).
"""

import json
import logging
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from idlm_jax import fields as F
from idlm_jax.data import chat, reasoning
from idlm_jax.decoding import block as block_lib
from idlm_jax.evals import reasoning_eval
from idlm_jax.fields import ConfigError, Field
from idlm_jax.models import dllm, hf_dllm
from idlm_jax.models.layers import DTYPES
from idlm_jax.train import parallel

log = logging.getLogger(__name__)

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "assets"
TINY = ASSETS / "llada_tiny"  # the smoke fixture: `python -m idlm_jax.evals.prompted_eval`

FIELDS = {
    "eval.prompted.checkpoint": Field(
        "", 'mode "eval_prompted": a local LLaDA / Dream folder (config.json + model.safetensors '
        'or model.safetensors.index.json + shards, tokenizer.json); "tiny" = the shipped '
        "random smoke model idlm_jax/assets/llada_tiny."),
    "eval.prompted.prompts": Field(
        "", 'JSONL of {"question": ..., "answer": "... #### 42"} (GSM8K format); "tiny" = the '
        "smoke fixture's prompts.jsonl."),
    "eval.prompted.tokenizer": Field("", 'tokenizer.json (or its folder); "" = the checkpoint '
                                     "folder's."),
    "eval.prompted.chat_template": Field(
        "llada", '"llada": LLaDA-8B-Instruct\'s chat template (instruct models); "none": the '
        "bare question (base models).", choices=chat.TEMPLATES),
    "eval.prompted.system_prompt": Field("", "a system turn before the question (\"\": none)."),
    "eval.prompted.user_template": Field(
        "{question}", "the user turn; {question} is replaced by the problem's question.",
        check=F.Check(lambda v: "{question}" in v, "a string with {question}")),
    "eval.prompted.param_dtype": Field(
        "bfloat16", "dtype the weights are loaded and kept in (bfloat16 halves the memory of "
        "float32; the published checkpoints are bfloat16).", choices=tuple(DTYPES)),
}


def resolve(spec: str, what: str, tiny: pathlib.Path) -> pathlib.Path:
  """The path named by a field ("tiny" = the shipped fixture); ConfigError when absent."""
  if not spec:
    raise ConfigError(f"config.eval.prompted.{what}: give a path (it is empty)")
  path = tiny if spec == "tiny" else pathlib.Path(spec).expanduser()
  if not path.exists():
    raise ConfigError(f"config.eval.prompted.{what}: {path} does not exist")
  return path


# ---------------------------------------------------------------------------- model


def load_checkpoint(folder, mesh, *, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                    attention: str = "auto"):
  """(DLLMConfig, graphdef, params) of an HF LLaDA / Dream folder (call it outside a
  `parallel.mesh_context`: the logical axis names are mapped here); the weights are read
  in `param_dtype` and each parameter is placed on `mesh` by its logical axes
  (`parallel.param_shardings`), one array at a time, every process reading the whole file
  and keeping its own shards (`jax.make_array_from_callback`)."""
  config = hf_dllm.read_config(folder)
  abstract = nnx.eval_shape(lambda: dllm.DLLM(config, dtype=dtype, attention=attention,
                                              rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  abstract_state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, param_dtype),
                                abstract_state)
  weights = hf_dllm.read_weights(folder, dtype=np.dtype(param_dtype))
  host = nnx.to_pure_dict(hf_dllm.from_hf_state_dict(weights, abstract_state, config))
  del weights
  shardings = parallel.param_shardings(abstract_state, mesh)
  params = jax.tree.map(
      lambda a, s: jax.make_array_from_callback(a.shape, s, lambda idx: a[idx]), host, shardings)
  return config, graphdef, params


# ---------------------------------------------------------------------------- evaluation


def encode_prompts(problems, tokenizer: chat.ChatTokenizer, template: str, *, system="",
                   user_template="{question}") -> reasoning.EvalPrompts:
  """Tokenized chat prompts of the problems (EvalPrompts: left padding, lengths)."""
  texts = [chat.prompt_text(p.question, template, system=system, user_template=user_template)
           for p in problems]
  ids = [np.asarray(tokenizer.encode(t), np.int32) for t in texts]
  n = len(problems)
  return reasoning.EvalPrompts(ids, [p.answer for p in problems], ["prompted"] * n,
                               [str(i) for i in range(n)], [""] * n)


def evaluate(graphdef, params, problems, tokenizer: chat.ChatTokenizer,
             options: block_lib.BlockOptions, *, template: str, batch_size: int, system="",
             user_template="{question}", seed: int = 0) -> dict:
  """Decode every problem's prompt and score the last number of each response (see the
  module docstring): {"accuracy", "stderr", "n", "nfe", "tokens_per_s", ..., "samples"}."""
  tok = tokenizer.tokenizer
  prompts = encode_prompts(problems, tokenizer, template, system=system,
                           user_template=user_template)
  ids, am = prompts.left_padded(tok.pad_id)
  decode = block_lib.make_decoder(graphdef, options, tok.mask_id)
  out, seconds = reasoning_eval.decode_all(decode, params, ids, am, batch_size, seed)
  response = out["tokens"][:, ids.shape[1]:]
  lengths = np.array([chat.response_end(r, tokenizer.stop_ids) for r in response])
  texts = [tokenizer.response_text(r) for r in response]
  preds = [chat.last_number(t) for t in texts]
  hits = np.array([chat.same_number(p, p_.answer) for p, p_ in zip(preds, problems)])
  n = len(problems)
  acc = float(hits.mean())
  row_nfe = out["row_nfe"]
  samples = [{"question": p.question, "gold": p.answer, "prediction": pred, "correct": bool(h),
              "response": t, "nfe": int(f)}
             for p, pred, h, t, f in zip(problems, preds, hits, texts, row_nfe)]
  return {"accuracy": acc, "stderr": float(np.sqrt(acc * (1 - acc) / n)), "n": n,
          "nfe": float(row_nfe.mean()),
          "nfe_se": float(row_nfe.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
          "seconds": seconds, "generated_tokens": int(lengths.sum()),
          "tokens_per_s": float(lengths.sum()) / max(seconds, 1e-9),
          "prompt_width": int(ids.shape[1]),
          "commits": {k: int(v) for k, v in zip(block_lib.COUNTS, out["commits"].sum(0))},
          "options": options._asdict(), "samples": samples}


def eval_prompted(config, workdir, devices=None):
  """Mode "eval_prompted": load the folder's model, decode the JSONL's prompts, score them,
  write <workdir>/prompted_eval.json and prompted_samples.jsonl. Returns an object whose
  `results["prompted"]` is the results dict (as the other modes' `loop.Run`)."""
  p = config.eval.prompted
  folder = resolve(p.checkpoint, "checkpoint", TINY)
  prompts_path = resolve(p.prompts, "prompts", TINY / "prompts.jsonl")
  tokenizer = chat.llada_tokenizer(resolve(p.tokenizer, "tokenizer", TINY) if p.tokenizer
                                   else folder)
  mesh = parallel.make_mesh(config.parallel, devices)
  model_cfg, graphdef, params = load_checkpoint(
      folder, mesh, dtype=DTYPES[config.model.dtype], param_dtype=DTYPES[p.param_dtype],
      attention=config.model.attention)
  check_tokens(model_cfg, tokenizer)
  problems = chat.read_problems(prompts_path, limit=int(config.eval.reasoning.num_problems))
  options = reasoning_eval.options_from_config(config)
  with parallel.mesh_context(mesh):
    res = evaluate(graphdef, params, problems, tokenizer, options,
                   template=p.chat_template, batch_size=int(config.eval.reasoning.batch_size),
                   system=p.system_prompt, user_template=p.user_template, seed=config.seed)
  samples = res.pop("samples")
  res.update(checkpoint=str(folder), prompts=str(prompts_path), arch=model_cfg.arch,
             example=samples[0]["response"][:300])
  if jax.process_index() == 0:
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompted_eval.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "prompted_samples.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in samples))
  log.info("prompted: accuracy %.3f +- %.3f (n=%d), NFE %.2f, %.1f tokens/s, commits %s",
           res["accuracy"], res["stderr"], res["n"], res["nfe"], res["tokens_per_s"],
           res["commits"])
  return types.SimpleNamespace(results={"prompted": res}, workdir=pathlib.Path(workdir))


def check_tokens(model_cfg: dllm.DLLMConfig, tokenizer: chat.ChatTokenizer) -> None:
  """ConfigError when the tokenizer's [MASK] or vocabulary disagree with config.json."""
  tok = tokenizer.tokenizer
  if model_cfg.mask_token_id is not None and model_cfg.mask_token_id != tok.mask_id:
    raise ConfigError(f"config.eval.prompted: the tokenizer's {chat.LLADA_MASK} is id "
                      f"{tok.mask_id} but config.json says mask_token_id "
                      f"{model_cfg.mask_token_id}")
  if tok.vocab_size > model_cfg.vocab_size:
    raise ConfigError(f"config.eval.prompted: the tokenizer has {tok.vocab_size} tokens, the "
                      f"model only {model_cfg.vocab_size}")


# ---------------------------------------------------------------------------- smoke fixture


HEAD_GAIN = 16.0
FIXTURE_PROBLEMS = (
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7 #### 7"),
    ("A box holds 12 pens. How many pens are in 2 boxes?", "12 * 2 = 24 #### 24"),
    ("Mia had 20 dollars and spent 5. How much is left?", "20 - 5 = 15 #### 15"),
    ("There are 6 rows of 5 chairs. How many chairs?", "6 * 5 = 30 #### 30"),
    ("Ben reads 10 pages a day for 3 days. How many pages?", "10 * 3 = 30 #### 30"),
    ("A cake is cut into 8 slices and 3 are eaten. How many remain?", "8 - 3 = 5 #### 5"),
)


def random_model(cfg: dllm.DLLMConfig, seed: int = 0) -> dllm.DLLM:
  """A DLLM with NumPy-drawn weights (the same bytes on every JAX backend and PRNG setting)
  large enough to give peaked logits: unit-variance embeddings, kernels N(0, 1/fan_in) (the
  head's times HEAD_GAIN, so that some confidences cross the decoding thresholds), RMSNorm
  scales 1 + 0.1 N(0, 1); the head's [MASK] column is 0 (a committed [MASK] would be no
  commit at all)."""
  model = dllm.build(cfg, seed=seed)
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)

  def draw(path, x):
    name = str(path[-1].key)
    z = rng.standard_normal(x.shape).astype(np.float32)
    if name == "scale":
      return 1.0 + 0.1 * z
    if name == "embedding":
      return z
    gain = HEAD_GAIN if path[0].key == "lm_head" else 1.0
    return gain * z / np.sqrt(x.shape[0])

  pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  if cfg.mask_token_id is not None:  # a trained model never predicts [MASK]: logit 0 << max
    pure["lm_head"]["kernel"][:, cfg.mask_token_id] = 0.0
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model


def build_fixture(folder=TINY, seed: int = 0) -> pathlib.Path:
  """Write the smoke fixture: a random tiny LLaDA-layout model (d=32, 2 layers,
  `random_model`) over the
  character tokenizer with LLaDA's special tokens (config.json, model.safetensors,
  tokenizer.json) and six GSM8K-format prompts (prompts.jsonl, written for this fixture)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "tokenizer.json").write_text(chat.char_tokenizer_json())
  tok = chat.llada_tokenizer(folder).tokenizer
  cfg = dllm.DLLMConfig(
      arch="llada", vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4,
      n_kv_heads=4, mlp_hidden_size=64, rope_theta=500000.0, rms_norm_eps=1e-5,
      max_sequence_length=512, mask_token_id=tok.mask_id, pad_token_id=tok.eos_id,
      eos_token_id=tok.eos_id)
  hf_dllm.save_pretrained(random_model(cfg, seed), folder)
  (folder / "prompts.jsonl").write_text("".join(
      json.dumps({"question": q, "answer": a}) + "\n" for q, a in FIXTURE_PROBLEMS))
  return folder


if __name__ == "__main__":
  print(build_fixture())
