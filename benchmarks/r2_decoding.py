"""R2 fast-decoding rules vs the plain MDLM sampler at matched step budgets (issue #8).

  python benchmarks/r2_decoding.py --config=configs/synthetic_mdlm.py --workdir=/tmp/r2_syn \
      [--steps=16,32,64] [--num_samples=128] [--name=r2_synthetic] [--variants=plain,r2_all]

Loads the latest checkpoint of --workdir (EMA weights when eval.use_ema), then for every
variant (a sampler and its `sample.r2` settings, below) and every step budget N draws
--num_samples samples from fixed keys and writes, per cell: NFE (network calls per batch, and
per row: the calls made while that row still had a [MASK]), tokens committed by each rule
(per sample), unigram entropy, distinct-n, Gen PPL under `eval.evaluator` (if set) and, when
data.source is synthetic_hmm, the exact source NLL per token (data/synthetic.py). Output:
benchmarks/results/<name>.json and .md. Extra `--override a.b=v` values apply to every cell.
"""

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import decoding  # noqa: E402
from idlm_jax.data import synthetic  # noqa: E402
from idlm_jax.decoding import r2 as r2_samplers  # noqa: E402
from idlm_jax.diffusion import categorical  # noqa: E402
from idlm_jax.evals import evaluate  # noqa: E402
from idlm_jax.train import loop, parallel  # noqa: E402

ALL3 = "confidence_cluster,token_cluster,temporal"
VARIANTS = {  # name -> (sample.sampler, sample.r2 overrides)
    "plain": ("ancestral", {}),
    "floor_only": ("r2", {"rules": ""}),
    "threshold": ("r2", {"rules": "threshold"}),
    "confidence_cluster": ("r2", {"rules": "confidence_cluster"}),
    "token_cluster": ("r2", {"rules": "token_cluster"}),
    "temporal": ("r2", {"rules": "temporal"}),
    "r2_all": ("r2", {"rules": ALL3}),
    "r2_all_sampled": ("r2", {"rules": ALL3, "commit": "sampled"}),
    "r2_all+threshold": ("r2", {"rules": "threshold," + ALL3}),
    "fastdllm_top1+threshold+r2": ("r2", {"floor": "top1", "rules": "threshold," + ALL3}),
    # clock "masked": the rules' commits advance the floor's schedule (fewer NFE)
    "floor_only@masked": ("r2", {"rules": "", "clock": "masked"}),
    "threshold@masked": ("r2", {"rules": "threshold", "clock": "masked"}),
    "temporal@masked": ("r2", {"rules": "temporal", "clock": "masked"}),
    "r2_all@masked": ("r2", {"rules": ALL3, "clock": "masked"}),
    "r2_all_sampled@masked": ("r2", {"rules": ALL3, "commit": "sampled", "clock": "masked"}),
    "r2_all+threshold@masked": ("r2", {"rules": "threshold," + ALL3, "clock": "masked"}),
}


def cell_config(config, sampler: str, r2: dict):
  c = ml_collections.ConfigDict(config.to_dict())
  c.sample.sampler = sampler
  c.sample.r2.update(r2)  # (the config was validated at load; mdlm_r2 checks the options)
  return c


