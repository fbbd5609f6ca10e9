"""Train-step and forward throughput of the DDiT at paper shapes, with MFU and memory.

  python benchmarks/train_throughput.py --config=configs/mdlm_owt.py --L 1024 --B 32
  python benchmarks/train_throughput.py --config=configs/mdlm_lm1b.py --L 128 --B 512 \
      --fwd-L 128 --fwd-B 512
  python benchmarks/train_throughput.py --vocab-pad 0 --remat block    # ablations
  python benchmarks/train_throughput.py --smoke            # tiny shapes, CPU, seconds
  python benchmarks/train_throughput.py --torch-ref ../shared/bench/ddit_torch_reference.py

Measures the full MDLM train step of idlm_jax (forward, backward, clipping, AdamW, EMA; jitted,
state donated) on random tokens, and one sampler network call. The first call and
`--warmup - 1` more are excluded (executables are compiled ahead of time); `--steps` calls are timed; median (and mean) reported.

MFU = (6 N + 12 n_layers L d) FLOPs per token x tokens / step time / peak (989 TFLOP/s dense
bf16 on H100/H200), N = parameters WITHOUT vocabulary padding (the useful FLOPs; the formula of
reference/perf_anchors.md and the PyTorch reference); forward: (2 N + 4 n_layers L d).
Memory: the device's peak bytes in use (GPU/TPU; process-wide, so the forward row inherits
the train step's peak) and XLA's compiled memory plan of each executable (any backend).

`bench_step(step, state, batch, ...)` times any donated step function: the hook for other
objectives' steps (e.g. IDLM's student + fake-score step), see its docstring.
With --torch-ref, the PyTorch reference runs first, in its own process, on the same device.
"""

import argparse
import json
import pathlib
import subprocess
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
from idlm_jax.objectives import get_objective  # noqa: E402
from idlm_jax.train import parallel, state as state_lib  # noqa: E402


def flops_per_token(n_params: int, n_layers: int, L: int, d: int, train: bool = True) -> float:
  """6 N + 12 n_layers L d (train) or 2 N + 4 n_layers L d (forward) FLOPs per token."""
  return (6 * n_params + 12 * n_layers * L * d) if train else (2 * n_params + 4 * n_layers * L * d)


def useful_params(cfg, vocab: int) -> int:
  """Parameters of the configured DiT without vocabulary padding (the N of the MFU formula)."""
  abstract = nnx.eval_shape(lambda: models.build_model(cfg.model, vocab, nnx.Rngs(0)))
  return models.count_params(abstract) - getattr(abstract, "padding_params", 0)


def bench_step(step, state, batch, *, steps: int, warmup: int, tokens: int,
               flops_per_step: float, mesh=None) -> dict:
  """Time `step(state, batch) -> (state, metrics)` (jitted, state donated) and measure memory.

  The hook for any objective's train step: build its state and a batch, jit the step with
  `donate_argnums=(0,)` (and shardings), pass tokens per step and the model FLOPs per step.
  Returns timings (median/mean ms, tokens/s, TFLOP/s, MFU) and memory (device peak and XLA's
  compiled plan). The state is consumed (donated); the caller must not reuse it.
  """
  with parallel.mesh_context(mesh):
    t0 = time.perf_counter()
    step = step.lower(state, batch).compile()  # ahead of time: compilation is never timed
    compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def one():
    with parallel.mesh_context(mesh):
      holder["state"], metrics = step(holder["state"], batch)
    return metrics

  t = common.timed(one, steps, warmup)
  tflops = flops_per_step / t["median_s"] / 1e12
  return dict(tokens_per_s=tokens / t["median_s"], step_ms_median=t["median_s"] * 1e3,
              step_ms=t["mean_s"] * 1e3, tflops=tflops, mfu=tflops / common.peak_tflops(),
              first_step_s=t["first_s"], compile_s=compile_s,
              peak_mem_gib=common.device_peak_gib(), compiled_mem=common.compiled_memory(step))


def random_batch(vocab: int, B: int, L: int, seed: int = 0) -> dict:
  """Random token ids (never [MASK] = vocab - 1) with a full attention mask."""
  rng = np.random.default_rng(seed)
  return {"input_ids": rng.integers(0, vocab - 1, (B, L), dtype=np.int32),
          "attention_mask": np.ones((B, L), np.int32)}


