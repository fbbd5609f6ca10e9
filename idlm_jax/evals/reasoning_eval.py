"""Exact-match evaluation of a LLaDA-architecture model on the prompted-reasoning benchmark
(data/reasoning.py) with block decoding (decoding/block.py): accuracy with its standard error,
NFE per sample, tokens/s and the commits of every rule.

Mode "eval_reasoning" (`python -m idlm_jax.main --config=configs/reasoning_llada.py
--config.mode=eval_reasoning --workdir=DIR`): the test problems of config.data (data.reasoning.*),
prompts left-padded to data.reasoning.prompt_width (the layout the model was trained on), decoded
with eval.reasoning.* and the R2 rule settings of sample.r2.*; weights from eval.reasoning.weights
("" = the run's latest checkpoint in the workdir, EMA; "shipped" = the model in
idlm_jax/assets/reasoning_llada; else an exported folder or a run directory). Writes
<workdir>/reasoning_eval.json.

Metrics: accuracy = exact match of the text after `####` (reasoning.extract_answer), stderr =
sqrt(p (1 - p) / n); nfe = mean per-sample forwards (refreshes included; a row stops counting
when its block has no [MASK]); tokens_per_s = generated tokens up to the first EOS (excluded,
as R2's harness) over the wall-clock seconds of decoding, compilation excluded (one warm-up
batch is decoded first and not timed).
"""

import json
import logging
import pathlib
import time

import jax
import ml_collections
import numpy as np

from idlm_jax import fields as F, models
from idlm_jax.data import reasoning
from idlm_jax.decoding import block as block_lib, r2 as r2_lib, r2_rules
from idlm_jax.fields import ConfigError, Field
from idlm_jax.train import loop, state as state_lib, teacher

log = logging.getLogger(__name__)

SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "assets" / "reasoning_llada"

FIELDS = {
    "eval.reasoning.gen_length": Field(48, "response slots decoded after the prompt.",
                                       check=F.positive),
    "eval.reasoning.block_length": Field(16, "semi-autoregressive block length (divides "
                                         "gen_length).", check=F.positive),
    "eval.reasoning.steps": Field(0, "forwards per block with LLaDA's fixed k tokens per step "
                                  "(vanilla: block_length = 1 token per step); 0: adaptive "
                                  "(top-1 + threshold + rules, Fast-dLLM).", check=F.non_negative),
    "eval.reasoning.threshold": Field(0.9, "Fast-dLLM's confidence threshold (steps = 0); 0: "
                                      "top-1 only.", check=F.Check(lambda v: 0 <= v <= 1,
                                                                   "in [0, 1]")),
    "eval.reasoning.remasking": Field("low_confidence", "which positions a step commits: "
                                      '"low_confidence" or "random" (LLaDA).',
                                      choices=block_lib.REMASKING),
    "eval.reasoning.temperature": Field(0.0, "0: greedy; > 0: float64 Gumbel-max draws.",
                                        check=F.non_negative),
    "eval.reasoning.cache": Field("none", 'KV cache: "none", "prefix" or "dual" (Fast-dLLM).',
                                  choices=block_lib.CACHES),
    "eval.reasoning.rules": Field(
        "", "R2 rules after the threshold, comma separated: confidence_cluster, token_cluster, "
        "temporal (their settings: sample.r2.*).",
        check=F.names_in(block_lib.COUNTS[2:], "")),
    "eval.reasoning.batch_size": Field(100, "prompts decoded per batch.", check=F.positive),
    "eval.reasoning.num_problems": Field(0, "> 0: only the first N test problems.",
                                         check=F.non_negative),
    "eval.reasoning.weights": Field(
        "", '"": the latest checkpoint of the workdir (EMA); "shipped": the model in '
        "idlm_jax/assets/reasoning_llada; else an exported folder (params.npz) or a run "
        "directory."),
}


def options_from_config(config) -> block_lib.BlockOptions:
  """BlockOptions of eval.reasoning.* with the R2 rule settings of sample.r2.* (the rules
  and the threshold from eval.reasoning)."""
  e = config.eval.reasoning
  rules = r2_lib.options_from_config(config.sample.r2)._replace(
      rules=r2_rules.parse_rules(e.rules), threshold=float(e.threshold))
  return block_lib.BlockOptions(
      gen_length=int(e.gen_length), block_length=int(e.block_length), steps=int(e.steps),
      remasking=e.remasking, temperature=float(e.temperature), cache=e.cache, r2=rules)


def response_lengths(tokens: np.ndarray, eos_id: int) -> np.ndarray:
  """Generated tokens per row before the first EOS (the whole response when none)."""
  is_eos = tokens == eos_id
  return np.where(is_eos.any(-1), is_eos.argmax(-1), tokens.shape[-1])


