"""Train-step and forward throughput of the DDiT at paper shapes, with MFU and memory.

  python benchmarks/train_throughput.py --config=configs/mdlm_owt.py --L 1024 --B 32
  python benchmarks/train_throughput.py --config=configs/mdlm_lm1b.py --L 128 --B 512 \
      --fwd-L 128 --fwd-B 512
  python benchmarks/train_throughput.py --vocab-pad 0 --remat block    # ablations
  python benchmarks/train_throughput.py --smoke            # tiny shapes, CPU, seconds
  python benchmarks/train_throughput.py --devices 1        # a mesh of the first N devices
  python benchmarks/train_throughput.py --torch-ref ../shared/bench/ddit_torch_reference.py
  python benchmarks/train_throughput.py --objectives=teacher,idlm --loss-chunk 128 --mode train

Measures the full MDLM train step of idlm_jax (forward, backward, clipping, AdamW, EMA; jitted,
state donated) on random tokens, and one sampler network call. `--objectives` (default
teacher,idlm,didi) also times the distillation steps at the same [B, L] and model, as the
trainer builds them (train/loop.build): IDLM (student + fake updates, frozen teacher; consumes
distill.fake_steps + 1 batches per step) and DiDi-Instruct (discriminator + student update
on B real rows x distill.didi.group_size rollouts; 1 batch per step), with random-init
networks, each row with its step time over the teacher step's (`x_teacher_step`; the issue's
target for IDLM is <= 3.2) and tokens/s over the data tokens a step consumes.
`--loss-chunk N` sets model.loss_chunk (chunked loss) of the teacher and IDLM steps.
The forward is timed twice (`--fwd-logits`): returning float32 logits (the library's default)
and returning them in the compute dtype (bf16), as the PyTorch reference's forward does; with
--torch-ref every row gets its ratio to the reference's like row (`add_torch_ratios`).
The first call and `--warmup - 1` more are excluded (executables are compiled ahead of time); `--steps` calls are timed; median (and mean) reported.

MFU = (6 N + 12 n_layers L d) FLOPs per token x tokens / step time / peak (989 TFLOP/s dense
bf16 on H100/H200), N = parameters WITHOUT vocabulary padding (the useful FLOPs; the formula of
reference/perf_anchors.md and the PyTorch reference); forward: (2 N + 4 n_layers L d).
Memory: the device's peak bytes in use (GPU/TPU; process-wide, so the forward row inherits
the train step's peak) and XLA's compiled memory plan of each executable (any backend).

`bench_step(step, state, batch, ...)` times any donated step function (`objective_train_step`
builds the trainer's step of any objective for it), see its docstring.
With --torch-ref, the PyTorch reference runs first, in its own process, on the same device.
"""

import argparse
import gc
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
from idlm_jax.data import tokenizers  # noqa: E402
from idlm_jax.objectives.state import make_optimizer  # noqa: E402
from idlm_jax.train import loop, parallel, state as state_lib  # noqa: E402


OBJECTIVES = ("teacher", "idlm", "didi")  # teacher = MDLM pretraining (objective "diffusion")
FWD_LOGITS = ("float32", "compute")  # forward rows: float32 logits, or the compute dtype's


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
  `batch` is any pytree of the step's other inputs (`objective_train_step`: (frozen, batch)).

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


