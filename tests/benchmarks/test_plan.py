"""benchmarks/plan.py: the per-device memory row of a compiled SPMD step, the bilinear depth x
rows extrapolation, the candidate row counts and the calibration arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from benchmarks import plan


def test_memory_row_counts_the_per_device_shard_of_the_arguments():
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("x",))
  sh = NamedSharding(mesh, P("x"))
  x = jax.ShapeDtypeStruct((8 * 1024, 256), jnp.float32, sharding=sh)
  compiled = jax.jit(lambda a: a * 2.0, in_shardings=sh, out_shardings=sh).lower(x).compile()
  row = plan.memory_row(compiled)
  assert row["args_gib"] * 2**30 == 1024 * 256 * 4  # one eighth of the array per device
  assert row["out_gib"] * 2**30 == 1024 * 256 * 4
  assert abs(row["total_gib"] - (row["args_gib"] + row["out_gib"] + row["temp_gib"]
                                 - row["alias_gib"])) < 1e-12


def test_bilinear_recovers_an_exact_bilinear_memory():
  truth = lambda d, r: 3.0 + 0.5 * d + r * (0.25 + 0.125 * d)
  grid = {(d, r): {"total_gib": truth(d, r)} for d in (1, 2) for r in (1, 2)}
  for d, r in ((12, 64), (32, 1), (1, 7)):
    assert abs(plan.bilinear(grid, d, r, lambda v: v["total_gib"]) - truth(d, r)) < 1e-9


def test_candidate_rows_with_and_without_accumulation():
  assert plan.candidate_rows(512, 8, True) == [64, 32, 16, 8, 4, 2, 1]
  assert plan.candidate_rows(40, 8, True) == [5, 1]  # 2 rows x 8 devices does not divide 40
  assert plan.candidate_rows(40, 8, False) == [5, 2, 1]


def test_calibrated_scales_only_the_temporaries():
  row = dict(args_gib=2.0, out_gib=2.0, alias_gib=2.0, temp_gib=10.0)
  assert plan.calibrated(row, 0.5) == 2.0 + 5.0
  assert plan.calibrated(row, 1.0) == 12.0


def test_a_non_positive_per_row_slope_is_reported_not_read_as_a_row_count():
  # the TPU compile of LLaDA-8B fine-tuning (float32, remat block) used less memory at 2 rows
  # than at 1: the committed plan must not read "256 rows" off that line
  bad = dict(gib_per_row=-0.60, max_rows=0)
  good = dict(gib_per_row=1.93, max_rows=8)
  assert plan.max_rows_text(bad) == "fit invalid (per-row slope <= 0)"
  assert plan.max_rows_text(good) == "8"
  assert plan.max_rows_text(dict(gib_per_row=1.0, max_rows=0)) == "none fits"
  text = plan.markdown_llada(dict(
      name="x", n_params=8e9, n_layers=32, mode="finetune", seq_len=512, devices=1,
      memory_gib=80, target="tpu:v5p:2x2x1", headroom=0.1, temp_scale=1.0,
      settings=[dict(param_dtype="float32", remat="block", mesh="fsdp", persistent_gib=89.6,
                     gib_1row=93.4, cpu_gib_1row=93.4, **bad)]))
  assert "fit invalid" in text and "| 256 |" not in text


def test_a_check_over_the_budget_steps_down_to_rows_that_fit(monkeypatch):
  """--check compiles the chosen rows at full depth; when that is over the budget (the 1-2
  block probes underestimated it, as for the IDLM step) the next smaller row count is
  compiled, and the chosen rows are the ones that fit."""
  spec, overrides = "configs/mdlm_owt.py:smoke", ["train.global_batch_size=16"]
  depth = plan.config_lib.load_config(spec, overrides).model.n_blocks
  compiled = []

  def fake_memory(spec, ov, mesh, devices, rows):
    probe = next((int(o.split("=")[1]) for o in ov if o.startswith("model.n_blocks=")), None)
    temp = probe * rows if probe else 2.0 * depth * rows  # full depth: twice the extrapolation
    compiled.append((probe, rows))
    return dict(args_gib=0.0, out_gib=0.0, alias_gib=0.0, temp_gib=float(temp),
                total_gib=float(temp), batches_per_step=1, compile_s=0.0)

  monkeypatch.setattr(plan, "objective_step_memory", fake_memory)
  monkeypatch.setattr(plan, "n_params", lambda *_: 1)
  budget = 10.0 * depth  # 90% of the memory: the extrapolation fits 8 rows, the check 4
  p = plan.plan_objective(spec, overrides, jax.devices()[:1], budget / 0.9, 1.0, 0.1,
                          remats=("none",), meshes=("fsdp",), check=True, log=lambda *_: None)
  assert p["settings"][0]["max_rows"] == 8
  assert compiled[-2:] == [(None, 8), (None, 4)]
  c = p["chosen"]
  assert c["rows_per_device"] == 4 and c["microbatches"] == 4 and c["check"]["rows"] == 4
  assert c["check"]["calibrated_gib"] == 8.0 * depth and c["check"]["predicted_gib"] == 4 * depth
  text = plan.markdown(p | {"name": "x", "target": "cpu"})
  assert "Check compile of the chosen setting (4 rows/device)" in text
  assert f"searched (rows/device: calibrated GiB): 8: {16.0 * depth:.2f}, 4: " in text


def test_full_depth_search_goes_down_while_over_and_up_while_under():
  cands = [16, 8, 4, 2, 1]
  for start, fit_max, want, tried in ((4, 8, 8, [4, 8, 16]), (8, 2, 2, [8, 4, 2]),
                                      (16, 16, 16, [16]), (2, 0, 0, [2, 1])):
    seen = []

    def compile_rows(r):
      seen.append(r)
      return dict(args_gib=0.0, out_gib=0.0, alias_gib=0.0, temp_gib=float(r))

    rows, compiles = plan.full_depth_search(compile_rows, cands, start, float(fit_max) + 0.5,
                                            1.0, lambda r: r / 2)
    assert (rows, seen) == (want, tried)
    assert [c["rows"] for c in compiles] == tried and compiles[0]["predicted_gib"] == start / 2
