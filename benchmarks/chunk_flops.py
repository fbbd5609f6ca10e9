"""What the chunked losses (model.loss_chunk) cost in FLOPs, from XLA's cost analysis.

  python benchmarks/chunk_flops.py                              # -> stdout
  python benchmarks/chunk_flops.py --out=benchmarks/results     # + chunk_flops_cpu_<date>.jsonl

For MDLM and Duo, the teacher loss and IDLM's student and fake losses (each with its gradient
and an SGD update) are compiled unchunked and chunked on a 1-block DiT, and their FLOPs
reported in units of one [B, L, d] x [d, V] product (2 B L d V), the unit every
vocabulary-sized matmul costs. XLA
counts a loop's body once, and with one chunk it merges the duplicated work, so the chunked
FLOPs come from two chunk sizes (L/2 and L/4: trip counts 2 and 4): counted = outside + c x
per-position, hence true = counted(L/2) + per-position x L/2.
"""

import argparse
import datetime
import functools
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from idlm_jax.diffusion import duo_integral, processes  # noqa: E402
from idlm_jax.diffusion.schedules import get_schedule  # noqa: E402
from idlm_jax.models import DIT  # noqa: E402
from idlm_jax.objectives import idlm  # noqa: E402


def compile_loss_step(algo: str, which: str, chunk: int, V: int, L: int, B: int, d: int):
  """The compiled loss + gradient + SGD update of the trained network's parameters (donated),
  on a 1-block DiT at loss_chunk=chunk: the teacher's ("teacher"; Duo: the curriculum) or an
  IDLM loss ("inverse": the student's, or "fake")."""
  model = DIT(vocab_size=V, hidden_size=d, n_blocks=1, n_heads=2, cond_dim=16,
              rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  schedule = get_schedule("loglinear", 1e-3)
  if algo == "duo":
    transform = lambda: duo_integral.DuoTransform.create(V, -3.55, -1.85, num_points=201)
    process = processes.Duo(schedule, vocab_size=V, transform_fn=transform,
                            curriculum=(0, 10), loss_chunk=chunk)
  else:
    process = processes.MDLM(schedule, mask_id=V - 1, vocab_size=V, loss_chunk=chunk)
  net = functools.partial(nnx.merge, graphdef)
  if which == "teacher":  # the teacher loss (Duo: its curriculum, at step 0)
    fn = lambda p, batch, key: (process.loss_sums(net(p), batch, key, train=True,
                                                  step=jnp.asarray(0))["nelbo_sum"], None)
  else:
    proc = process.inverse_parts(draw="inverse_cdf")
    fn = functools.partial({"inverse": idlm.inverse_loss, "fake": idlm.fake_loss}[which], proc,
                           net)
  others = {"inverse": (params, params), "fake": (params,), "teacher": ()}[which]
  batch = {"input_ids": jnp.zeros((B, L), jnp.int32),
           "attention_mask": jnp.ones((B, L), jnp.int32)}

  def step(p, *rest):
    (value, _), g = jax.value_and_grad(fn, has_aux=True)(p, *rest)
    return jax.tree.map(lambda a, da: a - 1e-3 * da, p, g), value

  return jax.jit(step, donate_argnums=0).lower(params, *others, batch,
                                               jax.random.key(0)).compile()


def loss_flops(algo: str, which: str, chunk: int, V: int, L: int, B: int, d: int) -> float:
  """XLA's FLOPs of `compile_loss_step` (a loop's body counted once)."""
  return float(compile_loss_step(algo, which, chunk, V, L, B, d).cost_analysis()["flops"])


def rows(V: int, L: int, B: int, d: int, algos=("mdlm", "duo"),
         losses=("teacher", "inverse", "fake")):
  unit = 2.0 * B * L * d * V
  for algo in algos:
    for which in losses:
      whole = loss_flops(algo, which, 0, V, L, B, d)
      half, quarter = (loss_flops(algo, which, L // k, V, L, B, d) for k in (2, 4))
      per_position = (half - quarter) / (L // 4)
      chunked = half + per_position * L / 2
      yield {"algo": algo, "loss": which, "V": V, "L": L, "B": B, "d": d,
             "flops_unchunked": whole, "flops_chunked": chunked,
             "unchunked_units": whole / unit, "chunked_units": chunked / unit,
             "extra_units": (chunked - whole) / unit, "backend": jax.default_backend(),
             "device": f"XLA:{jax.default_backend().upper()} cost analysis",
             "jax": jax.__version__}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--V", type=int, default=4096)
  ap.add_argument("--L", type=int, default=64, help="a multiple of 4")
  ap.add_argument("--B", type=int, default=2)
  ap.add_argument("--d", type=int, default=32)
  ap.add_argument("--algos", default="mdlm,duo")
  ap.add_argument("--losses", default="teacher,inverse,fake")
  ap.add_argument("--out", default=None, help="a folder for chunk_flops_<backend>_<date>.jsonl")
  args = ap.parse_args(argv)
  out = []
  for row in rows(args.V, args.L, args.B, args.d, args.algos.split(","),
                  args.losses.split(",")):
    out.append(row)
    print(f"{row['algo']:4s} {row['loss']:7s}: {row['unchunked_units']:.2f} -> "
          f"{row['chunked_units']:.2f} units of 2BLdV (+{row['extra_units']:.2f})", flush=True)
  if args.out:
    path = pathlib.Path(args.out) / (f"chunk_flops_{jax.default_backend()}_"
                                     f"{datetime.date.today().isoformat()}.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    print(f"wrote {path}")
  return out


if __name__ == "__main__":
  main()
