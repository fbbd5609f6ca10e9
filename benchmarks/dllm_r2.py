"""R2-dLLM where it was designed: accuracy vs NFE of block decoding on the prompted-reasoning
benchmark (issue #18), for one LLaDA-architecture model.

  python benchmarks/dllm_r2.py --config=configs/reasoning_llada.py --weights=shipped \
      [--num_problems=300] [--variants=vanilla,threshold,...] [--label=SFT] \
      [--out=benchmarks/results/dllm_r2_reasoning.jsonl] [--override a.b=v ...]

Every variant decodes the same first --num_problems test problems (greedy, gen_length and
block_length of eval.reasoning.*) with evals/reasoning_eval.evaluate and appends one JSON row
to --out: accuracy (exact match) with its standard error, NFE per sample (refresh forwards
included) with its standard error, tokens/s (CPU wall clock, compile excluded), commits per
sample of each rule. Variants (reference/r2_dllm.md §1: threshold 0.9; R2: window 3, tau_s
0.8, at most 1 unmasked, token runs >= 2, K = 3 and tau_t = 0.8 with "last"):
"""

import argparse
import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax.evals import reasoning_eval  # noqa: E402
from idlm_jax.train import loop  # noqa: E402

R2 = "confidence_cluster,token_cluster,temporal"
VARIANTS = {  # name -> eval.reasoning overrides
    "vanilla": {"steps": -1, "threshold": 0.0, "cache": "none", "rules": ""},  # -1: 1 token/step
    "threshold": {"steps": 0, "threshold": 0.9, "cache": "none", "rules": ""},
    "threshold+prefix": {"steps": 0, "threshold": 0.9, "cache": "prefix", "rules": ""},
    "threshold+dual": {"steps": 0, "threshold": 0.9, "cache": "dual", "rules": ""},
    "threshold+r2": {"steps": 0, "threshold": 0.9, "cache": "none", "rules": R2},
    "threshold+dual+r2": {"steps": 0, "threshold": 0.9, "cache": "dual", "rules": R2},
}
__doc__ += "".join(f"  {k}: {v}\n" for k, v in VARIANTS.items())
__doc__ += "  (steps -1 = block_length: LLaDA's vanilla decoding, one token per forward)\n"
__doc__ += ("  stepsK (e.g. steps4): LLaDA's fixed schedule with K forwards per block, low-\n"
            "  confidence remasking, no threshold (the accuracy-vs-steps rows of a student)\n")


def variant(name: str) -> dict:
  """The eval.reasoning overrides of a variant name (VARIANTS, or stepsK); KeyError if unknown."""
  if name in VARIANTS:
    return dict(VARIANTS[name])
  if name.startswith("steps") and name[5:].isdigit() and int(name[5:]) > 0:
    return {"steps": int(name[5:]), "threshold": 0.0, "cache": "none", "rules": ""}
  raise KeyError(name)


def rows(config_spec: str, weights: str, variants, num_problems: int, label: str,
         overrides=(), workdir: str | None = None) -> list:
  """One result row per variant (workdir: the scratch run directory; default a new temp one)."""
  out = []
  run = None
  for name in variants:
    v = variant(name)
    cfg = config_lib.load_config(config_spec, [*overrides, "mode='eval_reasoning'",
                                               f"eval.reasoning.weights='{weights}'",
                                               f"eval.reasoning.num_problems={num_problems}"])
    cfg.unlock()
    if v["steps"] == -1:
      v["steps"] = int(cfg.eval.reasoning.block_length)
    cfg.eval.reasoning.update(v)
    if run is None:
      run = loop.build(cfg, workdir or tempfile.mkdtemp(prefix="dllm_r2_"), datasets=False)
      params, where = reasoning_eval.load_params(run, cfg)
      prompts = reasoning_eval.test_prompts(cfg, run.tokenizer)
    width = int(cfg.data.reasoning.prompt_width) or int(prompts.prompt_lens.max())
    res = reasoning_eval.evaluate(run.graphdef, params, prompts, run.tokenizer,
                                  reasoning_eval.options_from_config(cfg), width=width,
                                  batch_size=int(cfg.eval.reasoning.batch_size), seed=cfg.seed)
    n = res["n"]
    row = {"model": label, "variant": name, "accuracy": res["accuracy"], "stderr": res["stderr"],
           "n": n, "nfe": res["nfe"], "nfe_se": res["nfe_se"],
           "tokens_per_s": res["tokens_per_s"], "seconds": res["seconds"],
           **{f"per_sample_{k}": c / n for k, c in res["commits"].items()},
           "options": res["options"], "weights": where, "config": config_spec,
           "device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "example": res["example"]}
    print(json.dumps({k: row[k] for k in ("model", "variant", "accuracy", "stderr", "nfe",
                                          "tokens_per_s")}), flush=True)
    out.append(row)
  run.close()
  run.ckpt.close()
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/reasoning_llada.py")
  parser.add_argument("--weights", default="shipped")
  parser.add_argument("--num_problems", type=int, default=300)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--label", default="SFT")
  parser.add_argument("--out", default="benchmarks/results/dllm_r2_reasoning.jsonl")
  parser.add_argument("--override", action="append", default=[])
  args = parser.parse_args(argv)
  names = [v for v in args.variants.split(",") if v]
  unknown = []
  for v in names:
    try:
      variant(v)
    except KeyError:
      unknown.append(v)
  if unknown:
    parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)} and stepsK (K > 0)")
  result = rows(args.config, args.weights, names, args.num_problems, args.label, args.override)
  with open(args.out, "a") as f:
    for row in result:
      f.write(json.dumps(row) + "\n")
  print(f"appended {len(result)} rows to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
