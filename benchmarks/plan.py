"""Memory planning without an accelerator: XLA's per-device memory of a config's train step.

  python -m benchmarks.plan --config=configs/idlm_mdlm_owt.py --devices=8 --memory_gb=80
  python -m benchmarks.plan --config=configs/duo_lm1b.py --devices=16 --memory_gb=16 \
      --name=duo_lm1b_tpu16 --out=benchmarks/results/plans
  python -m benchmarks.plan --llada=finetune --devices=1 --memory_gb=80   # LLaDA-8B
  python -m benchmarks.plan --config=configs/mdlm_owt.py --devices=1 --batch=32 --calibrate

The step is the trainer's own (train/loop.make_objective, as benchmarks/train_throughput.py
builds it) at the config's full shape, but every input is abstract (jax.ShapeDtypeStruct with
its NamedSharding: no parameter, moment or batch is ever allocated). It is lowered and compiled
for a mesh of N devices (N fake CPU devices, XLA_FLAGS=--xla_force_host_platform_device_count,
set by this module before JAX starts), and `compiled.memory_analysis()` gives the per-device
bytes of the SPMD-partitioned program: arguments, outputs, temporaries and the donated
(aliased) part; total = arguments + outputs + temporaries - aliased.

Searched settings: `model.remat` (none / block), the mesh (FSDP over all devices, or pure data
parallel with replicated state) and the rows per device in one forward/backward pass. With a
`train.microbatches` field (gradient accumulation) those rows are global_batch / (devices x
microbatches); without it the planner plans over the per-step batch (the largest global batch
per optimizer step that fits). Memory is affine in the rows per device for a fixed program
(activations scale with rows; parameters, moments and the frozen teacher do not) and affine
in the depth for a stack of identical blocks, so each (remat, mesh) setting is compiled at 1
and 2 blocks x 1 and 2 rows per device and the bilinear fit predicts the full model at every
row count. That extrapolation can be far off (the IDLM step: 0.55x its full-depth
compile), so `--check` compiles the chosen setting at full depth (5-100 s each on 2 cores
for the committed plans) and takes the largest rows whose full-depth compile fits,
searching down or up from the extrapolation's choice; every committed DiT plan has it
(docs/scaling.md).

CPU-compiled memory approximates GPU/TPU memory: XLA:CPU fuses differently and may keep
float32 copies of bfloat16 matmul operands; `--calibrate` compiles the one step measured on an
H100 (MDLM teacher step, DiT small, L=1024, B=32: 25.55 GiB peak) so the two can be compared,
and every plan row carries the CPU number and the calibrated one (docs/scaling.md).
"""

import os
import sys

