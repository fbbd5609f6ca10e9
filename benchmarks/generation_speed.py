"""End-to-end generation time: the 1024-step cached teacher sampler vs few-step "students".

  python benchmarks/generation_speed.py                       # mdlm_owt: B=64, L=1024, GPT-2
  python benchmarks/generation_speed.py --B 64 --student-steps 4,8,16,32 --reps 3
  python benchmarks/generation_speed.py --smoke --out /tmp/gen   # tiny shapes, CPU, seconds

Generates B sequences of length L with `decoding.make_sampler` (MDLM ancestral sampler,
`sample.cache=True`, float64 categorical draws, argmax noise removal): once with
`--teacher-steps` (1024) steps and once per `--student-steps` entry with the SAME network, so
the rows differ only in the number of reverse steps (a distilled student is the same DiT
with other weights). The network has random weights: for the MDLM sampler the number of
network calls does not depend on them (whether a step changes a token depends only on the
schedule), and neither does the cost of a call.

Reported per row (median over --reps timed runs after --warmup untimed ones; each sampler is
compiled ahead of time, `compile_s`, and never timed): seconds per batch, NFE (network calls actually made; the cache skips steps where no
token changed, + 1 for the final denoising call), seconds per network call (end-to-end / NFE,
draws included), the bare forward time of one call at [B, L], generated tokens/s, the speed-up
against the teacher, and memory (device peak where JAX reports it, else XLA's compiled plan).
Results go to <out>/generation_speed_<device>_<date>.{jsonl,md} with device, versions,
date and command. Issue #10's target (GPU): a 16-step student >= 50x faster than the
1024-step teacher at B=64, L=1024, both with float64 draws.
"""

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import common  # noqa: E402
from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import models  # noqa: E402
from idlm_jax.data import tokenizers  # noqa: E402
from idlm_jax.diffusion import categorical  # noqa: E402
from idlm_jax import decoding  # noqa: E402
from idlm_jax.diffusion import processes  # noqa: E402
from idlm_jax.train import state as state_lib  # noqa: E402


def time_sampler(cfg, process, graphdef, params, *, steps: int, B: int, reps: int,
                 warmup: int, seed: int = 0) -> dict:
  """Timings, NFE and memory of one `make_sampler` configuration (fresh key per call)."""
  sampler = decoding.make_sampler(cfg, process, graphdef, num_steps=steps, batch_size=B)
  with categorical.x64_scope(cfg.sample.precision):  # compiled once, then called directly
    t0 = time.perf_counter()
    sampler = sampler.lower(params, jax.random.key(seed)).compile()
    compile_s = time.perf_counter() - t0
  calls = {"n": 0}
  nfes = []

  def one():
    calls["n"] += 1
    out = sampler(params, jax.random.fold_in(jax.random.key(seed), calls["n"]))
    nfes.append(out.nfe)
    return out.tokens

  with categorical.x64_scope(cfg.sample.precision):
    t = common.timed(one, reps, warmup)
    timed_nfe = [int(n) for n in jax.device_get(nfes[-reps:])]
  nfe = float(np.median(timed_nfe))
  return dict(steps=steps, nfe=nfe, nfe_runs=timed_nfe, seconds=t["median_s"],
              seconds_mean=t["mean_s"], seconds_min=t["min_s"], first_s=t["first_s"],
              times_s=t["times_s"], compile_s=compile_s, s_per_nfe=t["median_s"] / nfe,
              tokens_per_s=B * cfg.data.seq_len / t["median_s"],
              peak_mem_gib=common.device_peak_gib(),
              compiled_mem=common.compiled_memory(sampler))


def time_forward(graphdef, params, vocab: int, B: int, L: int, reps: int, warmup: int) -> dict:
  """One bare network call (float32 logits) at [B, L]: the floor of a sampler step."""
  x = jnp.asarray(np.random.default_rng(1).integers(0, vocab, (B, L), dtype=np.int32))
  sigma = jnp.zeros((B,), jnp.float32)
  fwd = jax.jit(lambda p, x, s: nnx.merge(graphdef, p)(x, s)).lower(params, x, sigma).compile()
  t = common.timed(lambda: fwd(params, x, sigma), reps, warmup)
  return dict(fwd_ms=t["median_s"] * 1e3, fwd_ms_mean=t["mean_s"] * 1e3)


