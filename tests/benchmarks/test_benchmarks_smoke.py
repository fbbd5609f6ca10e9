"""The benchmark scripts' --smoke modes, in-process on the test CPU devices (tiny shapes)."""

import json
import math

from benchmarks import generation_speed, train_throughput

# the MDLM OWT pipeline at its :smoke size, with the 2048-id demo vocabulary (fast on a CPU)
CONFIG = ["--config=configs/mdlm_owt.py", "--set", "data.tokenizer=demo-bpe-2048"]


def test_train_throughput_smoke(tmp_path):
  rows = train_throughput.main(["--smoke", *CONFIG, "--out", str(tmp_path), "--remat",
                                "block"])
  train, fwd = rows
  assert train["kind"] == "train" and fwd["kind"] == "fwd" and train["remat"] == "block"
  assert train["tokens_per_s"] > 0 and train["step_ms_median"] > 0 and train["tflops"] > 0
  # MFU = (6 N + 12 n_layers L d) tokens / step time / peak: NaN on a CPU (no peak known)
  assert math.isnan(train["mfu"]) and train["n_params"] > 0
  assert train["compiled_mem"]["total_gib"] > 0 and train["compiled_mem"]["alias_gib"] > 0
  written = [json.loads(line) for f in tmp_path.glob("*.jsonl") for line in f.read_text()
             .splitlines()]
  assert len(written) == 2 and {"device", "jax", "date", "command"} <= set(written[0])
  assert written[0]["command"].startswith("python benchmarks/train_throughput.py --smoke")
  assert "| idlm_jax | train | 32 | 8 |" in next(tmp_path.glob("*.md")).read_text()


def test_generation_speed_smoke(tmp_path):
  rows = generation_speed.main(["--smoke", *CONFIG, "--out", str(tmp_path)])
  assert [r["role"] for r in rows] == ["teacher", "student", "student"]
  assert [r["steps"] for r in rows] == [32, 4, 8]
  teacher, *students = rows
  assert 1 <= teacher["nfe"] <= 33 and teacher["speedup_vs_teacher"] == 1.0
  for r in students:  # few steps at L=32: every step changes a token, so NFE = steps + 1
    assert r["nfe"] == r["steps"] + 1 and r["seconds"] > 0 and r["s_per_nfe"] > 0
  text = next(tmp_path.glob("*.md")).read_text()
  assert "precision=float64" in text and "| teacher | 32 |" in text