def evaluate(graphdef, params, prompts: reasoning.EvalPrompts, tokenizer,
             options: block_lib.BlockOptions, *, width: int, batch_size: int,
             seed: int = 0, record: bool = False) -> dict:
  """Decode every prompt (left-padded to `width`) and score it; see the module docstring.
  record=True also returns the tokens and commit record of every row (trajectories)."""
  decode = block_lib.make_decoder(graphdef, options, tokenizer.mask_id)
  ids, am = prompts.left_padded(tokenizer.pad_id, width)
  n = len(prompts)
  out, seconds = decode_all(decode, params, ids, am, batch_size, seed)
  tokens, row_nfe, commits = out["tokens"], out["row_nfe"], out["commits"]
  response = tokens[:, width:]
  texts = tokenizer.decode_batch(response.tolist())
  scores = prompts.score(texts)
  generated = int(response_lengths(response, tokenizer.eos_id).sum())
  res = {**scores["all"], "per_family": {k: v for k, v in scores.items() if k != "all"},
         "nfe": float(row_nfe.mean()), "nfe_se": float(row_nfe.std(ddof=1) / np.sqrt(n))
         if n > 1 else 0.0,
         "batch_forwards": out["batch_forwards"], "seconds": seconds,
         "tokens_per_s": generated / max(seconds, 1e-9), "generated_tokens": generated,
         "commits": {k: int(v) for k, v in zip(block_lib.COUNTS, commits.sum(0))},
         "options": options._asdict(), "example": texts[0][:200]}
  if record:
    res["record"] = {"tokens": tokens, "commit_step": out["commit_step"],
                     "commit_rule": out["commit_rule"], "texts": texts}
  return res


def decode_all(decode, params, ids: np.ndarray, am: np.ndarray, batch_size: int,
               seed: int = 0) -> tuple[dict, float]:
  """Run `decode` (block_lib.make_decoder's function) over every row of ids / am [n, P] in
  batches of `batch_size` (the last one padded with copies of row 0, dropped after): (every
  BlockOutput field concatenated over the n rows, plus "batch_forwards": the sum of the
  batches' nfe; the wall-clock seconds of decoding). One warm-up batch is decoded first and
  not timed, so the seconds exclude compilation."""
  n = len(ids)
  pad = -n % batch_size
  ids = np.concatenate([ids, np.repeat(ids[:1], pad, 0)])
  am = np.concatenate([am, np.repeat(am[:1], pad, 0)])
  key = jax.random.key(seed)
  jax.block_until_ready(decode(params, ids[:batch_size], key, am[:batch_size]))  # compile
  outs, seconds = [], 0.0
  for start in range(0, len(ids), batch_size):
    t0 = time.perf_counter()
    out = jax.device_get(decode(params, ids[start:start + batch_size],
                                jax.random.fold_in(key, start), am[start:start + batch_size]))
    seconds += time.perf_counter() - t0
    outs.append(out)
  fields = {f: np.concatenate([np.asarray(getattr(o, f)) for o in outs])[:n]
            for f in block_lib.BlockOutput._fields if f != "nfe"}
  fields["batch_forwards"] = int(sum(int(o.nfe) for o in outs))
  return fields, seconds


def load_params(run, config):
  """(params, where) of eval.reasoning.weights for the run's model (see FIELDS)."""
  spec = config.eval.reasoning.weights
  if not spec:
    step = loop.restore_latest(run)
    if step is None:
      raise FileNotFoundError(f"mode 'eval_reasoning' needs a checkpoint in {run.ckpt.directory}"
                              " or eval.reasoning.weights")
    return loop.eval_params(run), f"{run.workdir} step {step}"
  path = SHIPPED if spec == "shipped" else pathlib.Path(spec).expanduser()
  if not path.exists():
    raise ConfigError(f"config.eval.reasoning.weights: {path} does not exist")
  c = ml_collections.ConfigDict(config.to_dict())
  c.distill.teacher = str(path)
  vocab = run.tokenizer.model_vocab_size
  _, abstract = state_lib.abstract_model(
      lambda rngs: models.build_model(config.model, vocab, rngs), config.seed)
  return teacher.load(c, abstract, run.mesh, vocab), str(path)


def test_prompts(config, tokenizer) -> reasoning.EvalPrompts:
  """The test problems of config.data (the first eval.reasoning.num_problems)."""
  _, prompts = reasoning.config_split(config.data, tokenizer, "test")
  k = int(config.eval.reasoning.num_problems)
  if 0 < k < len(prompts):
    prompts = reasoning.EvalPrompts(prompts.prompt_ids[:k], prompts.answers[:k],
                                    prompts.families[:k], prompts.keys[:k], prompts.responses[:k])
  return prompts


def eval_reasoning(config, workdir, devices=None) -> loop.Run:
  """Mode "eval_reasoning": exact-match accuracy, NFE and tokens/s of the test problems."""
  if config.data.source != "reasoning" or config.model.name != "llada":
    raise ConfigError("mode 'eval_reasoning' needs data.source='reasoning' and "
                      f"model.name='llada', got {config.data.source!r} / {config.model.name!r}")
  run = loop.build(config, workdir, devices, datasets=False)
  try:
    params, where = load_params(run, config)
    prompts = test_prompts(config, run.tokenizer)
    width = int(config.data.reasoning.prompt_width) or int(prompts.prompt_lens.max())
    res = evaluate(run.graphdef, params, prompts, run.tokenizer, options_from_config(config),
                   width=width, batch_size=int(config.eval.reasoning.batch_size),
                   seed=config.seed)
    res["weights"] = where
    run.results["reasoning"] = res
    if jax.process_index() == 0:
      run.workdir.mkdir(parents=True, exist_ok=True)
      (run.workdir / "reasoning_eval.json").write_text(json.dumps(res, indent=1) + "\n")
    log.info("reasoning: accuracy %.3f +- %.3f (n=%d), NFE %.2f, %.1f tokens/s, commits %s",
             res["accuracy"], res["stderr"], res["n"], res["nfe"], res["tokens_per_s"],
             res["commits"])
  finally:
    run.ckpt.close()
  return run
