"""Progress lines with ETA for long evaluation phases (evals/progress.py)."""

import logging

from idlm_jax.evals import progress


def test_phase_logs_share_elapsed_and_eta(caplog):
  phase = progress.Phase("eval_samplers", total=100, every_s=0.0)
  with caplog.at_level(logging.INFO, logger="idlm_jax"):
    phase.advance(25, "ancestral at 16 steps, batch 1/4")
    phase.advance(75, "ancestral at 16 steps, batch 4/4")
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0].startswith("eval_samplers: 25% (ancestral at 16 steps, batch 1/4)")
  assert "ETA" in lines[0] and lines[1].startswith("eval_samplers: 100%")


def test_phase_is_quiet_between_intervals(caplog):
  phase = progress.Phase("report", total=10, every_s=3600.0)
  with caplog.at_level(logging.INFO, logger="idlm_jax"):
    for _ in range(10):
      phase.advance(1)
    phase.done()
  assert not caplog.records
