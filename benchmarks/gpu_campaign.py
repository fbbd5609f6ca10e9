"""The prepared GPU campaign of issue #16: two device calls, every number in one JSONL file.

  python benchmarks/gpu_campaign.py --part=1 --out=$OUT --carry=.campaign --budget-s=420
  python benchmarks/gpu_campaign.py --part=2 --out=$OUT --carry=.campaign --budget-s=400
  python benchmarks/gpu_campaign.py --part=all --smoke --out=/tmp/campaign   # CPU, tiny

Part 1 (speed, random weights):
  throughput  DiT small (169.6M, GPT-2 vocabulary, bf16) at L=1024, B=32: the teacher (MDLM),
              IDLM and DiDi train steps (tokens/s, MFU, peak memory, ratio to the teacher
              step) and the forward call at B=64 returning bf16 logits (as the reference's
              does; benchmarks/train_throughput.py), with the PyTorch +
              torch.compile reference run first by the same python (--torch-ref); every
              idlm_jax row gets its ratio to the reference, and the Markdown opens with the
              part-4 targets (best variant of each, met or not).
  attention   the teacher step and forward with model.attention="xla" (the default, "auto",
              is cuDNN flash attention on a GPU in bf16: the throughput rows).
  xla_flags   the teacher step and forward in a fresh process per XLA_FLAGS variant.
  loss_chunk  the teacher and IDLM steps with model.loss_chunk=128 (no [B, L, V] tensor beyond
              128 positions; diffusion/chunks.py): the memory it saves on the device and
              what its extra output projections cost.
  profile     a jax.profiler trace of 3 teacher steps, summarised: device time per op
              category and the top ops (the trace itself stays on the device).
  generation  64 x 1024 tokens: the teacher sampler at 1024 steps (cache on) vs 16 and 4
              steps (benchmarks/generation_speed.py): wall clock and NFE.
Part 2 (quality on real text, benchmarks/campaign_carry.py prepares the data):
  text        an MDLM teacher (DiT 384 x 8, GPT-2 vocabulary, ~50M parameters, L=256) on the
              teacher half of the public-domain corpora, a GPT-2-architecture evaluator on the
              other half (disjoint documents), IDLM distillation of the teacher, then the
              distillation report: the teacher at 1024/256/64/16 steps vs the student at
              16/8/4, Gen PPL under that evaluator, entropy, distinct-4 (the report's metrics),
              256 samples per cell, float64 draws, and the teacher's validation NELBO.
              Each stage trains for a fixed number of minutes (train.max_minutes), so the
              part fits its budget whatever the GPU's speed.

On a device the driver never initialises the GPU: the PyTorch reference runs first, then
every section runs in a python process of its own (`--isolate`, default on unless
--smoke), so that each finds the whole card free (JAX keeps what it preallocates until its
process ends). Every section checks the time left (--budget-s, from the start of the script)
against its estimate before it starts and is skipped with a row saying so; rows are appended to
<out>/gpu_campaign_<device>_<date>.jsonl as soon as they exist and <out>/..md is regenerated
after every section, so a call that runs out of time still returns what it measured.
`--smoke` runs every section on a CPU with tiny shapes (tests/benchmarks/test_gpu_campaign.py).
"""

import argparse
import gzip
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
# JAX preallocates 75% of the GPU at its first device call by default; the PyTorch reference
# runs (and exits) before that (torch_first), so this process may take more: the DiDi step
# at B=32 and the IDLM step hold three or four DiT smalls with optimizer state
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
# one compilation cache for the sections' processes: the profile's teacher step is the
# throughput section's, compiled once
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/idlm_campaign/jax_cache")

import jax  # noqa: E402

from benchmarks import common, generation_speed, train_throughput  # noqa: E402
from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import main as idlm_main  # noqa: E402
from idlm_jax import export, models  # noqa: E402
from idlm_jax.train import parallel  # noqa: E402

TORCH_REF = "torch/ddit_torch_reference.py"  # inside the carry folder (campaign_carry.py)
XLA_FLAG_VARIANTS = {
    "latency_hiding": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "no_command_buffer": "--xla_gpu_enable_command_buffer=",
    "triton_gemm_off": "--xla_gpu_enable_triton_gemm=false",
}
# seconds each section needs on an H100/H200 (compiles included), from the H100 run of
# 2026-11-22 (teacher step 98 ms, forward 63 ms, first step 23 s) scaled by FLOPs
ESTIMATE_S = {"throughput": 170, "attention": 45, "xla_flags": 40, "profile": 40,
              "generation": 160, "loss_chunk": 70, "text": 300}
PARTS = {"1": ("throughput", "profile", "generation", "attention", "xla_flags", "loss_chunk"),
         "2": ("text",)}
REPORT_MIN = 3.0  # minutes kept for part 2's distillation report
TEXT_STEPS = dict(teacher_steps="1024,256,64,16", student_steps="16,8,4")


# ------------------------------------------------------------------ output

