"""Record R2 decoding trajectories of a model and keep the best fraction (issue #8 part 2).

  python benchmarks/r2_record_trajectories.py --config=configs/r2_finetune_synthetic.py \
      --workdir=/tmp/r2_syn --out=/tmp/r2ft/traj.npz [--override a.b=v ...]

Loads the latest (EMA) checkpoint of --workdir, draws distill.r2ft.record_samples samples with
`mdlm_r2` (sample.steps, sample.r2.* rules, sample.batch_size), scores each by distill.r2ft.filter
("exact_nll": exact source NLL per symbol on the synthetic language), keeps the best
distill.r2ft.keep_fraction and writes the .npz of data/trajectories.py (final tokens,
commit steps, committing rules, scores, and a JSON meta with the statistics before/after).
"""

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import decoding  # noqa: E402
from idlm_jax.data import synthetic, trajectories as traj_data  # noqa: E402
from idlm_jax.decoding import trajectories as r2_trajectories  # noqa: E402
from idlm_jax.diffusion import categorical  # noqa: E402
from idlm_jax.train import loop, parallel  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--seed", type=int, default=1234)
  ap.add_argument("--override", action="append", default=[])
  args = ap.parse_args()
  config = config_lib.load_config(args.config, ["mode=eval_samplers", "sample.sampler=r2",
                                                *args.override])
  r = config.distill.r2ft
  run = loop.build(config, args.workdir, jax.devices()[:1])
  step = run.ckpt.latest_step()
  if step is None:
    raise SystemExit(f"no checkpoint in {args.workdir}/checkpoints")
  params = run.ckpt.restore_params(step, run.state.params, use_ema=bool(config.eval.use_ema))
  batch = int(config.sample.batch_size)
  sampler = decoding.make_sampler(config, run.process, run.graphdef,
                                  num_steps=int(config.sample.steps), batch_size=batch)
  key = jax.random.key(args.seed)
  t0 = time.time()
  with categorical.x64_scope(config.sample.precision), parallel.mesh_context(run.mesh):
    outs = []
    for i in range(-(-int(r.record_samples) // batch)):
      outs.append(jax.device_get(sampler(params, jax.random.fold_in(key, i))))
      print(f"batch {i}: {time.time() - t0:.0f} s", flush=True)
  seconds = time.time() - t0
  traj = r2_trajectories.from_outputs(outs)
  traj = r2_trajectories.select(traj, np.arange(int(r.record_samples)))
  if r.filter == "exact_nll":
    hmm = synthetic.from_config(config.data.synthetic)
    traj = traj._replace(score=r2_trajectories.exact_nll_scores(hmm, traj.tokens))
    keep = r2_trajectories.keep_best(traj.score, float(r.keep_fraction))
  else:
    keep = np.arange(len(traj.tokens))
  kept = r2_trajectories.select(traj, keep)
  summary = lambda t: {"num": int(len(t.tokens)), "score_mean": float(np.nanmean(t.score))
                       if np.isfinite(t.score).any() else None, **r2_trajectories.rule_stats(t)}
  meta = {"workdir": str(args.workdir), "step": int(step), "config": args.config,
          "overrides": args.override, "seed": args.seed, "steps": int(config.sample.steps),
          "r2": config.sample.r2.to_dict(), "filter": r.filter,
          "keep_fraction": float(r.keep_fraction), "seconds": seconds,
          "all": summary(traj), "kept": summary(kept)}
  traj_data.save(args.out, kept, meta)
  print(json.dumps({k: meta[k] for k in ("seconds", "all", "kept")}, indent=1))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
