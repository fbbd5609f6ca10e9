"""A DiDi-Instruct student with and without RGAS (reference/didi_instruct.md §3.3): quality,
student NFE, discriminator calls and wall-clock per step count.

python benchmarks/didi_rgas.py --workdir=/tmp/didi_syn --steps=4,8,16 [--num_samples=128]

Reads the latest checkpoint of a `objective="didi"` run (EMA student, discriminator params),
samples `num_samples` sequences per cell from the same keys with the plain ancestral sampler
(sample.* of the run) and with RGAS (sample.sampler="rgas": distill.didi.rgas_*), and scores
them like
eval_samplers: exact NLL under the source on the synthetic language, else Gen PPL under
eval.evaluator (if set), plus unigram entropy. Writes <workdir>/didi_rgas/results.{json,md}.
(`--config.mode=eval_samplers --config.eval.samplers=ancestral,rgas` gives the same cells in
the standard report.)
Timings exclude compilation (one discarded warm-up batch).
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax.diffusion import categorical  # noqa: E402
from idlm_jax import decoding  # noqa: E402
from idlm_jax.evals import evaluate  # noqa: E402
from idlm_jax.train import loop, parallel  # noqa: E402


def load_run(workdir: pathlib.Path, overrides=()):
  """The run's config (its config.json, mode "sample": no data, no teacher) built and restored."""
  saved = json.loads((workdir / "config.json").read_text())
  flat = {}

  def walk(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        flat[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v

  walk(saved)
  cfg = config_lib.base_config()
  known = set(config_lib._flatten(cfg))
  cfg.update_from_flattened_dict({k: v for k, v in flat.items() if k in known})
  cfg.mode = "sample"
  for item in overrides:
    config_lib._set(cfg, *[s.strip() for s in item.split("=", 1)])
  run = loop.build(cfg, workdir)
  step = loop.restore_latest(run)
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {run.ckpt.directory}")
  return run, step


def timed(fn, keys):
  """(outputs on host, seconds) for fn(key) over keys, after one warm-up call."""
  jax.block_until_ready(fn(jax.random.fold_in(keys[0], 10**6)))
  t0 = time.time()
  outs = jax.block_until_ready([fn(k) for k in keys])
  return parallel.to_host(outs), time.time() - t0


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", default="4,8,16")
  p.add_argument("--num_samples", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--override", action="append", default=[], help="config field=value")
  a = p.parse_args(argv)
  workdir = pathlib.Path(a.workdir).expanduser()
  run, step = load_run(workdir, a.override)
  c = run.config
  scorer = evaluate.Scorer.for_run(run)
  hmm, evaluator = scorer.hmm, scorer.evaluator
  student = loop.eval_params(run)
  cfgs = {name: evaluate.with_sampler(c, name) for name in ("ancestral", "rgas")}
  aux = decoding.sampler_aux(cfgs["rgas"], run.state)  # the discriminator
  batch = c.sample.batch_size
  keys = [jax.random.fold_in(jax.random.key(a.seed), i) for i in range(-(-a.num_samples // batch))]
  rows = []
  for steps in evaluate.parse_steps(a.steps):
    for name, cfg in cfgs.items():
      sampler = decoding.make_sampler(cfg, run.process, run.graphdef, num_steps=steps,
                                     batch_size=batch)
      fn = lambda k: sampler(student, k, None, aux)  # noqa: E731 (ancestral ignores aux)
      with categorical.x64_scope(c.sample.precision), parallel.mesh_context(run.mesh):
        outs, seconds = timed(fn, keys)
      tokens = np.concatenate([o.tokens for o in outs])[:a.num_samples]
      row = {"sampler": name, "steps": steps, "disc_forwards": 0.0, "disc_grads": 0.0,
             **decoding.call_counts(outs), "seconds_per_batch": seconds / len(keys)}
      row.update(scorer.score(tokens))
      rows.append(row)
      print(json.dumps(row), flush=True)
  metric = "exact_nll" if hmm is not None else ("gen_ppl" if evaluator else None)
  cols = ["sampler", "steps", "nfe", "disc_forwards", "seconds_per_batch", "entropy"] + \
      ([metric] if metric else [])
  table = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + "".join(
      "| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in cols)
      + " |\n" for r in rows)
  header = {"workdir": str(workdir), "step": int(step), "num_samples": a.num_samples,
            "batch_size": batch, "precision": c.sample.precision,
            "device": jax.devices()[0].platform,
            "rgas": {k: c.distill.didi[k] for k in c.distill.didi if k.startswith("rgas")}}
  if hmm is not None:
    header["source_entropy_per_token"] = rows[0].get("source_entropy")
  out = workdir / "didi_rgas"
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
  (out / "results.md").write_text(table)
  print("\n" + table)
  run.ckpt.close()


if __name__ == "__main__":
  main()