class Recorder:
  """Appends rows (with the run info) to the campaign's JSONL and rewrites its Markdown.

  `resume=True` (a section's own process) starts from the rows already in the file, so that
  its ratios find the PyTorch rows and its Markdown holds every section; `reload()` rereads
  the file after such a process has appended to it."""

  def __init__(self, out: str, info: dict, stem: str = "", resume: bool = False):
    self.info, self.rows = info, []
    self.stem = stem or common.file_stem("gpu_campaign", info)
    self.dir = pathlib.Path(out)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.jsonl, self.md = self.dir / f"{self.stem}.jsonl", self.dir / f"{self.stem}.md"
    if resume:
      self.reload()

  def reload(self) -> None:
    self.rows = read_rows(self.jsonl)
    if self.rows:
      self.md.write_text(markdown(self.rows, self.info))

  def add(self, section: str, rows: list) -> None:
    # ratios to the PyTorch reference's rows of this call (the throughput section runs it
    # first, so the attention and xla_flags variants get theirs too)
    rows = [{"section": section, **r} for r in rows]
    train_throughput.add_torch_ratios(self.rows + rows)
    with open(self.jsonl, "a") as f:
      for r in rows:
        self.rows.append(r)
        f.write(json.dumps({**self.info, **r}, default=str) + "\n")
    self.md.write_text(markdown(self.rows, self.info))


