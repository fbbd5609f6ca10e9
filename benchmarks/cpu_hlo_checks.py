"""Static checks of the performance options on any backend (CPU here): compiled HLO and memory.

  JAX_PLATFORMS=cpu python benchmarks/cpu_hlo_checks.py --out benchmarks/results/cpu_hlo_checks.md

For the real MDLM train step and the sampler's forward at a small DiT shape:
  1. vocabulary padding (model.vocab_pad_multiple 0 vs 128, GPT-2 vocabulary 50258 -> 50304):
     the logits-sized buffers that the optimized HLO materialises (top-level instructions, not
     inside fusions), the dot shapes, and XLA's compiled memory plan;
  2. buffer donation: the compiled step aliases the state (alias bytes, HLO
     input_output_alias) and running it raises no "donated buffers were not usable" warning;
  3. rematerialisation (model.remat none vs block): compiled temp memory, dot count, CPU time;
  4. chunked cross-entropy (model.loss_chunk 0 vs N): the logits-sized buffers and compiled
     temp memory of the train step (the full [B, L, V] float32 logits must disappear).
Timings are CPU timings (labelled so); GPU numbers come from train_throughput.py.
Section 4's measured numbers (--skip-vocab --skip-remat --loss-chunks 0,64,16) are in
benchmarks/results/distill_step_cpu.md: temp 0.68 -> 0.34 GiB (chunk 32) -> 0.23 GiB (16), with
the rematerialised chunks of then; the chunks that take their gradient in the forward pass:
benchmarks/results/loss_chunk_cpu_2026-12-07.md (0.28 GiB at chunk 32).
"""

