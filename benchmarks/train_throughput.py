"""Train-step and forward throughput of the DDiT at paper shapes, with MFU.

  python benchmarks/train_throughput.py --config=configs/mdlm_owt.py --L 1024 --B 32
  python benchmarks/train_throughput.py --smoke            # tiny shapes, CPU, seconds
  python benchmarks/train_throughput.py --torch-ref ../shared/bench/ddit_torch_reference.py

Measures the full MDLM train step of idlm_jax (forward, backward, clipping, AdamW, EMA; jitted,
state donated) on random tokens, and one sampler network call. Warm-up steps are excluded;
median and mean step times over --steps repetitions are reported.
MFU = (6 N + 12 n_layers L d) tokens / step time / peak, N = parameters (the formula of
reference/perf_anchors.md and the PyTorch reference); forward: (2 N + 4 n_layers L d).
With --torch-ref, the PyTorch reference runs in the same job on the same device.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import models  # noqa: E402
from idlm_jax.objectives import get_objective  # noqa: E402
from idlm_jax.train import parallel, state as state_lib  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "cpu": float("nan")}


def peak_tflops() -> float:
  kind = jax.devices()[0].device_kind
  for name, tf in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return tf
  return float("nan")


def timed(fn, steps: int, warmup: int):
  """(median_s, mean_s, first_s): first call includes compilation."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    jax.block_until_ready(fn())
  times = []
  t_all = time.perf_counter()
  for _ in range(steps):
    ts = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - ts)
  return float(np.median(times)), (time.perf_counter() - t_all) / steps, first


def bench_train(cfg, L: int, B: int, steps: int, warmup: int) -> dict:
  cfg.data.seq_len, cfg.train.global_batch_size = L, B
  vocab = cfg_vocab(cfg)
  mesh = parallel.make_mesh(cfg.parallel)
  tx = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
  build = lambda rngs: models.build_model(cfg.model, vocab, rngs)
  graphdef, state, shardings = state_lib.create_state(build, tx, 0, mesh)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  obj = get_objective(cfg, graphdef, tx, mask_id=cfg_tokenizer(cfg).mask_id)
  batch_sh = parallel.batch_sharding(mesh)
  step = jax.jit(obj.train_step, in_shardings=(shardings, None, batch_sh),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(0, vocab - 1, (B, L), dtype=np.int32),
           "attention_mask": np.ones((B, L), np.int32)}
  batch = jax.device_put(batch, batch_sh)
  holder = {"state": state}

  def one():
    with parallel.mesh_context(mesh):
      holder["state"], m = step(holder["state"], None, batch)
    return m["loss"]

  med, mean, first = timed(one, steps, warmup)
  m = cfg.model
  flops_tok = 6 * n_params + 12 * m.n_blocks * L * m.hidden_size
  tflops = flops_tok * B * L / mean / 1e12
  return dict(kind="train", L=L, B=B, tokens_per_s=B * L / mean, step_ms=mean * 1e3,
              step_ms_median=med * 1e3, tflops=tflops, mfu=tflops / peak_tflops(),
              first_step_s=first, n_params=n_params, peak_mem_gib=peak_mem_gib())


def bench_fwd(cfg, L: int, B: int, steps: int, warmup: int) -> dict:
  vocab = cfg_vocab(cfg)
  model = models.build_model(cfg.model, vocab, nnx.Rngs(0))
  graphdef, params = state_lib.split_params(model)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  fwd = jax.jit(lambda p, x, s: nnx.merge(graphdef, p)(x, s))
  x = jnp.asarray(np.random.default_rng(1).integers(0, vocab, (B, L), dtype=np.int32))
  sigma = jnp.full((B,), 0.5)
  med, mean, first = timed(lambda: fwd(params, x, sigma), steps, warmup)
  m = cfg.model
  tflops = (2 * n_params + 4 * m.n_blocks * L * m.hidden_size) * B * L / mean / 1e12
  return dict(kind="fwd", L=L, B=B, tokens_per_s=B * L / mean, call_ms=mean * 1e3,
              call_ms_median=med * 1e3, tflops=tflops, mfu=tflops / peak_tflops(),
              first_call_s=first)


def cfg_tokenizer(cfg):
  from idlm_jax.data import tokenizers
  return tokenizers.get_tokenizer(cfg.data.tokenizer)


def cfg_vocab(cfg) -> int:
  return cfg_tokenizer(cfg).model_vocab_size


def peak_mem_gib():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", 0) / 2**30 or None


def torch_reference(path: str, L: int, B: int, fwd_B: int, fwd_L: int, vocab: int, steps: int):
  out = subprocess.run([sys.executable, path, "--L", str(L), "--B", str(B), "--mode", "both",
                        "--fwd-B", str(fwd_B), "--fwd-L", str(fwd_L), "--vocab", str(vocab),
                        "--steps", str(steps)], capture_output=True, text=True)
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULTS ")]
  if out.returncode or not line:
    return [{"framework": "torch", "error": out.stderr[-2000:]}]
  return json.loads(line[0][len("RESULTS "):])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/mdlm_owt.py")
  ap.add_argument("--set", action="append", default=[], help="config override field=value")
  ap.add_argument("--L", type=int, default=1024)
  ap.add_argument("--B", type=int, default=32)
  ap.add_argument("--fwd-B", type=int, default=64)
  ap.add_argument("--fwd-L", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--mode", choices=["train", "fwd", "both"], default="both")
  ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device")
  ap.add_argument("--torch-ref", default=None, help="path to ddit_torch_reference.py")
  ap.add_argument("--json", default=None, help="append results (JSON lines) here")
  args = ap.parse_args()
  spec = args.config + (":smoke" if args.smoke else "")
  overrides = ["model.dropout=0.0", *args.set]  # the PyTorch reference has no dropout
  if args.smoke:
    args.L, args.B, args.fwd_L, args.fwd_B, args.steps, args.warmup = 32, 8, 32, 8, 3, 1
  cfg = config_lib.load_config(spec, overrides)
  # the PyTorch reference runs first, in its own process, before JAX takes the GPU's memory
  torch_results = (torch_reference(args.torch_ref, args.L, args.B, args.fwd_B, args.fwd_L,
                                   cfg_vocab(cfg), args.steps) if args.torch_ref else [])
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} device={dev.device_kind} x{jax.device_count()} "
        f"config={spec} dtype={cfg.model.dtype} attention={cfg.model.attention}", flush=True)
  results = []
  if args.mode in ("train", "both"):
    results.append(bench_train(cfg, args.L, args.B, args.steps, args.warmup))
  if args.mode in ("fwd", "both"):
    results.append(bench_fwd(cfg, args.fwd_L, args.fwd_B, args.steps, args.warmup))
  for r in results:
    r.update(framework="idlm_jax", device=dev.device_kind, version=jax.__version__,
             dtype=cfg.model.dtype)
  results += torch_results
  for r in results:
    print(json.dumps(r), flush=True)
  if args.json:
    with open(args.json, "a") as f:
      for r in results:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