def draw(config, process, graphdef, params, mesh, *, num_steps, num_samples, seed) -> dict:
  """Tokens, batch NFE, per-row NFE, per-rule commits (per sample), seconds (compile excluded)."""
  batch = config.sample.batch_size
  sampler = decoding.make_sampler(config, process, graphdef, num_steps=num_steps,
                                  batch_size=batch)
  key = jax.random.key(seed)
  n_batches = -(-num_samples // batch)
  with categorical.x64_scope(config.sample.precision), parallel.mesh_context(mesh):
    t0 = time.time()
    jax.block_until_ready(sampler(params, jax.random.fold_in(key, 10**6)))
    compile_s = time.time() - t0
    t0 = time.time()
    outs = jax.block_until_ready([sampler(params, jax.random.fold_in(key, i))
                                  for i in range(n_batches)])
    seconds = time.time() - t0
    outs = jax.device_get(outs)
  tokens = np.concatenate([o.tokens for o in outs])[:num_samples]
  row = {"nfe": float(np.mean([o.nfe for o in outs])), "seconds": seconds,
         "compile_seconds": compile_s}
  if hasattr(outs[0], "commits"):
    total = np.sum([o.commits for o in outs], axis=0) / (n_batches * batch)
    row["commits_per_sample"] = dict(zip(r2_samplers.COUNTS, map(float, total)))
    row["row_nfe"] = float(np.mean(np.concatenate([o.row_nfe for o in outs])))
  else:
    row["row_nfe"] = row["nfe"]
  return tokens, row


def markdown(results) -> str:
  h = results["header"]
  lines = [f"# R2 decoding rules vs plain MDLM sampling ({h['workdir']}, step {h['step']})", "",
           f"{h['num_samples']} samples of L={h['seq_len']} per cell, batch "
           f"{h['sample_batch_size']}, precision {h['precision']}, device {h['device']}."]
  for key in ("teacher", "runs"):
    if key in h:
      lines += [f"{key}: " + "; ".join([h[key]] if isinstance(h[key], str) else h[key])]
  if "source_entropy_per_token" in h:
    lines.append(f"Exact source entropy {h['source_entropy_per_token']:.3f} nats/token "
                 "(the floor of exact NLL).")
  lines += ["", "NFE: network calls per batch; row NFE: calls while the row had a [MASK]. "
            "Commits: tokens per sample committed by floor / threshold / confidence cluster / "
            "token cluster / temporal / final noise removal. Corpus distinct-4 near 0: the "
            "samples are copies of each other.", ""]
  metric = "exact_nll" if "source_entropy_per_token" in h else "gen_ppl"
  lines += [f"| variant | steps | NFE | row NFE | {metric} | entropy | distinct-4 | "
            "corpus distinct-4 | commits (floor/thr/A/B/C/final) |",
            "|---|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    c = r.get("commits_per_sample")
    cs = "/".join(f"{c[k]:.1f}" for k in r2_samplers.COUNTS) if c else "-"
    m = r.get(metric)
    lines.append(f"| {r['variant']} | {r['steps']} | {r['nfe']:.1f} | {r['row_nfe']:.1f} | "
                 f"{'-' if m is None else f'{m:.3f}'} | {r['entropy']:.3f} | "
                 f"{r['distinct_4']:.3f} | {r['corpus_distinct_4']:.3f} | {cs} |")
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", default="16,32,64")
  ap.add_argument("--num_samples", type=int, default=128)
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--name", default="r2_decoding")
  ap.add_argument("--override", action="append", default=[])
  args = ap.parse_args()
  config = config_lib.load_config(args.config, ["mode=eval_samplers", *args.override])
  run = loop.build(config, args.workdir, jax.devices()[:1])
  step = run.ckpt.latest_step()
  if step is None:
    raise SystemExit(f"no checkpoint in {args.workdir}/checkpoints")
  # only the (EMA) parameters: sampling needs no optimizer state
  params = run.ckpt.restore_params(step, run.state.params, use_ema=bool(config.eval.use_ema))
  e = config.eval
  scorer = evaluate.Scorer.for_run(run)
  hmm, evaluator = scorer.hmm, scorer.evaluator
  header = {"step": int(step), "workdir": str(args.workdir), "config": args.config,
            "seq_len": int(config.data.seq_len), "num_samples": args.num_samples,
            "sample_batch_size": int(config.sample.batch_size),
            "precision": config.sample.precision, "device": jax.devices()[0].platform,
            "evaluator": evaluator.describe() if evaluator else "none",
            "r2_defaults": config.sample.r2.to_dict(), "overrides": args.override}
  if hmm is not None:
    n = int(config.data.seq_len) - 2
    header["source_entropy_per_token"] = synthetic.sequence_entropy(hmm, n) / n
  rows = []
  for name in [v for v in args.variants.split(",") if v]:
    sampler, r2 = VARIANTS[name]
    cfg = cell_config(config, sampler, r2)
    for steps in evaluate.parse_steps(args.steps):
      tokens, row = draw(cfg, run.process, run.graphdef, params, run.mesh,
                         num_steps=steps, num_samples=args.num_samples, seed=int(e.seed))
      row.update(variant=name, steps=steps, sampler=sampler, r2=r2)
      row.update(scorer.score(tokens))
      rows.append(row)
      print(f"{name:28s} N={steps:4d} NFE {row['nfe']:6.1f} row {row['row_nfe']:6.1f} "
            f"nll {row.get('exact_nll', float('nan')):.3f} "
            f"ppl {row.get('gen_ppl', float('nan')):.1f} H {row['entropy']:.3f} "
            f"{row.get('commits_per_sample', '')}", flush=True)
  results = {"header": header, "rows": rows,
             "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
  out = pathlib.Path(__file__).resolve().parent / "results"
  out.mkdir(exist_ok=True)
  (out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
  (out / f"{args.name}.md").write_text(markdown(results))
  print(f"wrote {out / args.name}.json and .md")


if __name__ == "__main__":
  main()