def markdown(rows: list, info: dict, cfg, fwd: dict) -> str:
  """The results table of one run."""
  s, m = cfg.sample, cfg.model
  text = common.header_markdown("Generation speed: cached teacher vs few-step students", info)
  text += (f"B={rows[0]['B']} samples of L={cfg.data.seq_len} tokens, {cfg.data.tokenizer} "
           f"vocabulary, DiT d={m.hidden_size} x {m.n_blocks} blocks, dtype {m.dtype}, "
           f"vocab_pad_multiple {m.vocab_pad_multiple}; MDLM ancestral sampler, cache="
           f"{s.cache}, precision={s.precision}, noise_removal={s.noise_removal}. Median of "
           f"the timed runs after warm-up (compilation excluded). One bare network call at "
           f"[B, L]: {fwd['fwd_ms']:.1f} ms.\n\n"
           "| role | steps | NFE | seconds / batch | ms per network call (e2e / NFE) | "
           "tokens/s | speed-up vs teacher | peak GiB (device) | compiled GiB |\n"
           "|---|---|---|---|---|---|---|---|---|\n")
  for r in rows:
    text += (f"| {r['role']} | {r['steps']} | {common.fmt(r['nfe'])} | "
             f"{r['seconds']:.4g} | {1e3 * r['s_per_nfe']:.2f} | "
             f"{common.fmt(r['tokens_per_s'])} | {r['speedup_vs_teacher']:.1f}x | "
             f"{common.fmt(r['peak_mem_gib'], 2)} | "
             f"{common.fmt(r['compiled_mem'].get('total_gib'), 3)} |\n")
  return text


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/mdlm_owt.py")
  ap.add_argument("--set", action="append", default=[], help="config override field=value")
  ap.add_argument("--B", type=int, default=64, help="samples per batch")
  ap.add_argument("--L", type=int, default=1024, help="sequence length")
  ap.add_argument("--teacher-steps", type=int, default=1024)
  ap.add_argument("--student-steps", default="4,8,16,32")
  ap.add_argument("--reps", type=int, default=3, help="timed runs per row")
  ap.add_argument("--warmup", type=int, default=1,
                  help="untimed runs per sampler (compiled ahead of time); 0 times the first "
                  "run (common.timed)")
  ap.add_argument("--precision", default="float64", choices=["float64", "exact32", "float32"])
  ap.add_argument("--vocab-pad", type=int, default=None, help="model.vocab_pad_multiple")
  ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device")
  ap.add_argument("--out", default="benchmarks/results", help="folder for .jsonl + .md")
  return ap.parse_args(argv)


def main(argv=None) -> list:
  """Run the benchmark; returns the result rows (also printed and written to --out)."""
  args = parse_args(argv)
  spec = args.config + (":smoke" if args.smoke else "")
  if args.smoke:
    args.B, args.L, args.teacher_steps, args.reps, args.warmup = 4, 32, 32, 2, 1
    args.student_steps = "4,8"
  overrides = ["model.dropout=0.0", f"data.seq_len={args.L}", "sample.cache=True",
               f"sample.precision={args.precision}", *args.set]
  if args.vocab_pad is not None:
    overrides.append(f"model.vocab_pad_multiple={args.vocab_pad}")
  cfg = config_lib.load_config(spec, overrides)
  tokenizer = tokenizers.get_tokenizer(cfg.data.tokenizer)
  vocab = tokenizer.model_vocab_size
  model = models.build_model(cfg.model, vocab, nnx.Rngs(0))
  graphdef, params = state_lib.split_params(model)
  process = processes.get(cfg, vocab_size=vocab, mask_id=tokenizer.mask_id)
  info = common.run_info(__file__, argv)
  print(f"jax {jax.__version__} device={info['device']} config={spec} B={args.B} L={args.L} "
        f"vocab={vocab} precision={cfg.sample.precision}", flush=True)
  fwd = time_forward(graphdef, params, vocab, args.B, args.L, max(args.reps, 3), 1)
  plan = [("teacher", args.teacher_steps)]
  plan += [("student", int(s)) for s in args.student_steps.split(",") if s.strip()]
  rows = []
  for role, steps in plan:
    row = time_sampler(cfg, process, graphdef, params, steps=steps, B=args.B,
                       reps=args.reps, warmup=args.warmup)
    rows.append(dict(role=role, B=args.B, L=args.L, vocab=vocab, config=spec, **fwd, **row))
    print(json.dumps(rows[-1]), flush=True)
  for r in rows:
    r["speedup_vs_teacher"] = rows[0]["seconds"] / r["seconds"]
  stem = common.file_stem("generation_speed", info)
  paths = common.write_results(rows, info, args.out, stem, markdown(rows, info, cfg, fwd))
  print("wrote", *paths, flush=True)
  return rows


if __name__ == "__main__":
  main()