if "jax" not in sys.modules:  # fake devices must be set before JAX initialises
  _n = max([int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--devices=")] + [16])
  _flag = f"--xla_force_host_platform_device_count={_n}"
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from benchmarks import common  # noqa: E402
from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import models, objectives  # noqa: E402
from idlm_jax.data import tokenizers  # noqa: E402
from idlm_jax.models import dllm  # noqa: E402
from idlm_jax.objectives.state import TrainState, make_optimizer  # noqa: E402
from idlm_jax.train import loop, parallel, state as state_lib  # noqa: E402

GIB = 2**30
# The one GPU number known: MDLM teacher step of DiT small at L=1024, B=32 on one H100
# (benchmarks/results/h100.md, device peak bytes in use).
H100_TEACHER_PEAK_GIB = 25.55
MESHES = {"fsdp": (1, -1, 1), "dp": (-1, 1, 1)}


@dataclasses.dataclass(frozen=True)
class Setting:
  """One point of the search: remat kind, mesh name, rows per device per pass."""
  remat: str
  mesh: str
  rows: int


def memory_row(compiled) -> dict:
  """Per-device bytes of a compiled SPMD executable (GiB): args, out, temp, alias, total."""
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return dict(args_gib=m.argument_size_in_bytes / GIB, out_gib=m.output_size_in_bytes / GIB,
              temp_gib=m.temp_size_in_bytes / GIB, alias_gib=m.alias_size_in_bytes / GIB,
              total_gib=total / GIB)


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or structs) carrying `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def abstract_train_state(build, tx, seed: int, mesh, aux_txs=None):
  """(state_structs, shardings) of the TrainState create_state would build, nothing allocated."""
  holder = {}

  def make():
    _, state, shardings = state_lib.create_state(build, tx, seed, mesh, aux_txs=aux_txs)
    holder["shardings"] = shardings
    return state

  shapes = jax.eval_shape(make)
  return abstract(shapes, holder["shardings"]), holder["shardings"]


def microbatch_field(cfg) -> bool:
  """Whether this checkout's trainer has gradient accumulation (train.microbatches)."""
  return "microbatches" in cfg.train


def objective_step_memory(spec: str, overrides: list, mesh_name: str, devices,
                          rows: int) -> dict:
  """Compile cfg.objective's train step for `devices` devices with `rows` rows per device
  per pass and return its memory row (plus compile seconds and the config facts)."""
  cfg = config_lib.load_config(spec, list(overrides))
  n_dev = len(devices)
  global_rows = rows * n_dev
  micro = 1
  if microbatch_field(cfg):  # accumulate over the config's global batch
    micro = max(cfg.train.global_batch_size // global_rows, 1)
    cfg.train.microbatches = micro
    cfg.train.global_batch_size = global_rows * micro
  else:
    cfg.train.global_batch_size = global_rows
  cfg.parallel.ici_mesh = MESHES[mesh_name]
  cfg.parallel.dcn_mesh = (1, 1, 1)
  B, L = cfg.train.global_batch_size, cfg.data.seq_len
  tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
  vocab = tok.model_vocab_size
  mesh = parallel.make_mesh(cfg.parallel, devices)
  tx = make_optimizer(cfg.optim, cfg.train.steps)
  build = lambda rngs: models.build_model(cfg.model, vocab, rngs)
  graphdef, abstract_params = state_lib.abstract_model(build, cfg.seed)
  obj, _ = loop.make_objective(cfg, graphdef, tx, tok)
  state, shardings = abstract_train_state(build, tx, cfg.seed, mesh, obj.aux_txs)
  frozen = None
  frozen_sh = None
  if cfg.objective != "diffusion" and obj_uses_teacher(cfg):
    frozen_sh = {"teacher": shardings.params}
    frozen = {"teacher": state.params}
  batch_sh = parallel.batch_sharding(mesh)
  one = {"input_ids": jax.ShapeDtypeStruct((B, L), jnp.int32, sharding=batch_sh),
         "attention_mask": jax.ShapeDtypeStruct((B, L), jnp.int32, sharding=batch_sh)}
  n = obj.batches_per_step
  batch = one if n == 1 else tuple(one for _ in range(n))
  step = jax.jit(lambda s, inputs: obj.train_step(s, *inputs),
                 in_shardings=(shardings, (frozen_sh, batch_sh)),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
  t0 = time.perf_counter()
  with parallel.mesh_context(mesh):
    compiled = step.lower(state, (frozen, batch)).compile()
  out = memory_row(compiled)
  n_params = models.count_params(abstract_params)
  out.update(compile_s=time.perf_counter() - t0, global_batch=B, microbatches=micro,
             batches_per_step=n, seq_len=L, n_params=n_params, objective=cfg.objective)
  return out


def obj_uses_teacher(cfg) -> bool:
  """Distillation objectives read a frozen teacher (the trainer's `frozen` argument)."""
  return bool(objectives.get(cfg.objective).teacher)


# ------------------------------------------------------------------ targets and calibration

def target_devices(target: str, n: int) -> list:
  """The first n devices of `target`: "cpu" (fake host devices) or "tpu:<topology>" (e.g.
  tpu:v5e:4x4; a deviceless TPU compile, needs the libtpu package)."""
  if target == "cpu":
    devices = jax.devices("cpu")
  elif target.startswith("tpu:"):
    topo = topologies.get_topology_desc(platform="tpu", topology_name=target[4:])
    devices = list(topo.devices)
  else:
    raise SystemExit(f"--target: expected 'cpu' or 'tpu:<topology>', got {target!r}")
  if n > len(devices):
    raise SystemExit(f"--devices={n}: the target {target!r} has only {len(devices)} devices "
                     "(cpu: set XLA_FLAGS=--xla_force_host_platform_device_count)")
  return devices[:n]


def calibrated(row: dict, temp_scale: float) -> float:
  """Predicted accelerator bytes (GiB): the persistent part (arguments + outputs - aliased:
  parameters, moments, the frozen teacher, batch; the same bytes on every backend) plus the
  temporaries scaled by `temp_scale` (XLA:CPU's temporaries over the accelerator's)."""
  return row["args_gib"] + row["out_gib"] - row["alias_gib"] + temp_scale * row["temp_gib"]


def n_params(spec: str, overrides: list) -> int:
  """Parameters of the config's network at full depth (abstract)."""
  cfg = config_lib.load_config(spec, list(overrides))
  vocab = tokenizers.get_tokenizer(cfg.data.tokenizer).model_vocab_size
  return models.count_params(nnx.eval_shape(
      lambda: models.build_model(cfg.model, vocab, nnx.Rngs(0))))


_CALIBRATION = {}


def calibration(devices) -> dict:
  """The temporaries' scale that makes the CPU plan of the measured H100 step (MDLM teacher,
  DiT small, L=1024, B=32, no dropout as the benchmark) equal its measured 25.55 GiB peak."""
  if "cal" in _CALIBRATION:
    return _CALIBRATION["cal"]
  spec, ov = "configs/mdlm_owt.py", ["model.dropout=0.0"]
  row = objective_step_memory(spec, ov, "fsdp", devices[:1], 32)
  persistent = row["args_gib"] + row["out_gib"] - row["alias_gib"]
  scale = (H100_TEACHER_PEAK_GIB - persistent) / row["temp_gib"]
  # the depth x rows extrapolation of plan_objective, checked on this full-depth compile
  grid = {(d, r): objective_step_memory(spec, ov + [f"model.n_blocks={d}"], "fsdp",
                                        devices[:1], r) for d in (1, 2) for r in (1, 2)}
  predicted = bilinear(grid, 12, 32, lambda v: v["total_gib"])
  _CALIBRATION["cal"] = dict(
      measured_gib=H100_TEACHER_PEAK_GIB, cpu=row, temp_scale=scale,
      extrapolated_cpu_gib=predicted, full_depth_cpu_gib=row["total_gib"],
      source="benchmarks/results/h100.md (train row, L=1024, B=32, peak_mem_gib)")
  return _CALIBRATION["cal"]


# ------------------------------------------------------------------ search

def affine_fit(r1: int, m1: float, r2: int, m2: float):
  """(intercept, slope) of the line through (r1, m1), (r2, m2)."""
  slope = (m2 - m1) / (r2 - r1)
  return m1 - slope * r1, slope


def candidate_rows(global_batch: int, devices: int, accumulation: bool) -> list:
  """Rows per device per pass to consider, largest first: with accumulation, the divisors
  global_batch / (devices x k) for k = 1, 2, 4, ...; without it, powers of two up to the
  global batch's share of a device (the per-step batch is then rows x devices)."""
  top = max(global_batch // devices, 1)
  rows, r = [], top
  while r >= 1:
    if not accumulation or global_batch % (devices * r) == 0:
      rows.append(r)
    r //= 2
  return rows


def bilinear(grid: dict, depth: int, rows: int, key) -> float:
  """Memory at (depth, rows) from the four probes grid[(d, r)], d, r in {1, 2}: memory is
  affine in the depth for a fixed row count (identical blocks) and affine in the rows for a
  fixed depth (activations scale with rows), so m = a + b depth + rows (c + d depth)."""
  m = {k: key(v) for k, v in grid.items()}
  one = m[1, 1] + (depth - 1) * (m[2, 1] - m[1, 1])
  two = m[1, 2] + (depth - 1) * (m[2, 2] - m[1, 2])
  return one + (rows - 1) * (two - one)


def plan_objective(spec: str, overrides: list, devices, memory_gib: float, temp_scale: float,
                   headroom: float, remats=("none", "block"), meshes=("fsdp", "dp"),
                   check: bool = False, log=print) -> dict:
  """(remat, mesh) settings in order of preference (no remat before remat, FSDP before pure
  data parallelism). Each is compiled at 1 and 2 blocks x 1 and 2 rows per device and the
  bilinear fit (`bilinear`) predicts the full depth at every row count (a full-depth compile
  of a 12-block step takes minutes on the 2 shared cores this was built on; `calibration`
  checks the depth extrapolation against one). The largest rows per device that fits
  `memory_gib x (1 - headroom)` (calibrated) is chosen; the search stops at the first
  setting that holds the global batch's whole share of a device (no accumulation needed).
  `check`: the chosen setting's rows become the largest whose full-depth compile fits
  (`full_depth_search`, from the extrapolation's choice; the 1-2 block probes' extrapolation
  was 0.55x the full-depth compile of the IDLM step at DiT small, B=32, and 1.11x the DiDi
  step's). Returns the plan (JSON-able)."""
  cfg = config_lib.load_config(spec, list(overrides))
  accumulation = microbatch_field(cfg)
  n = len(devices)
  depth = cfg.model.n_blocks
  budget = memory_gib * (1 - headroom)
  candidates = candidate_rows(cfg.train.global_batch_size, n, accumulation)
  cal = lambda row: calibrated(row, temp_scale)
  cpu = lambda row: row["total_gib"]
  settings = []
  for remat in remats:
    for mesh in meshes:
      if (mesh == "dp" and n == 1) or (settings and settings[-1]["max_rows"] == candidates[0]):
        continue
      grid = {}
      for d in (1, 2):
        for r in (1, 2):
          ov = list(overrides) + [f"model.remat={remat}", f"model.n_blocks={d}"]
          grid[d, r] = row = objective_step_memory(spec, ov, mesh, devices, r)
          log(f"  {remat:5s} {mesh:4s} {d} block(s), {r} row(s)/device: cpu "
              f"{row['total_gib']:.2f} GiB, calibrated {cal(row):.2f} GiB "
              f"({row['compile_s']:.0f} s)")
      fixed = bilinear(grid, depth, 0, cal)
      per_row = bilinear(grid, depth, 1, cal) - fixed
      # a non-positive slope means the probes are not affine in the rows (the compiler
      # changed its schedule between 1 and 2 rows): no row count can be read off such a fit
      fits = ([r for r in candidates if bilinear(grid, depth, r, cal) <= budget]
              if per_row > 0 else [])
      settings.append(dict(
          remat=remat, mesh=mesh, probes={f"{d}x{r}": v for (d, r), v in grid.items()},
          gib_fixed=fixed, gib_per_row=per_row, cpu_gib_fixed=bilinear(grid, depth, 0, cpu),
          cpu_gib_per_row=bilinear(grid, depth, 1, cpu) - bilinear(grid, depth, 0, cpu),
          persistent_gib=bilinear(grid, depth, 1, lambda v: v["args_gib"] + v["out_gib"]
                                  - v["alias_gib"]),
          max_rows=fits[0] if fits else 0,
          rows_unbounded=max(int((budget - fixed) // per_row), 0) if per_row > 0 else None))
  if not settings:
    raise SystemExit(f"nothing to plan: meshes {tuple(meshes)} on {n} device(s) (a pure "
                     "data-parallel mesh needs more than one device; use fsdp)")
  order = {"none": 0, "block": 1}
  best = max(settings, key=lambda s: (s["max_rows"], -order[s["remat"]], s["mesh"] == "fsdp"))
  chk, rows, checks = None, best["max_rows"], []
  if check and rows:
    rows, checks = full_depth_search(
        lambda r: objective_step_memory(spec, list(overrides) + [f"model.remat={best['remat']}"],
                                        best["mesh"], devices, r),
        candidates, rows, budget, temp_scale,
        lambda r: best["gib_fixed"] + best["gib_per_row"] * r,
        lambda r, c: log(f"  check {best['remat']} {best['mesh']} rows/device {r}: calibrated "
                         f"{c['calibrated_gib']:.2f} GiB (predicted {c['predicted_gib']:.2f})"))
    chk = next((c for c in checks if c["rows"] == rows), checks[-1])
  gb = cfg.train.global_batch_size
  return dict(config=spec, overrides=list(overrides), objective=cfg.objective,
              devices=n, device_kind=devices[0].device_kind, memory_gib=memory_gib,
              headroom=headroom, temp_scale=temp_scale, global_batch=gb,
              seq_len=cfg.data.seq_len, accumulation_field=accumulation,
              batches_per_step=settings[0]["probes"]["1x1"]["batches_per_step"],
              n_params=n_params(spec, overrides), n_blocks=depth, settings=settings,
              chosen=dict(remat=best["remat"], mesh=best["mesh"], rows_per_device=rows,
                          microbatches=(gb // (rows * n)) if rows else None,
                          per_step_batch=rows * n, check=chk, checks=checks))


def full_depth_search(compile_rows, candidates: list, start: int, budget: float,
                      temp_scale: float, predicted, log=lambda r, c: None):
  """(rows, compiles): the largest of `candidates` (largest first) whose full-depth compile
  (`compile_rows(r)` -> memory row) fits `budget` once calibrated, searched from the
  extrapolation's choice `start`: down while over the budget, up while the next larger one
  fits (rows 0: none does). Every compile is kept, with its rows, calibrated and
  extrapolated (`predicted(r)`) GiB."""
  compiles = []

  def fits(i):
    r = candidates[i]
    c = dict(compile_rows(r), rows=r)
    c.update(calibrated_gib=calibrated(c, temp_scale), predicted_gib=predicted(r))
    compiles.append(c)
    log(r, c)
    return c["calibrated_gib"] <= budget

  i = candidates.index(start)
  if fits(i):
    while i > 0 and fits(i - 1):
      i -= 1
    return candidates[i], compiles
  while i + 1 < len(candidates):
    i += 1
    if fits(i):
      return candidates[i], compiles
  return 0, compiles


# ------------------------------------------------------------------ LLaDA-8B

def masked_diffusion_loss(model, tokens, key, mask_id: int):
  """LLaDA's pretraining loss: t ~ U(0, 1] per row, each token masked with probability t,
  cross-entropy on the masked positions weighted 1 / t, averaged over all positions."""
  B, L = tokens.shape
  k_t, k_m = jax.random.split(key)
  t = jax.random.uniform(k_t, (B, 1), minval=1e-3, maxval=1.0)
  masked = jax.random.uniform(k_m, (B, L)) < t
  x_t = jnp.where(masked, mask_id, tokens)
  logits = model(x_t).astype(jnp.float32)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
  return jnp.sum(jnp.where(masked, nll / t, 0.0)) / (B * L)


def llada_step_memory(mode: str, devices, rows: int, seq_len: int, *, n_layers: int,
                      remat: str, mesh_name: str, param_dtype: str, log=print,
                      global_batch: int = 0) -> dict:
  """Compile LLaDA-8B's forward (mode "forward") or full fine-tuning step (mode "finetune":
  masked-diffusion loss, AdamW with the moments in `param_dtype`, donated state) at
  `n_layers` of its 32 layers, rows per device x seq_len, and return its memory row.
  `global_batch` > 0 replaces rows x devices by that batch (inference batches smaller than
  the mesh: the rows are then replicated unless the batch axes divide them)."""
  c = dllm.llada_8b().replace(n_layers=n_layers)
  pdt = jnp.dtype(param_dtype)
  model = nnx.eval_shape(lambda: dllm.build(c, dtype=jnp.bfloat16, remat=remat))
  graphdef, params = nnx.split(model, nnx.Param)
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(
      strategy="pjit", ici_mesh=MESHES[mesh_name], dcn_mesh=(1, 1, 1))), devices)
  p_sh = parallel.param_shardings(params, mesh)  # outside the rules: names still logical
  params = abstract(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, pdt),
                                 nnx.to_pure_dict(params)), p_sh)
  B = global_batch or rows * len(devices)
  batch_sh = parallel.batch_sharding(mesh)
  if B % parallel.batch_divisor(mesh):
    batch_sh = parallel.replicated(mesh)
  tokens = jax.ShapeDtypeStruct((B, seq_len), jnp.int32, sharding=batch_sh)
  rep = parallel.replicated(mesh)
  if mode == "forward":
    fn = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x), in_shardings=(p_sh, batch_sh))
    args = (params, tokens)
  else:
    tx = optax.adamw(1e-5, mu_dtype=pdt)
    opt_sh = optax.tree_map_params(tx, lambda v, s: s, jax.eval_shape(tx.init, params), p_sh,
                                   transform_non_params=lambda _: rep)
    opt = abstract(jax.eval_shape(tx.init, params), opt_sh)

    def step(p, o, x, key):
      loss, g = jax.value_and_grad(lambda q: masked_diffusion_loss(
          nnx.merge(graphdef, q), x, key, c.mask_token_id))(p)
      updates, o = tx.update(g, o, p)
      return optax.apply_updates(p, updates), o, loss

    fn = jax.jit(step, in_shardings=(p_sh, opt_sh, batch_sh, rep),
                 out_shardings=(p_sh, opt_sh, rep), donate_argnums=(0, 1))
    args = (params, opt, tokens, jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                                                        sharding=rep))
  t0 = time.perf_counter()
  with parallel.mesh_context(mesh):
    compiled = fn.lower(*args).compile()
  out = memory_row(compiled)
  out.update(compile_s=time.perf_counter() - t0, n_layers=n_layers, rows=rows, seq_len=seq_len,
             global_batch=B)
  log(f"  llada {mode} {n_layers} layers {remat} {mesh_name} {param_dtype} batch {B} "
      f"L {seq_len}: {out['total_gib']:.2f} GiB ({out['compile_s']:.0f} s)")
  return out


def plan_llada(mode: str, devices, memory_gib: float, temp_scale: float, headroom: float,
               seq_len: int, param_dtypes=("float32", "bfloat16"), remats=("none", "block"),
               meshes=("fsdp",), max_rows: int = 256, log=print) -> dict:
  """LLaDA-8B per device, extrapolated from 1- and 2-layer compiles at 1 and 2 rows per device
  (memory = a + b depth + rows (c + d depth): exact for a stack of identical layers whose
  activations scale with the rows), for each (param dtype, remat, mesh) setting."""
  full = dllm.llada_8b().n_layers
  budget = memory_gib * (1 - headroom)
  settings = []
  for pdt in (param_dtypes if mode == "finetune" else ("bfloat16",)):
    for remat in (remats if mode == "finetune" else ("none",)):
      for mesh in meshes:
        grid = {(d, r): llada_step_memory(mode, devices, r, seq_len, n_layers=d, remat=remat,
                                          mesh_name=mesh, param_dtype=pdt, log=log)
                for d in (1, 2) for r in (1, 2)}

        cal = lambda v: calibrated(v, temp_scale)
        at = lambda depth, rows, key: bilinear(grid, depth, rows,
                                               cal if key == "cal" else lambda v: v["total_gib"])

        rows, r = [], 1
        while r <= max_rows:
          rows.append(r)
          r *= 2
        per_row = at(full, 2, "cal") - at(full, 1, "cal")
        fits = [r for r in rows if at(full, r, "cal") <= budget] if per_row > 0 else []
        persistent = {k: v["args_gib"] + v["out_gib"] - v["alias_gib"]
                      for k, v in grid.items()}
        settings.append(dict(
            param_dtype=pdt, remat=remat, mesh=mesh, probes={f"{d}x{r}": v
                                                             for (d, r), v in grid.items()},
            persistent_gib=persistent[1, 1] + (full - 1) * (persistent[2, 1] - persistent[1, 1]),
            gib_1row=at(full, 1, "cal"), cpu_gib_1row=at(full, 1, "cpu"),
            gib_per_row=per_row,
            max_rows=fits[-1] if fits else 0))
  return dict(model="LLaDA-8B", mode=mode, seq_len=seq_len, n_layers=full,
              n_params=models.count_params(nnx.eval_shape(lambda: dllm.build(
                  dllm.llada_8b().replace(n_layers=1)))) + (full - 1) * _layer_params(),
              devices=len(devices), device_kind=devices[0].device_kind, memory_gib=memory_gib,
              headroom=headroom, temp_scale=temp_scale, settings=settings)


def plan_llada_batches(devices, memory_gib: float, temp_scale: float, headroom: float,
                       seq_len: int, batches=(1, 2, 4, 8), mesh: str = "fsdp",
                       log=print) -> dict:
  """LLaDA-8B bf16 inference: the full 32-layer forward compiled at each global batch in
  `batches` (the whole batch on the mesh, replicated where it does not divide the batch
  axes); no extrapolation (an abstract full-depth forward compiles in seconds)."""
  full = dllm.llada_8b().n_layers
  budget = memory_gib * (1 - headroom)
  rows = []
  for b in batches:
    row = llada_step_memory("forward", devices, 1, seq_len, n_layers=full, remat="none",
                            mesh_name=mesh, param_dtype="bfloat16", log=log, global_batch=b)
    row.update(batch=b, calibrated_gib=calibrated(row, temp_scale))
    row["fits"] = row["calibrated_gib"] <= budget
    rows.append(row)
  return dict(model="LLaDA-8B", mode="forward_batches", seq_len=seq_len, n_layers=full,
              n_params=models.count_params(nnx.eval_shape(lambda: dllm.build(
                  dllm.llada_8b().replace(n_layers=1)))) + (full - 1) * _layer_params(),
              devices=len(devices), device_kind=devices[0].device_kind, memory_gib=memory_gib,
              headroom=headroom, temp_scale=temp_scale, mesh=mesh, batches=rows)


def _layer_params() -> int:
  """Parameters of one LLaDA-8B layer."""
  c = dllm.llada_8b()
  one = models.count_params(nnx.eval_shape(lambda: dllm.build(c.replace(n_layers=1))))
  two = models.count_params(nnx.eval_shape(lambda: dllm.build(c.replace(n_layers=2))))
  return two - one


# ------------------------------------------------------------------ output

def markdown(plan: dict) -> str:
  """A plan as Markdown: one row per setting, the chosen one marked."""
  if plan.get("model") == "LLaDA-8B":
    return markdown_llada(plan)
  c = plan["chosen"]
  text = (f"### {plan['name']}\n\n`{plan['config']}` ({plan['objective']}, "
          f"{plan['n_params'] / 1e6:.1f}M parameters per network, L={plan['seq_len']}, "
          f"global batch {plan['global_batch']}, {plan['batches_per_step']} batch(es) per "
          f"step) on {plan['devices']} x {plan['memory_gib']:g} GiB ({plan['target']}), "
          f"budget {1 - plan['headroom']:.0%} of it; temporaries x {plan['temp_scale']:.3f}"
          f" (calibration). Gradient accumulation field: "
          f"{'yes' if plan['accumulation_field'] else 'not on this branch (per-step batch)'}."
          "\n\n| remat | mesh | fixed GiB | GiB per row | CPU fixed / per row | max rows "
          "per device | per-step batch | microbatches for the global batch |\n"
          "|---|---|---|---|---|---|---|---|\n")
  for s in plan["settings"]:
    mark = " **(chosen)**" if (s["remat"], s["mesh"]) == (c["remat"], c["mesh"]) else ""
    r = s["max_rows"]
    micro = plan["global_batch"] // (r * plan["devices"]) if r else "-"
    text += (f"| {s['remat']}{mark} | {s['mesh']} | {s['gib_fixed']:.2f} | "
             f"{s['gib_per_row']:.3f} | {s['cpu_gib_fixed']:.2f} / {s['cpu_gib_per_row']:.3f} "
             f"| {max_rows_text(s)} | {r * plan['devices'] if r else '-'} | {micro} |\n")
  chk = c["check"]
  if chk:
    rows = chk.get("rows", c["rows_per_device"])
    text += (f"\nCheck compile of the chosen setting ({rows} rows/device): "
             f"arguments {chk['args_gib']:.2f}, outputs {chk['out_gib']:.2f}, temporaries "
             f"{chk['temp_gib']:.2f} (CPU), aliased {chk['alias_gib']:.2f}, total "
             f"{chk['total_gib']:.2f} GiB on CPU -> {chk['calibrated_gib']:.2f} GiB "
             f"calibrated (affine prediction {chk['predicted_gib']:.2f}).\n")
  if len(c.get("checks", [])) > 1:
    text += ("Full-depth compiles searched (rows/device: calibrated GiB): " + ", ".join(
        f"{k['rows']}: {k['calibrated_gib']:.2f}" for k in c["checks"]) +
        f"; budget {plan['memory_gib'] * (1 - plan['headroom']):.1f}.\n")
  return text


def markdown_llada_batches(plan: dict) -> str:
  """A forward_batches plan: one row per global batch."""
  text = (f"### {plan['name']}\n\nLLaDA-8B ({plan['n_params'] / 1e9:.2f}B parameters, "
          f"{plan['n_layers']} layers) bf16 inference forward (logits float32) at "
          f"L={plan['seq_len']} on {plan['devices']} x {plan['memory_gib']:g} GiB "
          f"({plan['target']}, mesh {plan['mesh']}), budget {1 - plan['headroom']:.0%}; "
          f"full-depth compiles; temporaries x "
          f"{plan['temp_scale']:.3f}.\n\n| global batch | arguments GiB | outputs GiB | "
          "temporaries GiB | total GiB (compiled) | predicted GiB (calibrated) | fits |\n"
          "|---|---|---|---|---|---|---|\n")
  for r in plan["batches"]:
    text += (f"| {r['batch']} | {r['args_gib']:.2f} | {r['out_gib']:.2f} | {r['temp_gib']:.2f} "
             f"| {r['total_gib']:.2f} | {r['calibrated_gib']:.2f} | "
             f"{'yes' if r['fits'] else 'no'} |\n")
  return text


def markdown_llada(plan: dict) -> str:
  if plan["mode"] == "forward_batches":
    return markdown_llada_batches(plan)
  text = (f"### {plan['name']}\n\nLLaDA-8B ({plan['n_params'] / 1e9:.2f}B parameters, "
          f"{plan['n_layers']} layers) {plan['mode']} at L={plan['seq_len']} on "
          f"{plan['devices']} x {plan['memory_gib']:g} GiB ({plan['target']}), budget "
          f"{1 - plan['headroom']:.0%}; extrapolated from 1- and 2-layer compiles; "
          f"temporaries x {plan['temp_scale']:.3f}.\n\n"
          "| params + Adam dtype | remat | mesh | persistent GiB | GiB at 1 row (uncalibrated) | "
          "GiB per row | max rows per device |\n|---|---|---|---|---|---|---|\n")
  for s in plan["settings"]:
    text += (f"| {s['param_dtype']} | {s['remat']} | {s['mesh']} | "
             f"{s['persistent_gib']:.1f} | {s['gib_1row']:.1f} ({s['cpu_gib_1row']:.1f}) | "
             f"{s['gib_per_row']:.2f} | {max_rows_text(s)} |\n")
  return text


def max_rows_text(setting: dict) -> str:
  """The 'max rows' cell: the count, 'none fits', or why the fit cannot be read (a TPU compile
  whose 2-row probe used less memory than its 1-row probe: the schedule changed, so the
  probes are not on one line)."""
  if setting["gib_per_row"] <= 0:
    return "fit invalid (per-row slope <= 0)"
  return str(setting["max_rows"] or "none fits")


def base_overrides(spec: str) -> list:
  """No dropout (as the throughput benchmark); distillation names a teacher it never loads
  (the frozen teacher is an abstract argument of the step)."""
  out = ["model.dropout=0.0"]
  try:
    config_lib.load_config(spec, out)
  except config_lib.ConfigError as e:
    if "distill.teacher" not in str(e):
      raise
    out.append("distill.teacher=random-init")
  return out


# The committed plans (benchmarks/results/plans): (name, argv). GPU: 8 x 80 GB (H100/A100-80);
# TPU: a v5e-16 slice (16 chips x 16 GB HBM).
# Every DiT plan ends with the full-depth compile of its choice (--check).
PAPER_PLANS = (
    ("idlm_mdlm_owt_8x80gb", ["--config=configs/idlm_mdlm_owt.py", "--devices=8",
                              "--memory_gb=80", "--check"]),
    # the IDLM losses over chunks of 128 positions (model.loss_chunk; diffusion/chunks.py)
    ("idlm_mdlm_owt_chunk128_8x80gb", ["--config=configs/idlm_mdlm_owt.py",
                                       "--set=model.loss_chunk=128", "--devices=8",
                                       "--memory_gb=80", "--check"]),
    ("idlm_duo_owt_8x80gb", ["--config=configs/idlm_duo_owt.py", "--devices=8",
                             "--memory_gb=80", "--check"]),
    ("idlm_duo_owt_chunk128_8x80gb", ["--config=configs/idlm_duo_owt.py",
                                      "--set=model.loss_chunk=128", "--devices=8",
                                      "--memory_gb=80", "--check"]),
    # chunks of 32: a chunk's soft-input and loss temporaries (~17 [B, c, V] arrays in the
    # student loss) a quarter of chunk 128's
    ("idlm_duo_owt_chunk32_8x80gb", ["--config=configs/idlm_duo_owt.py",
                                     "--set=model.loss_chunk=32", "--devices=8",
                                     "--memory_gb=80", "--check"]),
    ("didi_mdlm_owt_8x80gb", ["--config=configs/didi_mdlm_owt.py", "--devices=8",
                              "--memory_gb=80", "--check"]),
    ("duo_lm1b_8x80gb", ["--config=configs/duo_lm1b.py", "--devices=8", "--memory_gb=80",
                         "--check"]),
    ("idlm_mdlm_owt_v5e16", ["--config=configs/idlm_mdlm_owt.py", "--devices=16",
                             "--memory_gb=16", "--meshes=fsdp", "--check"]),
    ("didi_mdlm_owt_v5e16", ["--config=configs/didi_mdlm_owt.py", "--devices=16",
                             "--memory_gb=16", "--meshes=fsdp", "--check"]),
    ("duo_lm1b_v5e16", ["--config=configs/duo_lm1b.py", "--devices=16", "--memory_gb=16",
                        "--meshes=fsdp", "--check"]),
    # the GPU campaign's distillation steps (benchmarks/gpu_campaign.py: DiT small, L=1024,
    # B=32, random-init teacher) on one device: its --microbatches=auto reads these, the
    # full-depth check first (the 1-2 block probes missed the IDLM step by 0.55x)
    *((f"campaign_{o}_b32_1gpu", ["--config=configs/mdlm_owt.py", f"--set=objective={o}",
                                  "--set=distill.teacher=random-init", "--set=model.dropout=0.0",
                                  "--set=train.global_batch_size=32", "--devices=1",
                                  "--memory_gb=78", "--meshes=fsdp", "--remats=none",
                                  "--check"])
      for o in ("idlm", "didi")),
    ("campaign_idlm_chunk128_b32_1gpu", ["--config=configs/mdlm_owt.py", "--set=objective=idlm",
                                         "--set=distill.teacher=random-init",
                                         "--set=model.dropout=0.0", "--set=model.loss_chunk=128",
                                         "--set=train.global_batch_size=32", "--devices=1",
                                         "--memory_gb=78", "--meshes=fsdp", "--remats=none",
                                         "--check"]),
    # the campaign's real-text stages (gpu_campaign.text_configs: DiT 384 x 8 / GPT-2 384 x 8,
    # GPT-2 vocabulary, L=256, bf16) on one device with JAX's usable 72 GiB
    *((f"campaign_text_{name}_1gpu",
       [f"--config={spec}", "--set=data.tokenizer=gpt2", "--set=data.seq_len=256",
        "--set=model.hidden_size=384", "--set=model.n_blocks=8", "--set=model.n_heads=6",
        "--set=model.dtype=bfloat16", *extra, f"--set=train.global_batch_size={batch}",
        "--devices=1", "--memory_gb=72", "--meshes=fsdp", "--remats=none", "--check"])
      for name, spec, batch, extra in (
          ("teacher", "configs/demo_teacher.py", 256, ["--set=model.cond_dim=128"]),
          ("idlm", "configs/demo_teacher.py", 128,
           ["--set=model.cond_dim=128", "--set=objective=idlm",
            "--set=distill.teacher=random-init", "--set=distill.fake_steps=1"]),
          ("ar", "configs/ar_embedded.py", 256, ["--set=model.n_positions=256"]))),
    # LLaDA-8B (issue #18): bf16 inference at L=512 for global batches 1..8 and full
    # fine-tuning (SFT shapes: L=512), on one 80 GB accelerator and on a v5e-16 slice (FSDP).
    # The "tpu:" targets compile deviceless for TPU and need the libtpu package (not a project
    # dependency); v5p (95 GiB HBM per chip), one chip, stands in for one 80 GB accelerator
    # with a compiler that, like XLA:GPU, keeps bf16 matmuls in bf16 (XLA:CPU does not).
    ("llada8b_infer_L512_1x80gb_cpu", ["--llada=forward", "--devices=1", "--memory_gb=80",
                                       "--seq-len=512", "--batches=1,2,4,8", "--meshes=fsdp"]),
    ("llada8b_infer_L512_1x80gb_tpuv5p", ["--llada=forward", "--devices=1", "--memory_gb=80",
                                          "--seq-len=512", "--batches=1,2,4,8",
                                          "--meshes=fsdp", "--target=tpu:v5p:2x2x1"]),
    ("llada8b_infer_L512_v5e16", ["--llada=forward", "--devices=16", "--memory_gb=16",
                                  "--seq-len=512", "--batches=1,2,4,8", "--meshes=fsdp",
                                  "--target=tpu:v5e:4x4"]),
    ("llada8b_sft_L512_1x80gb_cpu", ["--llada=finetune", "--devices=1", "--memory_gb=80",
                                     "--seq-len=512", "--meshes=fsdp"]),
    ("llada8b_sft_L512_1x80gb_tpuv5p", ["--llada=finetune", "--devices=1", "--memory_gb=80",
                                        "--seq-len=512", "--meshes=fsdp",
                                        "--target=tpu:v5p:2x2x1"]),
    ("llada8b_sft_L512_v5e16", ["--llada=finetune", "--devices=16", "--memory_gb=16",
                                "--seq-len=512", "--meshes=fsdp", "--target=tpu:v5e:4x4"]),
)


def paper_plans(out: str, only: str = "") -> None:
  """Every PAPER_PLANS entry (or those whose name contains `only`) into `out`, then the index
  (out/index.md: every plan's table, from the JSON files)."""
  for name, argv in PAPER_PLANS:
    if only and only not in name:
      continue
    if (pathlib.Path(out) / f"{name}.json").exists():
      print(f"{name}: exists, skipped", flush=True)
      continue
    print(f"== {name}", flush=True)
    main(argv + [f"--name={name}", f"--out={out}"])
  write_index(out)


def write_index(out: str) -> None:
  """out/index.md from every out/*.json plan."""
  plans = [json.loads(p.read_text()) for p in sorted(pathlib.Path(out).glob("*.json"))]
  plans = [p for p in plans if "settings" in p or "batches" in p]  # not the check files
  text = ("# Memory plans\n\nGenerated by `python -m benchmarks.plan --paper` from the JSON "
          "files beside this one (docs/scaling.md, 'Memory planning'). GiB per device; "
          "'calibrated' = CPU persistent bytes + CPU temporaries x the H100 scale.\n\n")
  (pathlib.Path(out) / "index.md").write_text(text + "\n".join(markdown(p) for p in plans))


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default=None, help="a config (spec) whose train step to plan")
  ap.add_argument("--set", action="append", default=[], help="config override field=value")
  ap.add_argument("--llada", choices=["forward", "finetune"], default=None,
                  help="plan LLaDA-8B instead of a config")
  ap.add_argument("--seq-len", type=int, default=4096, help="--llada: tokens per row")
  ap.add_argument("--batches", default="",
                  help="--llada=forward: plan these global batches (e.g. 1,2,4,8) instead "
                       "of rows per device")
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--memory_gb", type=float, default=80.0, help="memory per device, GiB")
  ap.add_argument("--headroom", type=float, default=0.1,
                  help="fraction kept free (allocator, workspaces, fragmentation)")
  ap.add_argument("--target", default="cpu", help="cpu or tpu:<topology> (libtpu, deviceless)")
  ap.add_argument("--temp-scale", type=float, default=None,
                  help="temporaries' scale (default: calibrate on the H100 measurement; "
                       "1.0 = raw CPU numbers)")
  ap.add_argument("--remats", default="none,block")
  ap.add_argument("--meshes", default="fsdp,dp")
  ap.add_argument("--check", action="store_true",
                  help="also compile the chosen setting at full depth")
  ap.add_argument("--name", default=None, help="file stem of the plan")
  ap.add_argument("--out", default=None, help="folder for <name>.json and <name>.md")
  ap.add_argument("--paper", default=None, const="", nargs="?",
                  help="run the committed plans (those whose name contains the value) into "
                       "--out (default benchmarks/results/plans)")
  return ap.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.paper is not None:
    return paper_plans(args.out or "benchmarks/results/plans", args.paper)
  if bool(args.config) == bool(args.llada):
    raise SystemExit("give exactly one of --config or --llada")
  devices = target_devices(args.target, args.devices)
  t0 = time.perf_counter()
  cal = None
  scale = args.temp_scale
  if scale is None and args.target != "cpu":
    scale = 1.0  # the calibration maps XLA:CPU's temporaries to a GPU's; a TPU compile is real
  if scale is None:
    cal = calibration(target_devices(args.target, 1))
    scale = cal["temp_scale"]
    print(f"calibration: CPU plan of the H100 teacher step {cal['cpu']['total_gib']:.2f} GiB "
          f"(depth-extrapolated {cal['extrapolated_cpu_gib']:.2f}) vs {cal['measured_gib']} "
          f"GiB measured -> temporaries x {scale:.3f}", flush=True)
  log = lambda msg: print(msg, flush=True)
  if args.llada and args.batches:
    if args.llada != "forward":
      raise SystemExit("--batches plans the forward only (--llada=forward)")
    plan = plan_llada_batches(devices, args.memory_gb, scale, args.headroom, args.seq_len,
                              tuple(int(b) for b in args.batches.split(",")),
                              mesh=args.meshes.split(",")[0], log=log)
  elif args.llada:
    plan = plan_llada(args.llada, devices, args.memory_gb, scale, args.headroom,
                      args.seq_len, meshes=tuple(args.meshes.split(",")),
                      remats=tuple(args.remats.split(",")), log=log)
  else:
    plan = plan_objective(args.config, base_overrides(args.config) + args.set, devices,
                          args.memory_gb, scale, args.headroom,
                          remats=tuple(args.remats.split(",")),
                          meshes=tuple(args.meshes.split(",")), check=args.check, log=log)
  stem = args.name or (pathlib.Path(args.config or "llada").stem + f"_{args.devices}x"
                       f"{args.memory_gb:g}gb")
  plan.update(name=stem, target=args.target, calibration=cal, wall_s=time.perf_counter() - t0,
              command="python -m benchmarks.plan " + " ".join(sys.argv[1:] if argv is None
                                                               else argv),
              jax=jax.__version__)
  text = markdown(plan)
  print(text)
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(plan, indent=1, default=float) + "\n")
    (out / f"{stem}.md").write_text(text)
  return plan


if __name__ == "__main__":
  main()