def read_rows(path: pathlib.Path) -> list:
  """The rows of a campaign JSONL (none when it does not exist)."""
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markdown(rows: list, info: dict) -> str:
  """The campaign's tables from its rows (also `python benchmarks/gpu_campaign.py
  --table=<jsonl>`)."""
  text = common.header_markdown("GPU campaign (issue #16)", info)
  speed = [r for r in rows if r.get("kind") in ("train", "fwd")]
  if speed:
    text += targets_markdown(rows)
    text += ("## Train steps and forward (DiT small, GPT-2 vocabulary, bf16)\n\n"
             "x PyTorch: tokens/s over the reference's (train) or latency over the reference's "
             "(forward; the reference returns bf16 logits).\n\n"
             "| section | variant | framework | kind | objective | L | B | tokens/s | ms "
             "(median) | x teacher step | x PyTorch | MFU | peak GiB |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in speed:
      ms = r.get("step_ms_median", r.get("call_ms_median"))
      mfu = r.get("mfu", r.get("mfu_brief"))
      objective = (f"{r['logits_dtype']} logits" if r.get("logits_dtype")
                   else r.get("objective", "-"))
      if r.get("microbatches", 1) > 1:
        objective += f" ({r['microbatches']} microbatches)"
      text += (f"| {r['section']} | {r.get('variant', '-')} | {r.get('framework')} | "
               f"{r['kind']} | {objective} | {r.get('L')} | {r.get('B')} | "
               f"{common.fmt(r.get('tokens_per_s'))} | {common.fmt(ms, 2)} | "
               f"{common.fmt(r.get('x_teacher_step'), 2)} | "
               f"{common.fmt(r.get('x_torch_tokens_per_s', r.get('x_torch_latency')), 2)} | "
               f"{common.fmt(None if mfu is None else 100 * mfu)}% | "
               f"{common.fmt(r.get('peak_mem_gib'), 2)} |\n")
  gen = [r for r in rows if r.get("section") == "generation" and "nfe" in r]
  if gen:
    text += ("\n## Generation (random weights)\n\n| role | steps | B | L | NFE | s / batch | "
             "speed-up vs teacher |\n|---|---|---|---|---|---|---|\n")
    for r in gen:
      text += (f"| {r.get('role')} | {r.get('steps')} | {r.get('B')} | {r.get('L')} | "
               f"{common.fmt(r.get('nfe'))} | {common.fmt(r.get('seconds'), 3)} | "
               f"{common.fmt(r.get('speedup_vs_teacher'), 2)} |\n")
  prof = [r for r in rows if r.get("section") == "profile" and "top" in r]
  for r in prof:
    text += (f"\n## Profile: {r['what']} ({r['device_ms_per_step']:.1f} ms of device ops per "
             "step)\n\n| op category | ms per step | share |\n|---|---|---|\n")
    for name, ms in r["by_category"]:
      text += f"| {name} | {ms:.2f} | {ms / r['device_ms_per_step']:.1%} |\n"
    text += "\n| top op | ms per step |\n|---|---|\n"
    for name, ms in r["top"][:12]:
      text += f"| `{name[:70]}` | {ms:.2f} |\n"
  quality = [r for r in rows if r.get("section") == "text" and "role" in r]
  if quality:
    text += ("\n## Real text: teacher vs IDLM student\n\n| role | steps | Gen PPL | entropy | "
             "distinct-4 | samples |\n|---|---|---|---|---|---|\n")
    for r in quality:
      text += (f"| {r['role']} | {r.get('steps', '-')} | {common.fmt(r.get('gen_ppl'), 2)} | "
               f"{common.fmt(r.get('entropy'), 3)} | {common.fmt(r.get('distinct_4'), 3)} | "
               f"{r.get('num_samples', '-')} |\n")
  stages = [r for r in rows if r.get("section") == "text" and "params" in r]
  for r in stages:
    text += (f"\n- {r['stage']}: {r.get('params', 0) / 1e6:.1f}M parameters, "
             f"{r.get('steps')} steps in {r.get('minutes', 0):.1f} min, validation "
             f"{r.get('val_metric', 'NELBO')} {common.fmt(r.get('val_nelbo'), 4)} nats/token")
  text += memory_markdown(rows)
  skipped = [r for r in rows if "skipped" in r or "error" in r]
  if skipped:
    text += "\n\n## Skipped or failed\n\n"
    for r in skipped:
      text += f"- {r['section']} {r.get('variant', '')}: {r.get('skipped', r.get('error'))}\n"
  return text


# issue #16 part 4: (name, row filter, ratio key, comparison, bound)
TARGETS = (
    ("teacher step tokens/s vs PyTorch + torch.compile",
     lambda r: r.get("kind") == "train" and r.get("objective") == "teacher",
     "x_torch_tokens_per_s", ">=", 1.2),
    ("forward latency vs PyTorch + torch.compile (logits in the compute dtype, as its)",
     lambda r: r.get("kind") == "fwd" and r.get("logits") == "compute",
     "x_torch_latency", "<=", 0.85),
    ("IDLM step / teacher step", lambda r: r.get("objective") == "idlm", "x_teacher_step",
     "<=", 3.2),
    ("DiDi step (G=4) / teacher step", lambda r: r.get("objective") == "didi",
     "x_teacher_step", "<=", 6.0),
)


def targets_markdown(rows: list) -> str:
  """Issue #16 part 4's targets: the best measured variant of each, met or not."""
  text = ("## Targets (issue #16 part 4): the best variant measured\n\n| target | bound | "
          "best | variant (section) | met |\n|---|---|---|---|---|\n")
  for name, keep, key, op, bound in TARGETS:
    cands = [r for r in rows if r.get("framework") == "idlm_jax" and keep(r) and key in r]
    if not cands:
      text += f"| {name} | {op} {bound} | not measured | - | - |\n"
      continue
    best = (max if op == ">=" else min)(cands, key=lambda r: r[key])
    met = best[key] >= bound if op == ">=" else best[key] <= bound
    text += (f"| {name} | {op} {bound} | {best[key]:.3f} | {best.get('variant', '-')} "
             f"({best['section']}) | {'yes' if met else 'no'} |\n")
  return text + "\n"


# ------------------------------------------------------------------ part 1

def throughput_argv(args, *extra) -> list:
  """train_throughput arguments of the campaign's shapes (tiny ones under --smoke)."""
  # the forward returns logits in the compute dtype (bf16), as the PyTorch reference's does
  # (the float32-logits forward was measured on 2026-11-22, h100.md)
  argv = ["--config=configs/mdlm_owt.py", "--L", "1024", "--B", "32", "--fwd-B", "64",
          "--fwd-L", "1024", "--steps", str(args.steps), "--warmup", "3",
          "--fwd-logits=compute"]
  # smoke: one CPU device and the demo vocabulary (the GPU has one device; GPT-2's 50257
  # classes only slow the CPU's float64 draws)
  smoke = ["--smoke", "--devices", "1", "--set", "data.tokenizer=demo-bpe-2048"]
  return argv + (smoke if args.smoke else []) + list(extra)


def torch_first(args) -> pathlib.Path:
  """Run the PyTorch reference at the campaign's shapes before this process touches the GPU
  (JAX preallocates most of its memory at its first device call, which left the reference
  too little on an 80 GB card); its rows go to a file that the throughput section reads.
  The reference's own subprocess, the python of the device (torch.compile)."""
  ref, path = pathlib.Path(args.carry) / TORCH_REF, pathlib.Path(args.work) / "torch_rows.json"
  path.unlink(missing_ok=True)
  if ref.is_file() and not args.smoke:
    t0 = time.time()
    cfg = config_lib.load_config("configs/mdlm_owt.py")
    rows = train_throughput.torch_reference(str(ref), 1024, 32, 64, 1024,
                                            train_throughput.cfg_vocab(cfg), args.steps)
    path.write_text(json.dumps(rows))
    print(f"PyTorch reference: {time.time() - t0:.0f} s", flush=True)
  return path


LOSS_CHUNK = 128  # model.loss_chunk of the loss_chunk section


def plan_path(name: str) -> pathlib.Path:
  """The committed memory plan of a campaign step at L=1024, B=32 on one device
  (benchmarks/plan.py, remat none; docs/scaling.md): name "idlm", "didi", "idlm_chunk128"."""
  return ROOT / "benchmarks" / "results" / "plans" / f"campaign_{name}_b32_1gpu.json"


# the distillation steps whose microbatches --microbatches=auto plans
CAMPAIGN_PLANS = {name: plan_path(name) for name in ("idlm", "didi")}


def plan_name(row: dict) -> str:
  """The plan of a measured train row: its objective, with _chunk<N> under model.loss_chunk."""
  chunk = row.get("loss_chunk") or 0
  return f"{row.get('objective')}_chunk{chunk}" if chunk else str(row.get("objective"))


def planned_gib(name: str, B: int, microbatches: int):
  """The committed plan's GiB for `name`'s step at B rows in `microbatches` passes (None
  without a plan): a full-depth compile (`--check`) at that row count when it has one, else
  the extrapolation from the 1-2 block probes."""
  path = plan_path(name)
  if not path.is_file():
    return None
  plan = json.loads(path.read_text())
  rows, chosen = B // max(microbatches, 1), plan["chosen"]
  if chosen["remat"] == "none":
    compiles = chosen.get("checks") or ([chosen["check"]] if chosen.get("check") else [])
    hit = [c for c in compiles if c.get("rows", chosen["rows_per_device"]) == rows]
    if hit:
      return hit[0]["calibrated_gib"]
  st = next(st for st in plan["settings"] if st["remat"] == "none")
  return st["gib_fixed"] + rows * st["gib_per_row"]


def memory_markdown(rows: list) -> str:
  """The planner checked on the device: each distillation step's planned GiB (CPU compile,
  calibrated on the 2026-11-22 teacher step) against the device's measured peak."""
  out = []
  for r in rows:
    if (r.get("framework") == "idlm_jax" and r.get("kind") == "train"
        and r.get("peak_mem_gib") and r.get("section") in ("throughput", "loss_chunk")):
      plan = planned_gib(plan_name(r), r.get("B", 0), r.get("microbatches", 1))
      if plan is not None:
        out.append(f"| {plan_name(r)} | {r['B']} | {r.get('microbatches', 1)} | {plan:.1f} | "
                   f"{r['peak_mem_gib']:.1f} | {r['peak_mem_gib'] / plan:.2f} |")
  if not out:
    return ""
  return ("\n## Memory: plan vs device\n\nPlanned: `benchmarks/results/plans/campaign_*_b32_"
          "1gpu.json` (XLA:CPU compiles, temporaries x the H100 calibration); measured: the "
          "device's peak bytes in use in the section's process so far (the teacher, IDLM and "
          "DiDi steps run in that order, each planned larger than the last, so each row's peak "
          "is its own step's; the loss_chunk section's process runs its teacher and IDLM "
          "steps).\n\n| step | B | microbatches | "
          "planned GiB | peak GiB | measured / planned |\n|---|---|---|---|---|---|\n"
          + "\n".join(out) + "\n")


def planned_microbatches(memory_gib, B: int = 32, headroom: float = 0.2) -> str:
  """train_throughput's --microbatches for a device of `memory_gib` (None: no limit known, as
  on a CPU): for each planned step, the fewest microbatches k (k divides B) whose planned
  memory (`planned_gib`: the full-depth compile at the plan's chosen rows, else the
  extrapolation) fits (1 - headroom) of it; 20% headroom because the plans are CPU compiles
  calibrated on one GPU measurement (docs/scaling.md), and a step that still runs out of
  memory is measured again at 2k (train_throughput.bench_with_fallback). The DiDi step at
  B=32 extrapolates to ~122 GiB in one pass and compiles to 57 GiB at k = 2: k = 2 on an
  H100 (73 GiB usable) and on an H200 (128); the IDLM step compiles to 57 GiB in one pass."""
  if not memory_gib:
    return ""
  out = []
  for name in CAMPAIGN_PLANS:
    k = next((k for k in range(1, B + 1)
              if B % k == 0 and planned_gib(name, B, k) <= (1 - headroom) * memory_gib), B)
    if k > 1:
      out.append(f"{name}={k}")
  return ",".join(out)


def section_throughput(args, rec: Recorder) -> None:
  """Teacher, IDLM and DiDi steps and the forward call, with the PyTorch reference's rows
  (run first, `torch_first`)."""
  ref, torch_rows = pathlib.Path(args.carry) / TORCH_REF, pathlib.Path(args.work) / "torch_rows.json"
  extra = []
  if not ref.is_file():
    rec.add("throughput", [{"variant": "torch", "skipped": f"no {ref} (campaign_carry.py)"}])
  elif args.smoke and importlib.util.find_spec("torch") is None:  # the README's test install
    rec.add("throughput", [{"variant": "torch smoke", "skipped": "PyTorch is not installed"}])
  elif args.smoke:  # the reference's own CPU smoke shapes (no torch.compile)
    rec.add("throughput", [dict(r, variant="torch smoke") for r in torch_smoke(ref)])
  elif torch_rows.is_file():
    extra = ["--torch-rows", str(torch_rows)]
  micro = (planned_microbatches(common.device_limit_gib()) if args.microbatches == "auto"
           else args.microbatches)
  extra += ["--microbatches", micro] if micro else []
  rows = train_throughput.main(throughput_argv(args, *extra))
  for r in rows:
    r["variant"] = "default"
  rec.add("throughput", rows)
  ours = [r for r in rows if r.get("framework") == "idlm_jax"]
  if ours and all("error" in r for r in ours):  # e.g. cuDNN attention refused: XLA's instead
    rows = train_throughput.main(throughput_argv(
        args, *extra, "--set", "model.attention=xla"))
    rec.add("throughput", [dict(r, variant="attention=xla (the default failed)") for r in rows
                           if r.get("framework") == "idlm_jax"])


def torch_smoke(ref: pathlib.Path) -> list:
  """The PyTorch reference at its tiny CPU shapes (--tiny --no-compile), its RESULTS rows."""
  out = subprocess.run([sys.executable, str(ref), "--tiny", "--L", "32", "--B", "2", "--steps",
                        "2", "--warmup", "1", "--sdpa", "default", "--no-compile", "--mode",
                        "both", "--fwd-B", "2", "--fwd-L", "32"], capture_output=True, text=True)
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULTS ")]
  if out.returncode or not line:
    return [{"framework": "torch", "error": out.stderr[-500:]}]
  return json.loads(line[0][len("RESULTS "):])


def section_attention(args, rec: Recorder) -> None:
  """The teacher step and the forward call with XLA's attention: the default ("auto") is
  cuDNN's flash attention on a GPU in bf16 (models/layers.attention_implementation), which
  the throughput section measures."""
  kinds = ("xla",)
  for kind in kinds:
    try:
      rows = train_throughput.main(throughput_argv(
          args, "--objectives=teacher", "--set", f"model.attention={kind}"))
    except Exception as e:  # noqa: BLE001  (cuDNN may refuse a shape: record, go on)
      rows = [{"error": f"{type(e).__name__}: {str(e)[:300]}"}]
    for r in rows:
      r["variant"] = f"attention={kind}"
    rec.add("attention", rows)


def section_loss_chunk(args, rec: Recorder) -> None:
  """The teacher and IDLM steps with model.loss_chunk=LOSS_CHUNK, in one pass (its plan:
  campaign_idlm_chunk128_b32_1gpu.json): the device's peak memory and the step times, against
  the throughput section's unchunked rows."""
  rows = train_throughput.main(throughput_argv(
      args, "--objectives=teacher,idlm", "--mode", "train", "--loss-chunk", str(LOSS_CHUNK)))
  for r in rows:
    r["variant"] = f"loss_chunk={LOSS_CHUNK}"
  rec.add("loss_chunk", rows)


def section_xla_flags(args, rec: Recorder, deadline: float) -> None:
  """The teacher step and forward in a fresh process per XLA_FLAGS variant (flags are read
  once, when XLA starts)."""
  variants = {"cpu_noop": ""} if args.smoke else XLA_FLAG_VARIANTS
  for name, flags in variants.items():
    if time.time() + ESTIMATE_S["xla_flags"] > deadline:
      rec.add("xla_flags", [{"variant": name, "skipped": "budget"}])
      continue
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
    json_path = pathlib.Path(args.out) / f"xla_flags_{name}.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"),
           *throughput_argv(args, "--objectives=teacher", "--json", str(json_path))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(ROOT),
                          timeout=max(deadline - time.time(), 10))
    if proc.returncode or not json_path.is_file():
      rows = [{"error": proc.stderr[-400:]}]
    else:
      rows = [json.loads(line) for line in json_path.read_text().splitlines()]
      json_path.unlink()
    for r in rows:
      r.update(variant=name, xla_flags=flags)
    rec.add("xla_flags", rows)


