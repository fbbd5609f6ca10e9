"""FLOPs per train step of the teacher, IDLM and DiDi steps, from XLA's compiled cost analysis.

  python benchmarks/step_flops.py                       # DiT small, L=1024, B=32, -> stdout
  python benchmarks/step_flops.py --out=benchmarks/results
  python benchmarks/step_flops.py --smoke               # tiny shapes, seconds

The ratio of a distillation step's FLOPs to the teacher step's is the step-time ratio it would
have at the teacher step's MFU: the floor of issue #16's targets (IDLM <= 3.2x, DiDi <= 6x the
teacher step) unless the distillation step runs at a higher MFU than the teacher step.

Each step is built as train_throughput.py builds it (the trainer's step, random-init teacher,
no dropout) and compiled for the CPU at 1 and 2 blocks; `compiled.cost_analysis()["flops"]`
of the optimised HLO (dead code gone) is affine in the depth, so the full depth is
rest + n_blocks x per-block. The DiDi discriminator trains only its last
distill.didi.unfreeze_blocks blocks, which a 1- or 2-block probe cannot show, so its blocks are
probed twice (every block frozen, every block trained) and combined as
rest + (n - u) x frozen + u x trained. XLA's cost analysis counts a loop's body once, so
only loop-free steps are measured: these, at train.microbatches = 1 (the accumulation scan of
k > 1 is a loop).
"""

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from benchmarks import common, train_throughput  # noqa: E402
from idlm_jax import config as config_lib  # noqa: E402


def step_flops(name: str, L: int, B: int, extra=(), config="configs/mdlm_owt.py") -> float:
  """Compiled FLOPs of one train step of `name` (train_throughput.OBJECTIVES) at [B, L]."""
  overrides = train_throughput.objective_overrides(name, train_throughput.parse_args([]))
  cfg = config_lib.load_config(config, overrides + list(extra))
  step, state, inputs, _, _ = train_throughput.objective_train_step(cfg, L, B,
                                                                    jax.devices()[:1])
  return float(step.lower(state, inputs).compile().cost_analysis()["flops"])


def depth_probe(name: str, L: int, B: int, extra=(), config="configs/mdlm_owt.py") -> tuple:
  """(rest, per block) FLOPs from the 1- and 2-block steps."""
  one, two = (step_flops(name, L, B, [*extra, f"model.n_blocks={n}"], config) for n in (1, 2))
  return 2 * one - two, two - one


def full_step(name: str, L: int, B: int, n_blocks: int, unfreeze: int = 0, extra=(),
              config="configs/mdlm_owt.py") -> dict:
  """FLOPs of the full-depth step (see the module docstring)."""
  if name != "didi":
    rest, block = depth_probe(name, L, B, extra, config)
    return dict(flops=rest + n_blocks * block, rest=rest, per_block=block)
  rest, frozen = depth_probe(name, L, B, [*extra, "distill.didi.unfreeze_blocks=0"], config)
  _, trained = depth_probe(name, L, B, [*extra, "distill.didi.unfreeze_blocks=2"], config)
  u = min(unfreeze, n_blocks)
  return dict(flops=rest + (n_blocks - u) * frozen + u * trained, rest=rest,
              per_block_frozen=frozen, per_block_trained=trained, unfreeze_blocks=u)


VARIANTS = (  # (row name, objective, overrides)
    ("teacher", "teacher", []),
    ("idlm", "idlm", []),
    ("didi", "didi", []),
    ("didi, no KL terms", "didi", ["distill.didi.kl_lo=0.0", "distill.didi.kl_hi=0.0"]),
)


def main(argv=None) -> list:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/mdlm_owt.py")
  ap.add_argument("--L", type=int, default=1024)
  ap.add_argument("--B", type=int, default=32)
  ap.add_argument("--smoke", action="store_true")
  ap.add_argument("--out", default=None, help="folder for step_flops_<device>_<date>.jsonl/.md")
  args = ap.parse_args(argv)
  config = args.config + (":smoke" if args.smoke else "")
  if args.smoke:
    args.L, args.B = 32, 4
  base = config_lib.load_config(config, ["model.dropout=0.0"])
  n_blocks, unfreeze = base.model.n_blocks, base.distill.didi.unfreeze_blocks
  info = common.run_info(__file__, argv)
  rows = []
  for row, name, extra in VARIANTS:
    r = full_step(name, args.L, args.B, n_blocks, unfreeze, extra, config)
    rows.append(dict(step=row, objective=name, L=args.L, B=args.B, n_blocks=n_blocks,
                     overrides=extra, **r))
    print(f"{row}: {r['flops'] / 1e12:.2f} TFLOP", flush=True)
  teacher = rows[0]["flops"]
  for r in rows:
    r["x_teacher"] = r["flops"] / teacher
  if args.out:
    stem = common.file_stem("step_flops", info)
    common.write_results(rows, info, args.out, stem, markdown(rows, info))
  return rows


def markdown(rows: list, info: dict) -> str:
  text = common.header_markdown("FLOPs per train step (XLA compiled cost analysis)", info)
  text += ("| step | L | B | TFLOP per step | x teacher step |\n|---|---|---|---|---|\n")
  for r in rows:
    text += (f"| {r['step']} | {r['L']} | {r['B']} | {r['flops'] / 1e12:.2f} | "
             f"{r['x_teacher']:.2f} |\n")
  return text


if __name__ == "__main__":
  main()
