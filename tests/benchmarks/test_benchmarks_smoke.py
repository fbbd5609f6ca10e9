"""The benchmark scripts' --smoke modes, in-process on the test CPU devices (tiny shapes)."""

import json
import math

import pytest

from benchmarks import chunk_flops, dllm_r2, generation_speed, input_throughput, train_throughput

# the MDLM OWT pipeline at its :smoke size, with the 2048-id demo vocabulary (fast on a CPU)
CONFIG = ["--config=configs/mdlm_owt.py", "--set", "data.tokenizer=demo-bpe-2048"]


@pytest.mark.slow
def test_train_throughput_smoke(tmp_path):
  # one device: the steps' XLA compilation (most of this test) is not 8-way SPMD
  rows = train_throughput.main(["--smoke", *CONFIG, "--devices", "1", "--out", str(tmp_path)])
  teacher, idlm, didi, fwd32, fwd = rows
  assert [r["kind"] for r in rows] == ["train", "train", "train", "fwd", "fwd"]
  assert [r.get("objective") for r in rows] == ["teacher", "idlm", "didi", None, None]
  # the forward returning float32 logits, then the compute dtype's (float32 at :smoke)
  assert [fwd32["logits"], fwd["logits"]] == ["float32", "compute"]
  assert fwd32["logits_dtype"] == fwd["logits_dtype"] == "float32"
  assert teacher["remat"] == "none" and teacher["loss_chunk"] == 0
  # MFU = (6 N + 12 n_layers L d) tokens / step time / peak: NaN on a CPU (no peak known)
  assert math.isnan(teacher["mfu"]) and teacher["n_params"] > 0
  assert [r["batches_per_step"] for r in rows[:3]] == [1, 2, 1]  # IDLM: fake_steps + 1
  assert didi["group_size"] == 4 and didi["rollout_rows"] == 4 * 8
  for r in rows[:3]:
    for key in ("tokens_per_s", "step_ms_median", "tflops", "x_teacher_step",
                "x_teacher_per_token"):
      assert math.isfinite(r[key]) and r[key] > 0, (r["objective"], key)
    assert r["compiled_mem"]["total_gib"] > 0 and r["compiled_mem"]["alias_gib"] > 0
    assert r["tokens_per_s"] * r["step_ms_median"] / 1e3 == pytest.approx(
        r["batches_per_step"] * 8 * 32)
  assert teacher["x_teacher_step"] == 1.0
  assert idlm["x_teacher_per_token"] == pytest.approx(idlm["x_teacher_step"] / 2)
  # the distillation steps hold more networks (fake / discriminator, frozen teacher)
  assert idlm["compiled_mem"]["args_gib"] > teacher["compiled_mem"]["args_gib"]
  written = [json.loads(line) for f in tmp_path.glob("*.jsonl") for line in f.read_text()
             .splitlines()]
  assert len(written) == 5 and {"device", "jax", "date", "command"} <= set(written[0])
  assert written[0]["command"].startswith("python benchmarks/train_throughput.py --smoke")
  assert written[0]["command"].count("--devices 1") == 1
  text = next(tmp_path.glob("*.md")).read_text()
  assert "| idlm_jax | train | teacher | 32 | 8 | 1 |" in text
  assert "| idlm_jax | train | idlm | 32 | 8 | 2 |" in text
  assert "| idlm_jax | train | didi (G=4, 32 rollouts) | 32 | 8 | 1 |" in text


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_train_throughput_perf_flags_smoke():
  rows = train_throughput.main(["--smoke", *CONFIG, "--devices", "1", "--objectives=teacher",
                                "--mode=train", "--loss-chunk", "8", "--remat", "block"])
  assert len(rows) == 1 and rows[0]["loss_chunk"] == 8 and rows[0]["remat"] == "block"
  assert rows[0]["step_ms_median"] > 0 and rows[0]["x_teacher_step"] == 1.0


def test_a_step_out_of_memory_runs_again_with_twice_the_microbatches(monkeypatch):
  """On a device a step that runs out of memory is kept as an error row and measured again
  at 2k microbatches (while 2k divides B); any other failure is one error row."""
  tried = []

  def bench(name, cfg, *_):
    tried.append(cfg.train.microbatches)
    if cfg.train.microbatches < 4:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB")
    return dict(kind="train", objective=name, microbatches=cfg.train.microbatches,
                step_ms_median=1.0, batches_per_step=1)

  monkeypatch.setattr(train_throughput, "bench_objective", bench)
  args = train_throughput.parse_args([*CONFIG, "--B", "8"])
  rows = train_throughput.bench_with_fallback("didi", "configs/mdlm_owt.py:smoke", args, None)
  assert tried == [1, 2, 4] and [r["microbatches"] for r in rows] == [1, 2, 4]
  assert ["error" in r for r in rows] == [True, True, False]
  assert not train_throughput.retry_with_more_microbatches("RESOURCE_EXHAUSTED", 8, 8)
  assert not train_throughput.retry_with_more_microbatches("ValueError: shapes", 8, 1)
  monkeypatch.setattr(train_throughput, "bench_objective",
                      lambda *_: (_ for _ in ()).throw(ValueError("a bug")))
  rows = train_throughput.bench_with_fallback("idlm", "configs/mdlm_owt.py:smoke", args, None)
  assert len(rows) == 1 and rows[0]["error"] == "ValueError: a bug"