def teacher_train_step(cfg, L: int, B: int):
  """(jitted donated step(state, batch), state, batch, mesh) of teacher pretraining at [B, L].

  The step is the trainer's: `objectives.get_objective(cfg, ...).train_step` under `jax.jit`
  with the state's NamedShardings over the config's mesh, the state donated.
  """
  cfg.data.seq_len, cfg.train.global_batch_size = L, B
  vocab = cfg_vocab(cfg)
  mesh = parallel.make_mesh(cfg.parallel)
  tx = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
  build = lambda rngs: models.build_model(cfg.model, vocab, rngs)
  graphdef, state, shardings = state_lib.create_state(build, tx, 0, mesh)
  obj = get_objective(cfg, graphdef, tx, mask_id=cfg_tokenizer(cfg).mask_id)
  batch_sh = parallel.batch_sharding(mesh)
  step = jax.jit(lambda s, b: obj.train_step(s, None, b), in_shardings=(shardings, batch_sh),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
  batch = jax.device_put(random_batch(vocab, B, L), batch_sh)
  return step, state, batch, mesh


def bench_train(cfg, L: int, B: int, steps: int, warmup: int) -> dict:
  """The MDLM teacher-pretraining step (objective "diffusion") at [B, L]."""
  step, state, batch, mesh = teacher_train_step(cfg, L, B)
  n = useful_params(cfg, cfg_vocab(cfg))
  m = cfg.model
  row = bench_step(step, state, batch, steps=steps, warmup=warmup, tokens=B * L,
                   flops_per_step=flops_per_token(n, m.n_blocks, L, m.hidden_size) * B * L,
                   mesh=mesh)
  return dict(kind="train", L=L, B=B, n_params=n, **row)


def bench_fwd(cfg, L: int, B: int, steps: int, warmup: int) -> dict:
  """One sampler network call (forward, float32 logits) at [B, L]."""
  vocab = cfg_vocab(cfg)
  model = models.build_model(cfg.model, vocab, nnx.Rngs(0))
  graphdef, params = state_lib.split_params(model)
  x = jnp.asarray(np.random.default_rng(1).integers(0, vocab, (B, L), dtype=np.int32))
  sigma = jnp.full((B,), 0.5)
  fwd = jax.jit(lambda p, x, s: nnx.merge(graphdef, p)(x, s)).lower(params, x, sigma).compile()
  mem = common.compiled_memory(fwd)
  t = common.timed(lambda: fwd(params, x, sigma), steps, warmup)
  n = useful_params(cfg, vocab)
  m = cfg.model
  tflops = flops_per_token(n, m.n_blocks, L, m.hidden_size, train=False) * B * L
  tflops = tflops / t["median_s"] / 1e12
  return dict(kind="fwd", L=L, B=B, n_params=n, tokens_per_s=B * L / t["median_s"],
              call_ms_median=t["median_s"] * 1e3, call_ms=t["mean_s"] * 1e3, tflops=tflops,
              mfu=tflops / common.peak_tflops(), first_call_s=t["first_s"],
              peak_mem_gib=common.device_peak_gib(), compiled_mem=mem)


def cfg_tokenizer(cfg):
  from idlm_jax.data import tokenizers  # noqa: PLC0415
  return tokenizers.get_tokenizer(cfg.data.tokenizer)


def cfg_vocab(cfg) -> int:
  return cfg_tokenizer(cfg).model_vocab_size


def torch_reference(path: str, L: int, B: int, fwd_B: int, fwd_L: int, vocab: int, steps: int):
  out = subprocess.run([sys.executable, path, "--L", str(L), "--B", str(B), "--mode", "both",
                        "--fwd-B", str(fwd_B), "--fwd-L", str(fwd_L), "--vocab", str(vocab),
                        "--steps", str(steps)], capture_output=True, text=True)
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULTS ")]
  if out.returncode or not line:
    return [{"framework": "torch", "error": out.stderr[-2000:]}]
  return json.loads(line[0][len("RESULTS "):])


def markdown(rows: list, info: dict, cfg) -> str:
  """Results table of one run."""
  m = cfg.model
  text = common.header_markdown("DDiT train step and forward throughput", info)
  text += (f"Model: d={m.hidden_size}, {m.n_blocks} blocks, {m.n_heads} heads, dtype "
           f"{m.dtype}, attention {m.attention}, vocab_pad_multiple {m.vocab_pad_multiple}, "
           f"remat {m.remat}. MFU = (6 N + 12 n_layers L d) tokens / step time / "
           f"{common.peak_tflops()} TFLOP/s (forward: 2 N + 4 n_layers L d), N without "
           f"vocabulary padding. Median of the timed repetitions after warm-up.\n\n"
           "| framework | kind | L | B | tokens/s | ms (median / mean) | TFLOP/s | MFU | "
           "peak GiB (device) | compiled GiB (args+out+temp-alias) |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n")
  for r in rows:
    if "error" in r:
      text += f"| {r.get('framework')} | error: {r['error'][:80]!r} |\n"
      continue
    med = r.get("step_ms_median", r.get("call_ms_median"))
    mean = r.get("step_ms", r.get("call_ms"))
    text += (f"| {r.get('framework')} | {r.get('kind')} | {r.get('L')} | {r.get('B')} | "
             f"{common.fmt(r.get('tokens_per_s'))} | {common.fmt(med)} / {common.fmt(mean)} | "
             f"{common.fmt(r.get('tflops'))} | {common.fmt(100 * r.get('mfu', float('nan')))}% | "
             f"{common.fmt(r.get('peak_mem_gib'), 2)} | "
             f"{common.fmt(r.get('compiled_mem', {}).get('total_gib'), 3)} |\n")
  return text


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/mdlm_owt.py")
  ap.add_argument("--set", action="append", default=[], help="config override field=value")
  ap.add_argument("--L", type=int, default=1024)
  ap.add_argument("--B", type=int, default=32)
  ap.add_argument("--fwd-B", type=int, default=64)
  ap.add_argument("--fwd-L", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=20, help="timed repetitions")
  ap.add_argument("--warmup", type=int, default=3, help="untimed calls, compilation included")
  ap.add_argument("--mode", choices=["train", "fwd", "both"], default="both")
  ap.add_argument("--vocab-pad", type=int, default=None,
                  help="model.vocab_pad_multiple (default: the config's, 128)")
  ap.add_argument("--remat", choices=["none", "block"], default=None,
                  help="model.remat (default: the config's, none)")
  ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device")
  ap.add_argument("--torch-ref", default=None, help="path to ddit_torch_reference.py")
  ap.add_argument("--json", default=None, help="append results (JSON lines) here")
  ap.add_argument("--out", default=None,
                  help="folder for <stem>.jsonl + <stem>.md (e.g. benchmarks/results)")
  return ap.parse_args(argv)


def main(argv=None) -> list:
  """Run the benchmark; returns the result rows (also printed, and written if asked)."""
  args = parse_args(argv)
  spec = args.config + (":smoke" if args.smoke else "")
  # teacher pretraining (objective "diffusion"); the PyTorch reference has no dropout
  overrides = ["objective=diffusion", "model.dropout=0.0", *args.set]
  if args.vocab_pad is not None:
    overrides.append(f"model.vocab_pad_multiple={args.vocab_pad}")
  if args.remat is not None:
    overrides.append(f"model.remat={args.remat}")
  if args.smoke:
    args.L, args.B, args.fwd_L, args.fwd_B, args.steps, args.warmup = 32, 8, 32, 8, 3, 1
  cfg = config_lib.load_config(spec, overrides)
  # the PyTorch reference runs first, in its own process, before JAX takes the GPU's memory
  torch_results = (torch_reference(args.torch_ref, args.L, args.B, args.fwd_B, args.fwd_L,
                                   cfg_vocab(cfg), args.steps) if args.torch_ref else [])
  info = common.run_info(__file__, argv)
  print(f"jax {jax.__version__} device={info['device']} x{jax.device_count()} config={spec} "
        f"dtype={cfg.model.dtype} attention={cfg.model.attention} "
        f"vocab_pad={cfg.model.vocab_pad_multiple} remat={cfg.model.remat}", flush=True)
  rows = []
  if args.mode in ("train", "both"):
    rows.append(bench_train(cfg, args.L, args.B, args.steps, args.warmup))
  if args.mode in ("fwd", "both"):
    rows.append(bench_fwd(cfg, args.fwd_L, args.fwd_B, args.steps, args.warmup))
  for r in rows:
    r.update(framework="idlm_jax", device=info["device"], version=jax.__version__,
             dtype=cfg.model.dtype, vocab_pad_multiple=cfg.model.vocab_pad_multiple,
             remat=cfg.model.remat, config=spec)
  rows += torch_results
  for r in rows:
    print(json.dumps(r), flush=True)
  if args.json:
    with open(args.json, "a") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")
  if args.out:
    stem = common.file_stem("train_throughput", info)
    paths = common.write_results(rows, info, args.out, stem, markdown(rows, info, cfg))
    print("wrote", *paths, flush=True)
  return rows


if __name__ == "__main__":
  main()