import argparse
import collections
import pathlib
import re
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import common, train_throughput as tt  # noqa: E402
from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import models  # noqa: E402
from idlm_jax.train import parallel, state as state_lib  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\(")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def top_level_buffers(hlo: str, min_elems: int) -> list:
  """(computation, opcode, dtype, shape) of instructions with >= min_elems elements that are
  materialised: outside fused computations (those named in a fusion's calls=)."""
  fused = set(re.findall(r"\bfusion\(.*?calls=%?([\w.\-]+)", hlo))
  out, comp = [], None
  for line in hlo.splitlines():
    line = re.sub(r"/\*.*?\*/", "", line)  # /*index=5*/ comments in long signatures
    m = _COMP.match(line)
    if m and "=" not in line.split("{")[0]:
      comp = m.group(1)
      continue
    m = _INSTR.match(line)
    if not m or comp in fused:
      continue
    _, shapes, opcode = m.groups()
    if opcode in ("parameter", "bitcast", "get-tuple-element", "tuple"):
      continue
    for dtype, dims in _SHAPE.findall(shapes):  # every output of a multi-output fusion
      shape = tuple(int(d) for d in dims.split(",") if d)
      if shape and np.prod(shape) >= min_elems:
        out.append((comp, opcode, dtype, shape))
  return out


def dot_count(hlo: str) -> int:
  """Number of dot / convolution / custom-call GEMMs in the optimized HLO (fused ones too)."""
  return len(re.findall(r"\s(?:dot|convolution)\(", hlo)) + hlo.count('custom_call_target="__cublas')


def load(spec: str, overrides: list):
  return config_lib.load_config(spec, ["objective=diffusion", "model.dropout=0.0", *overrides])


def compile_step(cfg, L: int, B: int):
  """(compiled train step, state, batch, mesh) for cfg at [B, L]."""
  step, state, batch, mesh = tt.teacher_train_step(cfg, L, B)
  with parallel.mesh_context(mesh):
    return step.lower(state, batch).compile(), state, batch, mesh


def compile_fwd(cfg, L: int, B: int):
  """The compiled sampler network call at [B, L] and its inputs."""
  vocab = tt.cfg_vocab(cfg)
  graphdef, params = state_lib.split_params(models.build_model(cfg.model, vocab, nnx.Rngs(0)))
  x = jnp.zeros((B, L), jnp.int32)
  sigma = jnp.zeros((B,), jnp.float32)
  fwd = jax.jit(lambda p, x, s: nnx.merge(graphdef, p)(x, s))
  return fwd.lower(params, x, sigma).compile(), (params, x, sigma)


def vocab_rows(spec: str, L: int, B: int) -> list:
  """Logits-sized materialised buffers and memory, padding off/on, float32 and bfloat16."""
  rows = []
  for dtype in ("float32", "bfloat16"):
    for pad in (0, 128):
      cfg = load(spec, [f"model.vocab_pad_multiple={pad}", f"model.dtype={dtype}"])
      vocab = tt.cfg_vocab(cfg)
      for kind in ("train", "fwd"):
        compiled = (compile_step(cfg, L, B)[0] if kind == "train" else compile_fwd(cfg, L, B)[0])
        hlo = compiled.as_text()
        big = top_level_buffers(hlo, B * L * vocab)
        dots = sorted({s for c, op, dt, s in big if op in ("dot", "custom-call")})
        rows.append(dict(check="vocab_pad", kind=kind, dtype=dtype, pad=pad, vocab=vocab,
                         padded=models.layers.padded_vocab_size(vocab, pad),
                         logits_buffers=len(big),
                         buffers=collections.Counter(f"{op} {dt}{list(s)}" for _, op, dt, s in big),
                         copies=sum(op == "copy" for _, op, _, _ in big), dots=dots,
                         mem=common.compiled_memory(compiled)))
  return rows


def donation_row(spec: str, L: int, B: int) -> dict:
  """Alias bytes of the compiled step, HLO alias config, and warnings from running it."""
  cfg = load(spec, [])
  compiled, state, batch, mesh = compile_step(cfg, L, B)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with parallel.mesh_context(mesh):
      for _ in range(2):
        state, _ = compiled(state, batch)
      jax.block_until_ready(state)
  msgs = [str(w.message) for w in caught if "donat" in str(w.message).lower()]
  mem = common.compiled_memory(compiled)
  return dict(check="donation", state_gib=round(state_bytes / 2**30, 4), mem=mem,
              hlo_alias="input_output_alias" in compiled.as_text(), donation_warnings=msgs)


def remat_rows(spec: str, overrides: list, L: int, B: int, reps: int) -> list:
  """Compiled memory, GEMM count and CPU step time with model.remat none / block."""
  rows = []
  for remat in ("none", "block"):
    cfg = config_lib.load_config(spec, ["objective=diffusion", "model.dropout=0.0",
                                        *overrides, f"model.remat={remat}"])
    compiled, state, batch, mesh = compile_step(cfg, L, B)
    t = time_steps(compiled, state, batch, mesh, reps)
    rows.append(dict(check="remat", remat=remat, mem=common.compiled_memory(compiled),
                     dots=dot_count(compiled.as_text()), cpu_step_ms=t["median_s"] * 1e3))
  return rows


def time_steps(compiled, state, batch, mesh, reps: int) -> dict:
  """common.timed over `reps` calls of the compiled donated step (state threaded through);
  median NaN when reps = 0."""
  if not reps:
    return {"median_s": float("nan")}
  holder = {"s": state}

  def one():
    with parallel.mesh_context(mesh):
      holder["s"], m = compiled(holder["s"], batch)
    return m

  return common.timed(one, reps, 1)


def loss_chunk_rows(spec: str, L: int, B: int, chunks: list, reps: int) -> list:
  """Logits-sized materialised buffers, compiled memory and CPU step time per model.loss_chunk."""
  rows = []
  for chunk in chunks:
    cfg = load(spec, [f"model.loss_chunk={chunk}"])
    compiled, state, batch, mesh = compile_step(cfg, L, B)
    big = top_level_buffers(compiled.as_text(), B * L * tt.cfg_vocab(cfg))
    t = time_steps(compiled, state, batch, mesh, reps)
    rows.append(dict(check="loss_chunk", loss_chunk=chunk, logits_buffers=len(big),
                     buffers=collections.Counter(f"{op} {dt}{list(s)}" for _, op, dt, s in big),
                     mem=common.compiled_memory(compiled), cpu_step_ms=t["median_s"] * 1e3))
  return rows


def control_remat_row() -> dict:
  """Control: plain jax.checkpoint on a 12-layer MLP stack (no Flax), compiled temp memory."""
  w = jnp.full((12, 1024, 1024), 0.01)
  x = jnp.ones((2048, 1024))
  layer = lambda w, h: jnp.tanh(jnp.tanh(h @ w) @ w.T) + h  # noqa: E731
  out = {}
  for name, fn in (("none", layer), ("block", jax.checkpoint(layer))):
    def loss(w, fn=fn):
      h = x
      for i in range(12):
        h = fn(w[i], h)
      return jnp.sum(h ** 2)
    out[name] = common.compiled_memory(jax.jit(jax.grad(loss)).lower(w).compile())["temp_gib"]
  return out


def loss_chunk_markdown(args, rows: list) -> str:
  """Section 4 of the report."""
  text = ("\n## 4. Chunked cross-entropy (model.loss_chunk)\n\n"
          f"`{args.spec}` with {args.set}, train step at B={args.B}, L={args.L}; logits-sized "
          "buffers as in section 1.\n\n"
          "| loss_chunk | logits-sized buffers | temp GiB | compiled GiB | CPU step ms (median) |"
          "\n|---|---|---|---|---|\n")
  for r in rows:
    bufs = "; ".join(f"{k} x{v}" for k, v in sorted(r["buffers"].items())) or "none"
    text += (f"| {r['loss_chunk']} | {bufs} | {r['mem']['temp_gib']:.4f} | "
             f"{r['mem']['total_gib']:.4f} | {r['cpu_step_ms']:.0f} |\n")
  return text


def markdown(info, args, vocab, donation, remat, control) -> str:
  """The report."""
  text = common.header_markdown("CPU verification of the performance options (issue #10)", info)
  text += (f"All numbers are **CPU** (XLA:CPU, {info['device_count']} host devices; a shared "
           f"2-core machine, so CPU times are only indicative). Shapes: `{args.spec}` with "
           f"{args.set or 'no overrides'}; train step and forward at B={args.B}, L={args.L}.\n\n")
  text += ("## 1. Vocabulary padding (GPT-2 vocabulary 50258 -> 50304)\n\n"
           "Materialised logits-sized buffers = top-level instructions of the optimized HLO "
           "(outside fusions) with >= B x L x V elements. compiled GiB = args + out + temp - "
           "alias (`compiled.memory_analysis()`).\n\n"
           "| step | dtype | pad | logits-sized buffers (opcode dtype[shape] x count) | copies "
           "| temp GiB | compiled GiB |\n|---|---|---|---|---|---|---|\n")
  for r in vocab:
    bufs = "; ".join(f"{k} x{v}" for k, v in sorted(r["buffers"].items()))
    text += (f"| {r['kind']} | {r['dtype']} | {r['pad']} ({r['padded']}) | {bufs} | "
             f"{r['copies']} | {r['mem']['temp_gib']:.4f} | {r['mem']['total_gib']:.4f} |\n")
  text += ("\n## 2. Buffer donation (train step, state donated)\n\n"
           f"- state size {donation['state_gib']} GiB; compiled alias "
           f"{donation['mem']['alias_gib']} GiB (args {donation['mem']['args_gib']}, out "
           f"{donation['mem']['out_gib']}); HLO has `input_output_alias`: "
           f"{donation['hlo_alias']}\n"
           f"- warnings mentioning donation while running 2 steps: "
           f"{donation['donation_warnings'] or 'none'}\n")
  if not remat:  # --skip-remat
    return text
  text += ("\n## 3. Rematerialisation (model.remat)\n\n"
           f"`{args.remat_spec}` with {args.remat_set}, train step at B={args.B}, "
           f"L={args.remat_L} (a small vocabulary, so that block activations dominate).\n\n"
           "| remat | temp GiB | compiled GiB | GEMMs in HLO | CPU step ms (median) |\n"
           "|---|---|---|---|---|\n")
  for r in remat:
    text += (f"| {r['remat']} | {r['mem']['temp_gib']:.4f} | {r['mem']['total_gib']:.4f} | "
             f"{r['dots']} | {r['cpu_step_ms']:.0f} |\n")
  text += (f"\nControl without Flax (plain `jax.checkpoint` per layer, 12-layer MLP, "
           f"activations 8 MiB each): temp GiB none {control['none']:.4f}, checkpointed "
           f"{control['block']:.4f}.\n")
  return text


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--spec", default="configs/mdlm_owt.py:smoke")
  ap.add_argument("--set", action="append", default=[
      "model.hidden_size=128", "model.n_blocks=4", "model.n_heads=4", "model.cond_dim=64"])
  ap.add_argument("--B", type=int, default=8)
  ap.add_argument("--L", type=int, default=128)
  ap.add_argument("--remat-spec", default="configs/mdlm_owt.py:smoke")
  ap.add_argument("--remat-set", action="append", default=[
      "data.tokenizer=demo-bpe-2048", "model.hidden_size=256", "model.n_blocks=6", "model.n_heads=4", "model.cond_dim=64"])
  ap.add_argument("--remat-L", type=int, default=256)
  ap.add_argument("--reps", type=int, default=1, help="timed CPU steps per remat row (0: none)")
  ap.add_argument("--skip-vocab", action="store_true")
  ap.add_argument("--skip-remat", action="store_true")
  ap.add_argument("--loss-chunks", default="0,32",
                  help="model.loss_chunk values of section 4 ('' skips it)")
  ap.add_argument("--out", default=None, help="write the Markdown report here")
  args = ap.parse_args(argv)
  global load
  base_load, extra = load, list(args.set)
  load = lambda spec, ov: base_load(spec, [*extra, *ov])  # noqa: E731
  info = common.run_info(__file__, argv)
  vocab = [] if args.skip_vocab else vocab_rows(args.spec, args.L, args.B)
  donation = donation_row(args.spec, args.L, args.B)
  remat, control = [], {"none": float("nan"), "block": float("nan")}
  if not args.skip_remat:
    remat = remat_rows(args.remat_spec, args.remat_set, args.remat_L, args.B, args.reps)
    control = control_remat_row()
  chunks = [int(c) for c in args.loss_chunks.split(",") if c.strip()]
  chunk_rows = loss_chunk_rows(args.spec, args.L, args.B, chunks, args.reps) if chunks else []
  text = markdown(info, args, vocab, donation, remat, control)
  text += loss_chunk_markdown(args, chunk_rows) if chunk_rows else ""
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)
  return vocab, donation, remat, chunk_rows


if __name__ == "__main__":
  main()