def test_train_throughput_microbatches_and_torch_rows(tmp_path):
  """A per-objective train.microbatches, and the PyTorch reference's rows read from a file
  (gpu_campaign runs the reference before JAX takes the GPU) with each row's ratio to them."""
  ref = [{"framework": "torch+compile", "kind": "train", "tokens_per_s": 1000.0},
         {"framework": "torch+compile", "kind": "fwd", "call_ms_median": 2.0}]
  (tmp_path / "torch.json").write_text(json.dumps(ref))
  rows = train_throughput.main(["--smoke", *CONFIG, "--devices", "1", "--objectives=teacher",
                                "--microbatches", "teacher=2", "--fwd-logits=compute",
                                "--torch-rows", str(tmp_path / "torch.json")])
  train, fwd = rows[:2]
  assert train["microbatches"] == 2 and fwd["logits"] == "compute"
  assert train["x_torch_tokens_per_s"] == pytest.approx(train["tokens_per_s"] / 1000.0)
  assert fwd["x_torch_latency"] == pytest.approx(fwd["call_ms_median"] / 2.0)
  assert rows[2:] == ref
  with pytest.raises(SystemExit, match="--microbatches"):
    train_throughput.parse_microbatches("teacher=0")


@pytest.mark.slow
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


def test_input_throughput_smoke(tmp_path):
  rows = input_throughput.main(["--smoke", "--out", str(tmp_path), "--name", "x.jsonl"])
  assert [(r["shape"], r["workers"], r["prefetch"]) for r in rows] == [("tiny", 0, 0),
                                                                      ("tiny", 0, 2)]
  step = input_throughput.step_rate()
  assert step["tokens_per_s"] > 1e5 and "H100" in step["device"]
  for r in rows:
    assert r["tokens_per_s"] == pytest.approx(r["batches"] * 32 * 64 / r["seconds"])
    assert r["steps_fed"] == pytest.approx(r["tokens_per_s"] / step["tokens_per_s"])
    assert r["paced_batches"] == 2 and 0 <= r["paced_wait_ms"] < 1e3
  written = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
  assert written == json.loads(json.dumps(rows))


def test_dllm_r2_variants():
  assert dllm_r2.variant("steps4") == {"steps": 4, "threshold": 0.0, "cache": "none", "rules": ""}
  assert dllm_r2.variant("threshold+dual")["cache"] == "dual"
  for bad in ("steps0", "steps", "stepsx", "nope"):
    with pytest.raises(KeyError):
      dllm_r2.variant(bad)


def test_dllm_r2_rows_shipped(tmp_path):
  """The accuracy-vs-steps rows on the shipped reasoning model: stepsK takes K forwards in each
  of the 2 blocks; the threshold rule at least one per block and at most one per token."""
  steps2, threshold = dllm_r2.rows("configs/reasoning_llada.py", "shipped",
                                   ["steps2", "threshold"], 8, "t", workdir=str(tmp_path),
                                   overrides=["eval.batch_size=8", "eval.reasoning.batch_size=8"])
  assert steps2["nfe"] == 4.0 and steps2["options"]["steps"] == 2 and steps2["n"] == 8
  assert 2.0 <= threshold["nfe"] <= 32.0 and threshold["options"]["threshold"] == 0.9
  for r in (steps2, threshold):
    assert 0.0 <= r["accuracy"] <= 1.0 and r["model"] == "t" and r["tokens_per_s"] > 0


def test_step_flops_depth_model(monkeypatch):
  """rest + n x per-block, and the DiDi discriminator's frozen and trained blocks apart."""
  from benchmarks import step_flops
  probes = {(): (10.0, 2.0), ("distill.didi.unfreeze_blocks=0",): (10.0, 3.0),
            ("distill.didi.unfreeze_blocks=2",): (10.0, 5.0)}
  monkeypatch.setattr(step_flops, "depth_probe", lambda name, L, B, extra=(), config="":
                      probes[tuple(extra)])
  assert step_flops.full_step("teacher", 8, 2, n_blocks=12)["flops"] == 10.0 + 12 * 2.0
  didi = step_flops.full_step("didi", 8, 2, n_blocks=12, unfreeze=4)
  assert didi["flops"] == 10.0 + 8 * 3.0 + 4 * 5.0 and didi["unfreeze_blocks"] == 4


def test_step_flops_compiles_a_step():
  from benchmarks import step_flops
  small = step_flops.step_flops("teacher", 32, 4, ["model.n_blocks=1"], "configs/mdlm_owt.py:smoke")
  large = step_flops.step_flops("teacher", 32, 8, ["model.n_blocks=1"], "configs/mdlm_owt.py:smoke")
  assert 0 < small < large


@pytest.mark.slow
def test_chunk_flops_smoke(tmp_path):
  """The chunked IDLM-Duo student loss costs more FLOPs than the unchunked one (recomputed
  soft inputs), counted over the whole loop (two chunk sizes), and the rows are written."""
  (row,) = chunk_flops.main(["--V=256", "--L=8", "--B=1", "--d=16", "--algos=duo",
                             "--losses=inverse", f"--out={tmp_path}"])
  assert row["flops_chunked"] > row["flops_unchunked"] > 0 and row["extra_units"] > 1
  (written,) = tmp_path.glob("chunk_flops_*.jsonl")
  assert json.loads(written.read_text())["algo"] == "duo"
