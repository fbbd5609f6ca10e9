"""Record the R2 decoding trajectories of a LLaDA-architecture model on TRAINING prompts of the
reasoning benchmark, keeping only the correct answers (R2-dLLM's redundancy-aware SFT data,
reference/r2_dllm.md §2; the fine-tuning is objective r2_finetune, configs/reasoning_llada.py:r2ft).

  python benchmarks/dllm_record_trajectories.py --weights=shipped --num_problems=1000 \
      --out=/tmp/dllm_traj.npz

Decoding: threshold 0.9 + the three R2 rules, no cache (eval.reasoning.* overrides via
--override). Rows: the whole canvas (left-padded prompt + response); commit_step is the row's
forward index that committed each response position (-1 on the prompt), commit_rule its rule
(decoding/block.COUNTS = the first five of decoding/r2.COUNTS), and the attention mask (0 on
prompt pads) is stored with them (data/trajectories.py).
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax.data import reasoning, trajectories  # noqa: E402
from idlm_jax.evals import reasoning_eval  # noqa: E402
from idlm_jax.train import loop  # noqa: E402

R2 = "confidence_cluster,token_cluster,temporal"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/reasoning_llada.py")
  parser.add_argument("--weights", default="shipped")
  parser.add_argument("--num_problems", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--out", required=True)
  parser.add_argument("--override", action="append", default=[])
  args = parser.parse_args(argv)
  cfg = config_lib.load_config(args.config, [
      "mode='eval_reasoning'", f"eval.reasoning.weights='{args.weights}'",
      "eval.reasoning.steps=0", "eval.reasoning.threshold=0.9", "eval.reasoning.cache='none'",
      f"eval.reasoning.rules='{R2}'", *args.override])
  run = loop.build(cfg, "/tmp/dllm_record", datasets=False)
  params, where = reasoning_eval.load_params(run, cfg)
  tok = run.tokenizer
  problems = reasoning.generate("train", args.num_problems, seed=args.seed,
                                config=reasoning.task_config(cfg.data),
                                families=reasoning.families_of(cfg.data))
  prompts = reasoning.EvalPrompts.from_problems(problems, tok)
  width = int(cfg.data.reasoning.prompt_width)
  res = reasoning_eval.evaluate(run.graphdef, params, prompts, tok,
                                reasoning_eval.options_from_config(cfg), width=width,
                                batch_size=int(cfg.eval.reasoning.batch_size), seed=args.seed,
                                record=True)
  rec = res["record"]
  correct = np.array([reasoning.extract_answer(t) == a for t, a in zip(rec["texts"],
                                                                        prompts.answers)])
  _, am = prompts.left_padded(tok.pad_id, width)
  n, gen = rec["commit_step"].shape
  full = lambda a: np.concatenate([np.full((n, width), -1, np.int32), a], 1)  # noqa: E731
  traj = trajectories.Trajectories(rec["tokens"], full(rec["commit_step"]),
                                   full(rec["commit_rule"]), np.zeros(n, np.float32))
  keep = np.flatnonzero(correct)
  traj = trajectories.Trajectories(*(np.asarray(a)[keep] for a in traj))
  attention = np.concatenate([am, np.ones((n, gen), np.int32)], 1)[keep]
  meta = {"weights": where, "config": args.config, "num_problems": n, "kept": int(len(keep)),
          "accuracy": res["accuracy"], "nfe": res["nfe"], "options": res["options"],
          "filter": "exact-match correct answers"}
  trajectories.save(args.out, traj, meta, attention)
  print(json.dumps(meta))
  run.ckpt.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