def summarise_trace(trace_dir: pathlib.Path, steps: int) -> dict:
  """Device time per op category and the top ops of a jax.profiler trace (its Perfetto
  JSON): events on the device streams, milliseconds per step."""
  files = sorted(trace_dir.rglob("*.trace.json.gz"))
  if not files:
    return {"error": f"no *.trace.json.gz under {trace_dir}"}
  with gzip.open(files[-1], "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
           for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
  pids = {e.get("pid"): e.get("args", {}).get("name", "")
          for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {p for p, n in pids.items() if "/device:" in n and "CPU" not in n.upper()}
  on_device = [e for e in events if e.get("ph") == "X" and (
      e.get("pid") in device_pids if device_pids else
      "stream" in names.get((e.get("pid"), e.get("tid")), "").lower())]
  if not on_device:  # a CPU run: the host threads' XLA ops
    on_device = [e for e in events if e.get("ph") == "X"]
  per_op, per_cat = {}, {}
  for e in on_device:
    ms = e.get("dur", 0) / 1e3 / steps
    per_op[e["name"]] = per_op.get(e["name"], 0.0) + ms
    cat = op_category(e["name"])
    per_cat[cat] = per_cat.get(cat, 0.0) + ms
  total = sum(per_cat.values())
  return dict(device_ms_per_step=total, events=len(on_device), device_streams=len(device_pids),
              by_category=sorted(per_cat.items(), key=lambda kv: -kv[1]),
              top=sorted(per_op.items(), key=lambda kv: -kv[1])[:25])


def op_category(name: str) -> str:
  """A coarse kind of a device op from its kernel or HLO name."""
  n = name.lower()
  for key, cat in (("flash", "attention"), ("fmha", "attention"), ("cudnn", "attention"),
                   ("attention", "attention"), ("gemm", "matmul"), ("cublas", "matmul"),
                   ("dot", "matmul"), ("sm90", "matmul"), ("nvjet", "matmul"),
                   ("triton", "fusion (triton)"), ("all-reduce", "collective"),
                   ("nccl", "collective"), ("memcpy", "copy"), ("copy", "copy"),
                   ("reduce", "reduction"), ("fusion", "fusion"), ("rng", "random"),
                   ("sort", "sort")):
    if key in n:
      return cat
  return "other"


def section_profile(args, rec: Recorder) -> None:
  """A trace of 3 teacher steps after warm-up, summarised (the trace is not kept)."""
  cfg = config_lib.load_config("configs/mdlm_owt.py" + (":smoke" if args.smoke else ""),
                               train_throughput.objective_overrides(
                                   "teacher", train_throughput.parse_args([])))
  L, B = (32, 8) if args.smoke else (1024, 32)
  step, state, inputs, mesh = train_throughput.teacher_train_step(cfg, L, B)
  trace_dir = pathlib.Path(args.work) / "trace"
  shutil.rmtree(trace_dir, ignore_errors=True)

  with parallel.mesh_context(mesh):
    step = step.lower(state, inputs).compile()
    for _ in range(3):
      state, metrics = step(state, inputs)
    jax.block_until_ready(metrics)
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
      for _ in range(3):
        state, metrics = step(state, inputs)
      jax.block_until_ready(metrics)
  row = summarise_trace(trace_dir, 3)
  row["what"] = f"MDLM teacher step, L={L}, B={B}"
  rec.add("profile", [row])


def section_generation(args, rec: Recorder) -> None:
  """64 x 1024 tokens: teacher at 1024 steps (cache on) vs 16 and 4 steps."""
  # one timed run each, no warm-up run (compiled ahead of time): the 1024-step teacher run is
  # ~1000 network calls and float64 draws over 64 x 1024 x 50258, ~2 minutes
  argv = ["--B", "64", "--L", "1024", "--teacher-steps", "1024", "--student-steps", "16,4",
          "--reps", "1", "--warmup", "0", "--out", str(pathlib.Path(args.work) / "generation")]
  if args.smoke:
    # the 2048-symbol demo vocabulary: float64 draws over GPT-2's 50257 classes made this
    # smoke ~70 s of 2-core time (the paths are the same)
    argv = ["--smoke", "--student-steps", "4", "--reps", "1", "--warmup", "1", "--out",
            str(pathlib.Path(args.work) / "generation"),
            "--set", "data.tokenizer=demo-bpe-2048"]
  try:
    rows = generation_speed.main(argv)
  except Exception as e:  # noqa: BLE001
    # 64 x 1024 x 50258 classes: the float64 draw's temporaries are 4x those of the largest
    # draw measured on a GPU (B=16, L=1024, h100.md); out of memory, 16 rows at a time
    if args.smoke or not common.out_of_memory(str(e)):
      raise
    rec.add("generation", [{"error": f"B=64: {type(e).__name__}: {str(e)[:300]}"}])
    rows = generation_speed.main([a if a != "64" else "16" for a in argv])
    for r in rows:
      r["note"] = "B=64 ran out of memory: B=16, one of the 4 batches of 64 x 1024 tokens"
  rec.add("generation", rows)


# ------------------------------------------------------------------ part 2

def text_dir_of(carry: pathlib.Path) -> pathlib.Path:
  """The carried passage files (campaign_carry.py); the device tokenizes them."""
  src = carry / "text"
  if not src.is_dir():
    raise FileNotFoundError(f"{src}: build the carry folder first "
                            "(python benchmarks/campaign_carry.py)")
  return src


def text_configs(smoke: bool, text_dir: pathlib.Path, cache_dir: str, minutes: dict) -> dict:
  """The three stages' configs (spec, overrides) of the real-text run."""
  data = [f"data.cache_dir={cache_dir}", "data.source=text_files",
          "data.tokenizer=" + ("demo-bpe-2048" if smoke else "gpt2"),  # smoke: small vocabulary
          "data.wrap=True", "data.max_val_rows=0" if not smoke else "data.max_val_rows=32"]
  if smoke:
    size = ["model.hidden_size=32", "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=32",
            "data.seq_len=32"]
    # end-of-training samples at 4 steps: 16 float64 samples at 256 steps over GPT-2's
    # 50257 classes took 10.4 of the smoke's 2-core minutes
    teacher_train = ["train.steps=8", "train.global_batch_size=8", "train.eval_every=0",
                     "ckpt.every=4", "eval.batch_size=8", "sample.steps=4",
                     "sample.num_samples=8", "sample.batch_size=8"]
    ar_size = ["model.hidden_size=32", "model.n_blocks=1", "model.n_heads=2",
               "model.n_positions=32", "data.seq_len=32", "train.steps=8",
               "train.global_batch_size=8", "ckpt.every=4", "eval.batch_size=8"]
    distill = ["train.steps=6", "train.global_batch_size=8", "ckpt.every=3",
               "distill.monitor_every=3", "distill.monitor_steps=2", "distill.monitor_samples=8",
               "distill.report_teacher_steps=8,4", "eval.sampling_steps=4,2",
               "eval.num_samples=8", "eval.batch_size=8", "sample.batch_size=8",
               "sample.steps=4", "sample.num_samples=8",
               "distill.entropy_reference_steps=4"]  # the monitor's teacher entropy
  else:
    size = ["model.hidden_size=384", "model.n_blocks=8", "model.n_heads=6", "model.cond_dim=128",
            "data.seq_len=256"]
    teacher_train = ["train.steps=100000", "train.global_batch_size=256", "train.eval_every=500",
                     "ckpt.every=100000", "eval.batch_size=256", "log.progress_every_s=20"]
    ar_size = ["model.hidden_size=384", "model.n_blocks=8", "model.n_heads=6",
               "model.n_positions=256", "data.seq_len=256", "train.steps=100000",
               "train.global_batch_size=256", "ckpt.every=100000", "eval.batch_size=256",
               "train.eval_every=0"]
    distill = ["train.steps=100000", "train.global_batch_size=128", "ckpt.every=100000",
               "distill.monitor_every=100000", "distill.monitor_steps=16",
               "distill.monitor_samples=64",
               f"distill.report_teacher_steps={TEXT_STEPS['teacher_steps']}",
               f"eval.sampling_steps={TEXT_STEPS['student_steps']}", "eval.num_samples=256",
               # 64 x 256 rows per float64 draw over GPT-2's classes: the size of the largest
               # draw measured on a GPU (16 x 1024, h100.md); 256 rows would be 4x that
               "eval.batch_size=64", "sample.batch_size=64", "optim.lr=1e-4",
               "optim.warmup_steps=50", "optim.ema=0.99"]
  common_ = ["model.dtype=bfloat16" if not smoke else "model.dtype=float32",
             "sample.precision=float64", "model.dropout=0.0"]
  teacher = ("configs/demo_teacher.py", data + [f"data.path={text_dir / 'teacher'}"] + size +
             teacher_train + common_ + [f"train.max_minutes={minutes['teacher']}",
                                        "optim.lr=1e-3", "optim.warmup_steps=200"])
  ar = ("configs/ar_embedded.py", data + [f"data.path={text_dir / 'evaluator'}"] + ar_size +
        common_ + [f"train.max_minutes={minutes['ar']}", "optim.lr=1e-3",
                   "optim.warmup_steps=200"])
  idlm = ("configs/demo_teacher.py", data + [f"data.path={text_dir / 'teacher'}"] + size +
          common_ + ["objective=idlm", "distill.fake_steps=1", "optim.decay=constant",
                     "optim.weight_decay=0.0", "optim.grad_clip=0.0", "distill.best_metric=gen_ppl",
                     f"train.max_minutes={minutes['idlm']}", "train.eval_every=0",
                     "train.sample_every=0"] + distill)
  return dict(teacher=teacher, ar=ar, idlm=idlm)


def run_stage(spec: str, overrides: list, workdir: pathlib.Path):
  """One idlm_jax.main run in this process (the CLI's `run`), its Run object returned."""
  cfg = config_lib.load_config(spec, overrides)
  return idlm_main.run(cfg, str(workdir))


def section_text(args, rec: Recorder, deadline: float) -> None:
  """Teacher, evaluator, IDLM, report (see the module docstring)."""
  carry = pathlib.Path(args.carry)
  text_dir = text_dir_of(carry)
  cache = str(pathlib.Path(args.work) / "tokcache")
  left = (deadline - time.time()) / 60
  # minutes per stage: the report (7 cells x 256 samples in batches of 64, one sampler
  # compile per cell; the 1024-step teacher cell alone ~4 x 1024 float64 draws of 64 x 256 x
  # 50258 at ~12 ms, h100.md) is given 3 minutes
  minutes = (dict(teacher=0.0, ar=0.0, idlm=0.0) if args.smoke else
             dict(teacher=round(0.42 * (left - REPORT_MIN), 2),
                  ar=round(0.2 * (left - REPORT_MIN), 2),
                  idlm=round(0.38 * (left - REPORT_MIN), 2)))
  cfgs = text_configs(args.smoke, text_dir, cache, minutes)
  work = pathlib.Path(args.work)
  rec.add("text", [{"plan_minutes": minutes, "configs": {k: list(v) for k, v in cfgs.items()}}])
  t0 = time.time()
  out = pathlib.Path(args.out)
  teacher = run_stage(*cfgs["teacher"], work / "teacher")
  rec.add("text", [stage_row("teacher (MDLM)", teacher, t0)])
  copy_text_outputs(work, out)  # after every stage: a process killed later keeps these
  t0 = time.time()
  ar = run_stage(*cfgs["ar"], work / "ar")
  rec.add("text", [stage_row("evaluator (AR)", ar, t0, "NLL")])
  copy_text_outputs(work, out)
  spec, ar_overrides = cfgs["ar"]
  card = export.export_evaluator(config_lib.load_config(spec, ar_overrides), str(work / "ar"),
                                 str(work / "evaluator"), "gpu_campaign.py text")
  rec.add("text", [{"stage": "evaluator export", "card": card}])
  spec, overrides = cfgs["idlm"]
  overrides = overrides + [f"distill.teacher={work / 'teacher'}",
                           f"eval.evaluator={work / 'evaluator'}"]
  t0 = time.time()
  student = run_stage(spec, overrides, work / "idlm")
  rec.add("text", [stage_row("IDLM student", student, t0)])
  rec.add("text", report_rows(student.results.get("report", {})))
  copy_text_outputs(work, out)


def stage_row(name: str, run, t0: float, metric: str = "NELBO") -> dict:
  """One training stage: parameters, steps, minutes, validation bound, the last logged
  training metrics (the full history stays in the stage's metrics.jsonl)."""
  res = run.results
  train = res.get("train", {})
  val = res.get("val", {})
  history = train.get("history") or [[None, {}]]
  return dict(stage=name, params=models.count_params(run.state.params),
              steps=train.get("final_step"), minutes=(time.time() - t0) / 60,
              val_nelbo=val.get("nelbo"), val_metric=metric, last_train=history[-1][1])


def report_rows(report: dict) -> list:
  """The distillation report's cells as rows: `role` the sampler (or the held-out data
  row), `num_samples` the samples scored; the report's metrics as they are."""
  rows = [{"role": cell.get("sampler"), "num_samples": cell.get("gen_scored"), **cell}
          for cell in report.get("rows", [])]
  return rows or [{"error": f"no report rows: {sorted(report)}"}]


def copy_text_outputs(work: pathlib.Path, out: pathlib.Path) -> None:
  """Monitor JSONL, report tables and sample text of the run into the output folder."""
  for rel in ("idlm/distill_report/results.md", "idlm/distill_report/results.json",
              "idlm/monitor.jsonl", "teacher/metrics.jsonl", "ar/metrics.jsonl"):
    src = work / rel
    if src.is_file():
      shutil.copyfile(src, out / ("text_" + rel.replace("/", "_")))


# ------------------------------------------------------------------ driver

def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--part", choices=["1", "2", "all"], default="1")
  ap.add_argument("--sections", default="", help="comma-separated subset of the part's")
  ap.add_argument("--out", default="benchmarks/results", help="JSONL + Markdown go here")
  ap.add_argument("--work", default="/tmp/idlm_campaign/work", help="scratch folder")
  ap.add_argument("--carry", default=".campaign", help="the folder campaign_carry.py built")
  ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget")
  ap.add_argument("--steps", type=int, default=10, help="timed steps per throughput row")
  ap.add_argument("--smoke", action="store_true", help="every section, tiny shapes, CPU")
  ap.add_argument("--child", action="store_true",
                  help="internal: one section's own process (see run_section_process)")
  ap.add_argument("--stem", default="", help="internal: the parent's JSONL/Markdown stem")
  ap.add_argument("--info", default="{}", help="internal: the parent's run info (JSON)")
  ap.add_argument("--isolate", choices=["auto", "yes", "no"], default="auto",
                  help="each section in a process of its own (auto: yes unless --smoke)")
  ap.add_argument("--table", default="", help="only regenerate <jsonl>'s Markdown beside it")
  ap.add_argument("--microbatches", default="auto",
                  help="train_throughput --microbatches for the throughput section, e.g. "
                  "didi=2; auto: from the device's memory and the committed plans "
                  "(planned_microbatches: the DiDi step at B=32 does not fit an 80 GB card in "
                  "one pass)")
  return ap.parse_args(argv)


def device_info(argv) -> dict:
  """run_info from a short process of its own: this one never initialises the GPU (JAX keeps
  what it preallocates until the process ends), so that each section's process, the PyTorch
  reference and the XLA-flag variants find the whole card free."""
  code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from benchmarks import common; "
          "print('INFO ' + json.dumps(common.run_info(sys.argv[2], json.loads(sys.argv[3]))))")
  out = subprocess.run([sys.executable, "-c", code, str(ROOT), __file__,
                        json.dumps(list(argv))], capture_output=True, text=True, check=True)
  return json.loads(next(l for l in out.stdout.splitlines() if l.startswith("INFO "))[5:])


def run_section_process(args, name: str, deadline: float, rec: Recorder) -> None:
  """One section in a fresh python process (`--child`), appending to the same JSONL; killed
  at the deadline (an error row says so). Its output streams to this process's."""
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--part={args.part}",
         f"--sections={name}", f"--out={args.out}", f"--work={args.work}",
         f"--carry={args.carry}", f"--budget-s={max(deadline - time.time(), 1):.0f}",
         f"--steps={args.steps}", f"--microbatches={args.microbatches}", "--child",
         f"--stem={rec.stem}", f"--info={json.dumps(rec.info)}"] + (
             ["--smoke"] if args.smoke else [])
  try:
    proc = subprocess.run(cmd, cwd=str(ROOT), timeout=max(deadline - time.time() + 20, 10))
    error = f"section process exited with {proc.returncode}" if proc.returncode else None
  except subprocess.TimeoutExpired:
    error = "section process killed at the budget's end"
  rec.reload()
  if error:
    rec.add(name, [{"error": error}])


