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
                       "--max-passages=100", "--no-wheels", "--no-tokenize"])
  rows = gpu_campaign.main(["--part=all", "--smoke", f"--out={tmp_path / 'out'}",
                            f"--work={tmp_path / 'work'}", f"--carry={carry}"])
  sections = {r["section"] for r in rows}
  assert sections >= {"throughput", "attention", "profile", "generation", "xla_flags", "text"}
  assert not [r for r in rows if "error" in r]
  torch_rows = [r for r in rows if r.get("variant") == "torch smoke"]  # skipped without PyTorch
  assert torch_rows and all("skipped" in r for r in torch_rows) == (
      importlib.util.find_spec("torch") is None)
  assert any(r.get("kind") == "train" and r.get("objective") == "didi" for r in rows)
  assert any(r.get("stage") == "IDLM student" for r in rows)
