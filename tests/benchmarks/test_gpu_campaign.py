"""benchmarks/gpu_campaign.py --smoke: every section of both device calls on a CPU at tiny
shapes (the campaign cannot rot between GPU sessions), plus the trace summary and the carry
builder's disjoint halves."""

import gzip
import importlib.util
import json
import pathlib

import pytest

from benchmarks import campaign_carry, gpu_campaign

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_carry_halves_are_disjoint_and_cover_every_passage(tmp_path):
  counts = campaign_carry.write_halves(ROOT / "idlm_jax/data/assets/corpora", tmp_path, 50)
  halves = {h: set() for h in ("teacher", "evaluator")}
  for h in halves:
    for f in (tmp_path / "text" / h).glob("*.txt.gz"):
      halves[h] |= {line for line in gzip.open(f, "rt").read().splitlines() if line}
  assert halves["teacher"] and halves["evaluator"]
  assert not halves["teacher"] & halves["evaluator"]
  assert sum(counts.values()) >= len(halves["teacher"]) + len(halves["evaluator"])


def test_summarise_trace_sums_device_events_per_step(tmp_path):
  events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
            {"ph": "X", "pid": 1, "tid": 1, "name": "gemm_fusion", "dur": 3000},
            {"ph": "X", "pid": 1, "tid": 1, "name": "loop_add_fusion", "dur": 1000},
            {"ph": "X", "pid": 2, "tid": 1, "name": "host_thing", "dur": 99000}]
  (tmp_path / "a").mkdir()
  with gzip.open(tmp_path / "a" / "x.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  row = gpu_campaign.summarise_trace(tmp_path, steps=2)
  assert row["device_ms_per_step"] == pytest.approx(2.0)
  assert dict(row["by_category"]) == {"matmul": 1.5, "fusion": 0.5}


@pytest.mark.slow
def test_smoke_runs_every_section(tmp_path):
  carry = tmp_path / "carry"
  campaign_carry.main([f"--out={carry}", f"--corpora={ROOT / 'idlm_jax/data/assets/corpora'}",
                       "--max-passages=100", "--no-wheels"])
  rows = gpu_campaign.main(["--part=all", "--smoke", f"--out={tmp_path / 'out'}",
                            f"--work={tmp_path / 'work'}", f"--carry={carry}"])
  sections = {r["section"] for r in rows}
  assert sections >= {"throughput", "attention", "profile", "generation", "xla_flags",
                      "loss_chunk", "text"}
  chunked = [r for r in rows if r["section"] == "loss_chunk" and r.get("kind") == "train"]
  assert {r["objective"] for r in chunked} == {"teacher", "idlm"}
  assert all(r["loss_chunk"] == gpu_campaign.LOSS_CHUNK for r in chunked)
  assert not [r for r in rows if "error" in r]
  torch_rows = [r for r in rows if r.get("variant") == "torch smoke"]  # skipped without PyTorch
  assert torch_rows and all("skipped" in r for r in torch_rows) == (
      importlib.util.find_spec("torch") is None)
  assert any(r.get("kind") == "train" and r.get("objective") == "didi" for r in rows)
  assert any(r.get("stage") == "IDLM student" for r in rows)
  stages = [r for r in rows if r.get("section") == "text" and "params" in r]
  assert [r["stage"] for r in stages] == ["teacher (MDLM)", "evaluator (AR)", "IDLM student"]
  assert all(r["steps"] > 0 and r["val_nelbo"] > 0 for r in stages)
  quality = [r for r in rows if r.get("section") == "text" and "gen_ppl" in r]
  roles = {r["role"] for r in quality}
  assert "data (held-out validation rows)" in roles and "idlm student ancestral" in roles
  assert all(r["num_samples"] > 0 for r in quality)


def test_targets_table_takes_the_best_variant_and_torch_ratios():
  from benchmarks import train_throughput
  rows = [{"section": "throughput", "framework": "torch+compile", "kind": "train",
           "tokens_per_s": 100.0},
          {"section": "throughput", "framework": "torch+compile", "kind": "fwd",
           "call_ms_median": 50.0},
          {"section": "throughput", "variant": "default", "framework": "idlm_jax",
           "kind": "train", "objective": "teacher", "tokens_per_s": 110.0,
           "x_teacher_step": 1.0},
          {"section": "attention", "variant": "attention=cudnn", "framework": "idlm_jax",
           "kind": "train", "objective": "teacher", "tokens_per_s": 125.0},
          {"section": "throughput", "variant": "default", "framework": "idlm_jax",
           "kind": "fwd", "logits": "compute", "call_ms_median": 45.0},
          {"section": "throughput", "variant": "default", "framework": "idlm_jax",
           "kind": "fwd", "logits": "float32", "call_ms_median": 40.0},  # not the like row
          {"section": "throughput", "variant": "default", "framework": "idlm_jax",
           "kind": "train", "objective": "idlm", "x_teacher_step": 3.5}]
  train_throughput.add_torch_ratios(rows)
  assert rows[2]["x_torch_tokens_per_s"] == pytest.approx(1.1)
  assert rows[4]["x_torch_latency"] == pytest.approx(0.9)
  lines = gpu_campaign.targets_markdown(rows).splitlines()
  teacher = next(l for l in lines if l.startswith("| teacher step"))
  assert "1.250 | attention=cudnn (attention) | yes" in teacher
  assert "0.900 | default (throughput) | no" in next(l for l in lines if l.startswith("| forward"))
  assert next(l for l in lines if l.startswith("| IDLM")).endswith("| 3.500 | default "
                                                                   "(throughput) | no |")
  assert "| DiDi step (G=4) / teacher step | <= 6.0 | not measured |" in "\n".join(lines)


def _module_level_imports(path: pathlib.Path) -> set:
  """Top-level names of the modules a file imports outside functions (absolute imports)."""
  import ast
  tree = ast.parse(path.read_text())
  inner = {id(s) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
           for s in ast.walk(f)}
  names = set()
  for node in ast.walk(tree):
    if id(node) in inner:
      continue
    if isinstance(node, ast.Import):
      names |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
      names.add(node.module.split(".")[0])
  return names


def test_every_module_level_import_is_on_the_device_or_carried():
  """The device image lacks some of the package's requirements (grain did, 2026-12-06): the
  campaign's first call would die at `import`. Every third-party module imported at module
  level by idlm_jax/ or benchmarks/ must be in the image or among the carried wheels."""
  import sys
  files = [*ROOT.joinpath("idlm_jax").rglob("*.py"), *ROOT.joinpath("benchmarks").glob("*.py")]
  first_party = {"idlm_jax", "benchmarks", "configs", "tests"}
  third = set()
  for f in files:
    third |= _module_level_imports(f) - set(sys.stdlib_module_names) - first_party
  carried = {w.split("==")[0].lower().replace("_", "-") for w in campaign_carry.WHEELS}
  available = {d.lower().replace("_", "-") for d in campaign_carry.DEVICE_IMAGE} | carried
  missing = {m for m in third
             if campaign_carry.DISTRIBUTION.get(m, m).lower().replace("_", "-") not in available}
  assert "grain" in third and not missing, missing


def test_planned_microbatches_from_the_committed_plans():
  # no memory limit known (a CPU): nothing asked; 160 GiB: DiDi in one pass (122 GiB
  # extrapolated, 20% headroom); an H200's ~128 GiB (92% of 139) and an H100's ~73: two (57
  # GiB, the full-depth compile), IDLM in one (57 GiB, ditto); a 16 GB chip: more for both
  assert gpu_campaign.planned_microbatches(None) == ""
  assert gpu_campaign.planned_microbatches(160.0) == ""
  assert gpu_campaign.planned_microbatches(128.0) == "didi=2"
  assert gpu_campaign.planned_microbatches(73.0) == "didi=2"
  small = dict(item.split("=") for item in gpu_campaign.planned_microbatches(16.0).split(","))
  assert int(small["didi"]) >= 8 and int(small["idlm"]) >= 2


@pytest.mark.slow
def test_a_section_in_its_own_process_appends_to_the_same_files(tmp_path):
  """On a device each section runs in a fresh process (the driver never holds GPU memory);
  its rows land in the driver's JSONL, and the Markdown regenerates from the file."""
  out = tmp_path / "out"
  rows = gpu_campaign.main(["--part=1", "--sections=profile", "--smoke", "--isolate=yes",
                            f"--out={out}", f"--work={tmp_path / 'work'}",
                            f"--carry={tmp_path / 'carry'}"])
  assert [r["section"] for r in rows] == ["profile"] and "error" not in rows[0]
  assert rows[0]["device_ms_per_step"] > 0 and rows[0]["device"] == "cpu"
  jsonl = next(out.glob("gpu_campaign_cpu_*.jsonl"))
  assert gpu_campaign.read_rows(jsonl) == rows
  md = jsonl.with_suffix(".md")
  first = md.read_text()
  md.unlink()
  gpu_campaign.main([f"--table={jsonl}"])
  assert md.read_text() == first and "## Profile" in first


def test_memory_table_compares_the_plan_with_the_device_peak():
  rows = [{"section": "throughput", "framework": "idlm_jax", "kind": "train",
           "objective": "didi", "B": 32, "microbatches": 2, "peak_mem_gib": 50.0},
          {"section": "throughput", "framework": "idlm_jax", "kind": "train",
           "objective": "teacher", "B": 32, "peak_mem_gib": 25.0},  # no plan: no row
          {"section": "loss_chunk", "framework": "idlm_jax", "kind": "train",
           "objective": "idlm", "loss_chunk": 128, "B": 32, "peak_mem_gib": 40.0}]
  text = gpu_campaign.memory_markdown(rows)
  plan = gpu_campaign.planned_gib("didi", 32, 2)
  committed = json.loads(gpu_campaign.CAMPAIGN_PLANS["didi"].read_text())
  assert committed["chosen"]["rows_per_device"] == 16  # its full-depth compile's rows
  assert plan == committed["chosen"]["check"]["calibrated_gib"] and 50 < plan < 60
  st = committed["settings"][0]  # other row counts: the 1-2 block probes' extrapolation
  assert gpu_campaign.planned_gib("didi", 32, 4) == st["gib_fixed"] + 8 * st["gib_per_row"]
  assert f"| didi | 32 | 2 | {plan:.1f} | 50.0 | {50.0 / plan:.2f} |" in text
  assert "| teacher |" not in text and gpu_campaign.memory_markdown([]) == ""
  chunked = gpu_campaign.planned_gib("idlm_chunk128", 32, 1)  # its own committed plan
  assert chunked < gpu_campaign.planned_gib("idlm", 32, 1)
  assert f"| idlm_chunk128 | 32 | 1 | {chunked:.1f} | 40.0 |" in text