def objective_train_step(cfg, L: int, B: int, devices=None):
  """(jitted donated step(state, inputs), state, inputs, mesh, batches_per_step) of
  cfg.objective at [B, L], built as the trainer builds it (train/loop.build).

  The step is `loop.make_objective(cfg, ...)[0].train_step` under `jax.jit` with the state's
  NamedShardings over the config's mesh, the state donated. `inputs` = (frozen, batch): frozen
  is None for teacher pretraining and {"teacher": params} (never donated) for distillation,
  here a random-init copy of the student's initial params (throughput does not depend on
  trained weights); batch is one [B, L] batch of random tokens, or a tuple of
  `batches_per_step` of them (IDLM: distill.fake_steps + 1).
  """
  cfg.data.seq_len, cfg.train.global_batch_size = L, B
  vocab = cfg_vocab(cfg)
  mesh = parallel.make_mesh(cfg.parallel, devices)  # devices: None = all
  tx = make_optimizer(cfg.optim, cfg.train.steps)
  build = lambda rngs: models.build_model(cfg.model, vocab, rngs)
  graphdef, _ = state_lib.abstract_model(build, cfg.seed)
  obj, _ = loop.make_objective(cfg, graphdef, tx, cfg_tokenizer(cfg))
  graphdef, state, shardings = state_lib.create_state(build, tx, 0, mesh, aux_txs=obj.aux_txs)
  frozen_sh = None if cfg.objective == "diffusion" else {"teacher": shardings.params}
  frozen = frozen_sh and {"teacher": jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                             out_shardings=shardings.params)(state.params)}
  batch_sh = parallel.batch_sharding(mesh)
  n = obj.batches_per_step
  batches = tuple(jax.device_put(random_batch(vocab, B, L, seed=i), batch_sh) for i in range(n))
  step = jax.jit(lambda s, inputs: obj.train_step(s, *inputs),
                 in_shardings=(shardings, (frozen_sh, batch_sh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
  return step, state, (frozen, batches[0] if n == 1 else batches), mesh, n


def teacher_train_step(cfg, L: int, B: int):
  """(jitted donated step(state, inputs), state, inputs, mesh) of teacher pretraining at
  [B, L] (cfg.objective "diffusion"; inputs = (None, batch)), see `objective_train_step`."""
  return objective_train_step(cfg, L, B)[:4]


def bench_objective(name: str, cfg, L: int, B: int, steps: int, warmup: int,
                    devices=None) -> dict:
  """The train step of cfg.objective at [B, L] real rows per batch (the row `name`).

  tokens/s counts the data tokens a step consumes: batches_per_step x B x L (IDLM: fake_steps
  + 1 batches). FLOPs (for TFLOP/s, MFU) are the teacher step's 6 N + 12 n_layers L d per
  data token: the useful work of a teacher step on the same tokens, not the objective's own
  count, so MFU is comparable only on the teacher row.
  """
  step, state, inputs, mesh, n_batches = objective_train_step(cfg, L, B, devices)
  n = useful_params(cfg, cfg_vocab(cfg))
  m = cfg.model
  tokens = n_batches * B * L
  row = bench_step(step, state, inputs, steps=steps, warmup=warmup, tokens=tokens,
                   flops_per_step=flops_per_token(n, m.n_blocks, L, m.hidden_size) * tokens,
                   mesh=mesh)
  extra = {}
  if cfg.objective == "didi":
    extra = dict(group_size=cfg.distill.didi.group_size,
                 rollout_rows=B * cfg.distill.didi.group_size)
  return dict(kind="train", objective=name, L=L, B=B, batches_per_step=n_batches,
              microbatches=cfg.train.microbatches, n_params=n,
              loss_chunk=cfg.model.loss_chunk, **extra, **row)


def bench_train(cfg, L: int, B: int, steps: int, warmup: int) -> dict:
  """The MDLM teacher-pretraining step (objective "diffusion") at [B, L]."""
  return bench_objective("teacher", cfg, L, B, steps, warmup)


def bench_fwd(cfg, L: int, B: int, steps: int, warmup: int, logits: str = "float32") -> dict:
  """One sampler network call (forward) at [B, L], returning float32 logits or, with
  logits="compute", logits in the compute dtype (bf16 under model.dtype bfloat16: the PyTorch
  reference's forward returns torch autocast's bf16 logits, so this row is its like)."""
  if logits not in FWD_LOGITS:
    raise SystemExit(f"--fwd-logits: unknown {logits!r}, expected some of {FWD_LOGITS}")
  vocab = cfg_vocab(cfg)
  model = models.build_model(cfg.model, vocab, nnx.Rngs(0))
  graphdef, params = state_lib.split_params(model)
  x = jnp.asarray(np.random.default_rng(1).integers(0, vocab, (B, L), dtype=np.int32))
  sigma = jnp.full((B,), 0.5)
  dtype = jnp.float32 if logits == "float32" else None
  fwd = jax.jit(lambda p, x, s: nnx.merge(graphdef, p)(x, s, logits_dtype=dtype))
  out_dtype = str(jax.eval_shape(fwd, params, x, sigma).dtype)
  fwd = fwd.lower(params, x, sigma).compile()
  mem = common.compiled_memory(fwd)
  t = common.timed(lambda: fwd(params, x, sigma), steps, warmup)
  n = useful_params(cfg, vocab)
  m = cfg.model
  tflops = flops_per_token(n, m.n_blocks, L, m.hidden_size, train=False) * B * L
  tflops = tflops / t["median_s"] / 1e12
  return dict(kind="fwd", L=L, B=B, logits=logits, logits_dtype=out_dtype, n_params=n,
              tokens_per_s=B * L / t["median_s"],
              call_ms_median=t["median_s"] * 1e3, call_ms=t["mean_s"] * 1e3, tflops=tflops,
              mfu=tflops / common.peak_tflops(), first_call_s=t["first_s"],
              peak_mem_gib=common.device_peak_gib(), compiled_mem=mem)


def cfg_tokenizer(cfg):
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


def add_ratios(rows: list) -> None:
  """Each train row's step time over the teacher row's of the same run (`x_teacher_step`), and
  per data token (`x_teacher_per_token`: the step's time per consumed token over the
  teacher's)."""
  teacher = next((r for r in rows if r.get("objective") == "teacher" and "error" not in r),
                 None)
  if teacher is None:
    return
  for r in rows:
    if r.get("kind") == "train" and "error" not in r:
      r["x_teacher_step"] = r["step_ms_median"] / teacher["step_ms_median"]
      r["x_teacher_per_token"] = teacher["tokens_per_s"] / r["tokens_per_s"]


def add_torch_ratios(rows: list) -> None:
  """Against the PyTorch reference's rows of the same run (none: nothing added): each
  idlm_jax train row's tokens/s over the reference's (`x_torch_tokens_per_s`, > 1 = faster;
  issue #16's target for the teacher step is >= 1.2) and each forward row's median latency
  over the reference's (`x_torch_latency`, < 1 = faster; target <= 0.85, measured on the
  bf16-logits row, which returns what the reference returns)."""
  ref = {r.get("kind"): r for r in rows
         if str(r.get("framework", "")).startswith("torch") and "error" not in r}
  for r in rows:
    if r.get("framework") != "idlm_jax" or r.get("kind") not in ref:
      continue
    t = ref[r["kind"]]
    if r["kind"] == "train" and r.get("tokens_per_s") and t.get("tokens_per_s"):
      r["x_torch_tokens_per_s"] = r["tokens_per_s"] / t["tokens_per_s"]
    elif r["kind"] == "fwd" and r.get("call_ms_median") and t.get("call_ms_median"):
      r["x_torch_latency"] = r["call_ms_median"] / t["call_ms_median"]


def markdown(rows: list, info: dict, cfg) -> str:
  """Results table of one run."""
  m = cfg.model
  text = common.header_markdown("DDiT train step and forward throughput", info)
  text += (f"Model: d={m.hidden_size}, {m.n_blocks} blocks, {m.n_heads} heads, dtype "
           f"{m.dtype}, attention {m.attention}, vocab_pad_multiple {m.vocab_pad_multiple}, "
           f"remat {m.remat}. MFU = (6 N + 12 n_layers L d) tokens / step time / "
           f"{common.peak_tflops()} TFLOP/s (forward: 2 N + 4 n_layers L d), N without "
           f"vocabulary padding. Median of the timed repetitions after warm-up. "
           "Objectives: teacher = MDLM pretraining (loss_chunk: model.loss_chunk); idlm = "
           "distill.fake_steps fake updates + one student update, each on its own batch "
           "(batches/step = fake_steps + 1); didi = discriminator + student update on B real "
           "rows x distill.didi.group_size rollouts (1 batch). tokens/s = batches/step x B x L "
           "/ step time; x teacher = step time / the teacher step's (per token: time per "
           "consumed token / the teacher's); TFLOP/s and MFU count the teacher's FLOPs per "
           "data token (meaningful on the teacher row only). x PyTorch: tokens/s over the "
           "reference's (train, > 1 faster) or latency over the reference's (forward, < 1 "
           "faster; the reference returns bf16 logits).\n\n"
           "| framework | kind | objective | L | B | batches/step | tokens/s | ms (median / mean) "
           "| x teacher (step / per token) | x PyTorch | TFLOP/s | MFU | peak GiB (device) | "
           "compiled GiB (args+out+temp-alias) | temp GiB |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
  for r in rows:
    if "error" in r:
      text += f"| {r.get('framework')} | error: {r['error'][:80]!r} |\n"
      continue
    med = r.get("step_ms_median", r.get("call_ms_median"))
    mean = r.get("step_ms", r.get("call_ms"))
    ratio = (f"{r['x_teacher_step']:.2f} / {r['x_teacher_per_token']:.2f}"
             if "x_teacher_step" in r else "-")
    objective = r.get("objective", "-")
    if r.get("logits_dtype"):
      objective = f"{r['logits_dtype']} logits"
    if r.get("loss_chunk"):
      objective += f" (loss_chunk {r['loss_chunk']})"
    if "group_size" in r:
      objective += f" (G={r['group_size']}, {r['rollout_rows']} rollouts)"
    if r.get("microbatches", 1) > 1:
      objective += f" ({r['microbatches']} microbatches)"
    mem = r.get("compiled_mem", {})
    text += (f"| {r.get('framework')} | {r.get('kind')} | {objective} | {r.get('L')} | "
             f"{r.get('B')} | {r.get('batches_per_step', '-')} | "
             f"{common.fmt(r.get('tokens_per_s'))} | {common.fmt(med)} / {common.fmt(mean)} | "
             f"{ratio} | "
             f"{common.fmt(r.get('x_torch_tokens_per_s', r.get('x_torch_latency')), 2)} | "
             f"{common.fmt(r.get('tflops'))} | "
             f"{common.fmt(100 * r.get('mfu', float('nan')))}% | "
             f"{common.fmt(r.get('peak_mem_gib'), 2)} | {common.fmt(mem.get('total_gib'), 3)} | "
             f"{common.fmt(mem.get('temp_gib'), 3)} |\n")
  return text


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/mdlm_owt.py")
  ap.add_argument("--set", action="append", default=[], help="config override field=value")
  ap.add_argument("--L", type=int, default=1024)
  ap.add_argument("--B", type=int, default=32)
  ap.add_argument("--fwd-B", type=int, default=64)
  ap.add_argument("--fwd-L", type=int, default=1024)
  ap.add_argument("--fwd-logits", default="float32,compute",
                  help='forward rows: "float32" logits and/or "compute" (the compute dtype\'s, '
                  "as the PyTorch reference returns)")
  ap.add_argument("--steps", type=int, default=20, help="timed repetitions")
  ap.add_argument("--warmup", type=int, default=3, help="untimed calls, compilation included")
  ap.add_argument("--mode", choices=["train", "fwd", "both"], default="both")
  ap.add_argument("--vocab-pad", type=int, default=None,
                  help="model.vocab_pad_multiple (default: the config's, 128)")
  ap.add_argument("--remat", choices=["none", "block"], default=None,
                  help="model.remat (default: the config's, none)")
  ap.add_argument("--objectives", default=",".join(OBJECTIVES),
                  help="train steps to time, comma-separated from teacher,idlm,didi (ratios "
                       "to the teacher step need 'teacher')")
  ap.add_argument("--loss-chunk", type=int, default=None,
                  help="model.loss_chunk of the teacher step (default: the config's, 0 = off)")
  ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device")
  ap.add_argument("--devices", type=int, default=0,
                  help="train steps on a mesh of the first N devices (0: all)")
  ap.add_argument("--torch-ref", default=None, help="path to ddit_torch_reference.py")
  ap.add_argument("--torch-rows", default=None,
                  help="a JSON file of the reference's rows from an earlier run in the same "
                  "device session (gpu_campaign.py runs it before JAX takes the GPU)")
  ap.add_argument("--microbatches", default="", type=parse_microbatches,
                  help="per step, e.g. didi=2: train.microbatches (exact gradient "
                  "accumulation) of that objective's step, to fit one device's memory")
  ap.add_argument("--json", default=None, help="append results (JSON lines) here")
  ap.add_argument("--out", default=None,
                  help="folder for <stem>.jsonl + <stem>.md (e.g. benchmarks/results)")
  return ap.parse_args(argv)


def objective_overrides(name: str, args) -> list:
  """Config overrides of one benchmarked train step: the objective, no dropout (as the PyTorch
  reference), the user's --set, then the performance flags. The DiDi step never chunks the
  loss (model.loss_chunk is MDLM pretraining's and IDLM-MDLM's); distillation steps name a
  teacher they never load."""
  objective = {"teacher": "diffusion", "idlm": "idlm", "didi": "didi"}[name]
  out = [f"objective={objective}", "model.dropout=0.0"]
  if name != "teacher":
    out.append("distill.teacher=random-init")
  out += args.set
  if args.vocab_pad is not None:
    out.append(f"model.vocab_pad_multiple={args.vocab_pad}")
  if args.remat is not None:
    out.append(f"model.remat={args.remat}")
  if name == "didi":
    out.append("model.loss_chunk=0")
  elif args.loss_chunk is not None:
    out.append(f"model.loss_chunk={args.loss_chunk}")
  if name in args.microbatches:
    out.append(f"train.microbatches={args.microbatches[name]}")
  return out


def parse_microbatches(text: str) -> dict:
  """'didi=2,idlm=1' -> {"didi": 2, "idlm": 1} (train.microbatches per benchmarked step)."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(","))):
    name, _, k = item.partition("=")
    if name not in OBJECTIVES or not k.isdigit() or int(k) < 1:
      raise SystemExit(f"--microbatches: expected NAME=K with NAME in {OBJECTIVES}, got {item!r}")
    out[name] = int(k)
  return out


def bench_with_fallback(name: str, spec: str, args, devices) -> list:
  """bench_objective's row for `name`; a failure becomes an error row (the section's other
  rows survive), and an out-of-memory one is retried with twice the microbatches while they
  divide B (the plans are estimates: docs/scaling.md), each failed try kept as a row."""
  rows, extra = [], []
  while True:
    cfg = config_lib.load_config(spec, objective_overrides(name, args) + extra)
    k = cfg.train.microbatches
    try:
      rows.append(bench_objective(name, cfg, args.L, args.B, args.steps, args.warmup, devices))
    except Exception as e:  # noqa: BLE001  (out of memory on a device: record, go on)
      if args.smoke:
        raise
      rows.append(dict(kind="train", objective=name, L=args.L, B=args.B, microbatches=k,
                       error=f"{type(e).__name__}: {str(e)[:400]}"))
      print(f"{name}: FAILED at {k} microbatch(es): {rows[-1]['error'][:200]}", flush=True)
      if retry_with_more_microbatches(rows[-1]["error"], args.B, k):
        extra = [f"train.microbatches={2 * k}"]
        gc.collect()  # the failed try's buffers
        continue
      return rows
    print(f"{name}: {rows[-1]['step_ms_median']:.1f} ms/step, "
          f"{rows[-1]['batches_per_step']} batch(es)/step, {k} microbatch(es)", flush=True)
    return rows


def retry_with_more_microbatches(error: str, B: int, k: int) -> bool:
  """Whether a step that failed with `error` at k microbatches runs again at 2k: XLA ran out
  of memory (compiling or running) and 2k divides B."""
  return common.out_of_memory(error) and B % (2 * k) == 0


def main(argv=None) -> list:
  """Run the benchmark; returns the result rows (also printed, and written if asked)."""
  args = parse_args(argv)
  spec = args.config + (":smoke" if args.smoke else "")
  objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
  unknown = set(objectives) - set(OBJECTIVES)
  if unknown:
    raise SystemExit(f"--objectives: unknown {sorted(unknown)}, expected some of {OBJECTIVES}")
  if args.smoke:
    args.L, args.B, args.fwd_L, args.fwd_B, args.steps, args.warmup = 32, 8, 32, 8, 3, 1
  cfg = config_lib.load_config(spec, objective_overrides("teacher", args))
  # the PyTorch reference runs first, in its own process, before JAX takes the GPU's memory
  torch_results = (torch_reference(args.torch_ref, args.L, args.B, args.fwd_B, args.fwd_L,
                                   cfg_vocab(cfg), args.steps) if args.torch_ref else [])
  if args.torch_rows:
    torch_results += json.loads(pathlib.Path(args.torch_rows).read_text())
  info = common.run_info(__file__, argv)
  print(f"jax {jax.__version__} device={info['device']} x{jax.device_count()} config={spec} "
        f"dtype={cfg.model.dtype} attention={cfg.model.attention} "
        f"vocab_pad={cfg.model.vocab_pad_multiple} remat={cfg.model.remat}", flush=True)
  rows = []
  if args.mode in ("train", "both"):
    devices = jax.devices()[:args.devices] if args.devices else None
    for name in objectives:
      rows += bench_with_fallback(name, spec, args, devices)
    add_ratios(rows)
  if args.mode in ("fwd", "both"):
    for logits in [v.strip() for v in args.fwd_logits.split(",") if v.strip()]:
      try:
        rows.append(bench_fwd(cfg, args.fwd_L, args.fwd_B, args.steps, args.warmup, logits))
      except Exception as e:  # noqa: BLE001  (as the train steps: record, go on)
        if args.smoke:
          raise
        rows.append(dict(kind="fwd", L=args.fwd_L, B=args.fwd_B, logits=logits,
                         error=f"{type(e).__name__}: {str(e)[:400]}"))
  for r in rows:
    r.update(framework="idlm_jax", device=info["device"], version=jax.__version__,
             dtype=cfg.model.dtype, vocab_pad_multiple=cfg.model.vocab_pad_multiple,
             remat=cfg.model.remat, config=spec)
  rows += torch_results
  add_torch_ratios(rows)
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