def main(argv=None) -> list:
  args = parse_args(argv)
  if args.table:
    path = pathlib.Path(args.table)
    rows = read_rows(path)
    path.with_suffix(".md").write_text(markdown(rows, rows[0] if rows else {}))
    return rows
  start = time.time()
  deadline = start + args.budget_s
  pathlib.Path(args.work).mkdir(parents=True, exist_ok=True)
  sections = PARTS["1"] + PARTS["2"] if args.part == "all" else PARTS[args.part]
  if args.sections:
    sections = [s for s in sections if s in args.sections.split(",")]
  # on a device, every section but xla_flags (which only starts processes) runs in a process
  # of its own and this one never touches the GPU; --smoke runs them all here
  isolate = not args.child and (args.isolate == "yes" or
                                (args.isolate == "auto" and not args.smoke))
  if "throughput" in sections and not args.child:
    torch_first(args)
  argv = sys.argv[1:] if argv is None else argv
  if args.child:  # the driver's: every row names the command that was run
    info = json.loads(args.info)
  else:
    info = device_info(argv) if isolate else common.run_info(__file__, argv)
  rec = Recorder(args.out, info, args.stem, resume=args.child)
  print(f"campaign part {args.part}: {', '.join(sections)}; budget {args.budget_s:.0f} s; "
        f"device {info['device']}", flush=True)
  for name in sections:
    need = 0 if args.smoke or args.child else ESTIMATE_S[name]  # a child: checked before
    if time.time() + need > deadline:
      rec.add(name, [{"skipped": f"budget: {deadline - time.time():.0f} s left, needs ~{need}"}])
      continue
    t0 = time.time()
    fn = globals()[f"section_{name}"]
    try:
      if isolate and name != "xla_flags":
        run_section_process(args, name, deadline, rec)
      elif name in ("xla_flags", "text"):
        fn(args, rec, deadline)
      else:
        fn(args, rec)
    except Exception as e:  # noqa: BLE001  (one section failing must not lose the others)
      if args.smoke:
        raise
      rec.add(name, [{"error": f"{type(e).__name__}: {str(e)[:500]}"}])
    print(f"== {name}: {time.time() - t0:.0f} s (total {time.time() - start:.0f} s)",
          flush=True)
  print(f"wrote {rec.jsonl} and {rec.md}", flush=True)
  return rec.rows


if __name__ == "__main__":
  main()
