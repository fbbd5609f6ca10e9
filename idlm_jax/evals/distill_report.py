"""The quality-versus-steps table of a distillation run: the frozen teacher at
`distill.report_teacher_steps` against the EMA student at `eval.sampling_steps`, with the same
sampler, seeds, sample count and evaluator (evals/evaluate.py). Written to
<workdir>/distill_report/{results.json, results.md, *.png} and printed. With
sample.sampler="rgas" (a DiDi-Instruct run) the student is sampled with RGAS and its
discriminator, the teacher (which has none) with the plain ancestral sampler.
"""

import logging
import time

import jax
import ml_collections

import numpy as np

from idlm_jax import decoding
from idlm_jax import fields as F
from idlm_jax.evals import evaluate, progress, report
from idlm_jax.fields import Field
from idlm_jax.train import loop

log = logging.getLogger("idlm_jax")

FIELDS = {
    "distill.report_teacher_steps": Field(
        "", "the final table of a distillation run: the teacher at these step counts against "
        'the student at eval.sampling_steps, same seeds and evaluator ("" = no table).',
        check=F.step_list_or_empty),
}


def teacher_config(config):
  """The config the teacher is sampled with: the run's, with "ancestral" for RGAS (the
  discriminator belongs to the student)."""
  if config.sample.sampler != "rgas":
    return config
  c = ml_collections.ConfigDict(config.to_dict())
  c.sample.sampler = "ancestral"
  return c


def matched_entropy(rows: list[dict], teacher_label: str, metric: str) -> None:
  """For every student row, the teacher's quality at the student's entropy: linear
  interpolation along the teacher's quality-entropy frontier (its rows at each step count,
  over the temperature sweep), recorded as row["teacher_at_entropy"] = {steps: value}
  (None outside the frontier's entropy range: no extrapolation)."""
  frontiers = {}
  for r in rows:
    if r["sampler"].startswith(teacher_label) and r.get(metric) is not None:
      frontiers.setdefault(r["steps"], []).append((r["entropy"], r[metric]))
  for r in rows:
    if r["sampler"].startswith(teacher_label) or r.get("steps") is None:
      continue
    r["teacher_at_entropy"] = {}
    for steps, points in sorted(frontiers.items()):
      points = sorted(points)
      xs = np.array([p[0] for p in points])
      ys = np.array([p[1] for p in points])
      inside = len(points) >= 2 and xs[0] <= r["entropy"] <= xs[-1]
      r["teacher_at_entropy"][str(steps)] = float(np.interp(r["entropy"], xs, ys)) \
          if inside else None


def run_report(run, step: int, show: bool = True) -> dict:
  """Teacher vs student table on a trained distillation `loop.Run` (run.frozen = teacher):
  a data row, the teacher at distill.report_teacher_steps (over eval.temperatures: its
  quality-entropy frontier), the student at eval.sampling_steps, and for each student row the
  teacher's quality at the student's entropy (`matched_entropy`). show: print the table
  (mode "train" prints it with the run's final table instead, evals/modes.py)."""
  c = run.config
  scorer = evaluate.Scorer.for_run(run)
  teacher_cfg = teacher_config(c)
  teacher_steps = evaluate.parse_steps(c.distill.report_teacher_steps)
  student_steps = evaluate.parse_steps(c.eval.sampling_steps)
  temperatures = evaluate.parse_floats(c.eval.temperatures)
  n_batches = -(-int(c.eval.num_samples) // int(c.sample.batch_size))
  phase = progress.Phase("distillation report", n_batches * (
      len(temperatures) * sum(teacher_steps) + sum(student_steps)))
  teacher_label = f"teacher {teacher_cfg.sample.sampler}"
  rows = [evaluate.reference_row(run, scorer, int(c.eval.num_samples))] \
      if c.eval.reference_row else []
  rows += evaluate.sample_rows(run, teacher_label, run.frozen["teacher"], teacher_steps, scorer,
                               config=teacher_cfg, phase=phase,
                               temperatures=temperatures
                               if teacher_cfg.sample.sampler == "ancestral" else (1.0,))
  rows += evaluate.sample_rows(run, f"{c.objective} student {c.sample.sampler}",
                               loop.eval_params(run), student_steps, scorer,
                               aux=decoding.sampler_aux(c, run.state), phase=phase)
  phase.done()
  matched_entropy(rows, teacher_label, "gen_ppl" if scorer.evaluator else "exact_nll")
  results = {"header": evaluate.run_header(run, step, scorer, teacher=c.distill.teacher),
             "rows": rows, "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
  results = evaluate.write_results(run, "distill_report", results)
  if show and jax.process_index() == 0:
    print("\n" + report.markdown(results), flush=True)
  return results
