"""Cost of the categorical-draw precisions, alone and inside the MDLM sampler.

  python benchmarks/sampling_precision.py                       # GPT-2 vocab, L=1024, B=16
  python benchmarks/sampling_precision.py --smoke               # tiny, any device

Times one Gumbel-max draw over [B, L, V] for sample.precision in float64 / exact32 / float32,
and a whole jitted MDLM ancestral run (DiT of --config, random weights, caching off so every
step calls the network) with each precision. Compilation excluded; median of --reps runs.
"""

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import models  # noqa: E402
from idlm_jax.diffusion import categorical  # noqa: E402
from idlm_jax import decoding  # noqa: E402
from idlm_jax.data import tokenizers  # noqa: E402
from idlm_jax.diffusion import processes  # noqa: E402
from idlm_jax.train import parallel, state as state_lib  # noqa: E402


def median_time(fn, reps: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/mdlm_owt.py")
  ap.add_argument("--B", type=int, default=16)
  ap.add_argument("--L", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=32)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--smoke", action="store_true")
  args = ap.parse_args()
  spec = args.config + (":smoke" if args.smoke else "")
  if args.smoke:
    args.B, args.L, args.steps, args.reps = 2, 32, 4, 2
  cfg = config_lib.load_config(spec, [f"data.seq_len={args.L}", "sample.cache=False",
                                      f"sample.batch_size={args.B}", f"sample.num_samples={args.B}"])
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  V = tok.model_vocab_size
  model = models.build_model(cfg.model, V, nnx.Rngs(0))
  graphdef, params = state_lib.split_params(model)
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(1), p.shape), params)
  mesh = parallel.make_mesh(cfg.parallel, jax.devices()[:1])
  logits = jax.random.normal(jax.random.key(2), (args.B, args.L, V)) * 3.0
  print(f"jax {jax.__version__} {jax.devices()[0].device_kind} V={V} B={args.B} L={args.L}", flush=True)
  for precision in categorical.PRECISIONS:
    with categorical.x64_scope(precision):
      draw = jax.jit(lambda k, x: categorical.sample_categorical(k, x, precision))
      t_draw = median_time(lambda: draw(jax.random.key(3), logits), args.reps)
      cfg.sample.precision = precision
      sampler = decoding.make_sampler(cfg, processes.get(cfg, vocab_size=V, mask_id=tok.mask_id),
                                      graphdef, num_steps=args.steps, batch_size=args.B)
      with parallel.mesh_context(mesh):
        t_run = median_time(lambda: sampler(params, jax.random.key(4)).tokens, args.reps)
    print(json.dumps({"precision": precision, "draw_ms": t_draw * 1e3, "sampler_steps": args.steps,
                      "sampler_ms": t_run * 1e3, "device": jax.devices()[0].device_kind,
                      "B": args.B, "L": args.L, "V": V}), flush=True)


if __name__ == "__main__":
  main()
