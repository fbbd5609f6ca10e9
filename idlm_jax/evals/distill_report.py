"""The quality-versus-steps table of a distillation run: the frozen teacher at
`distill.report_teacher_steps` against the EMA student at `eval.sampling_steps`, with the same
sampler, seeds, sample count and evaluator (evals/evaluate.py). Written to
<workdir>/distill_report/{results.json, results.md, *.png} and printed. With
sample.sampler="rgas" (a DiDi-Instruct run) the student is sampled with RGAS and its
discriminator, the teacher (which has none) with the plain ancestral sampler.
"""

import json
import logging
import time

import jax
import ml_collections

from idlm_jax import decoding
from idlm_jax import fields as F
from idlm_jax.data import synthetic
from idlm_jax.evals import evaluate, genppl, progress, report
from idlm_jax.fields import Field
from idlm_jax.train import loop

log = logging.getLogger("idlm_jax")

FIELDS = {
    "distill.report_teacher_steps": Field(
        "", "the final table of a distillation run: the teacher at these step counts against "
        'the student at eval.sampling_steps, same seeds and evaluator ("" = no table).',
        check=F.step_list_or_empty),
}


def rows_for(run, label: str, params, steps_list, evaluator, hmm, config=None,
             aux=None, phase=None) -> list[dict]:
  """One row per step count: `params` sampled with `config` (default: the run's) and `aux`
  (decoding.sampler_aux), scored as in eval_samplers."""
  c = config or run.config
  rows = []
  for steps in steps_list:
    d = evaluate.draw(c, run.process, run.graphdef, params, run.mesh, num_steps=steps,
                      num_samples=int(c.eval.num_samples), seed=int(c.eval.seed), aux=aux,
                      phase=phase)
    texts = run.tokenizer.decode_batch(d["tokens"].tolist())
    row = {"sampler": label, "steps": steps, **{k: d[k] for k in decoding.COUNTS if k in d}}
    row.update(evaluate.entropy_lib.throughput(len(d["tokens"]), int(c.data.seq_len),
                                               d["seconds"], d["num_batches"]))
    row.update(evaluate.evaluate_cell(d["tokens"], texts, evaluator=evaluator, hmm=hmm,
                                      tokenizer=run.tokenizer,
                                      evaluator_batch_size=int(c.eval.evaluator_batch_size)))
    row["example"] = texts[0][:200]
    rows.append(row)
  return rows


def teacher_config(config):
  """The config the teacher is sampled with: the run's, with "ancestral" for RGAS (the
  discriminator belongs to the student)."""
  if config.sample.sampler != "rgas":
    return config
  c = ml_collections.ConfigDict(config.to_dict())
  c.sample.sampler = "ancestral"
  return c


def run_report(run, step: int) -> dict:
  """Teacher vs student table on a trained distillation `loop.Run` (run.frozen = teacher)."""
  c = run.config
  hmm = synthetic.from_config(c.data.synthetic) if c.data.source == "synthetic_hmm" else None
  evaluator = None
  if c.eval.evaluator and hmm is None:
    evaluator = genppl.load_evaluator(c.eval.evaluator, c.eval.evaluator_max_length)
  sampler = c.sample.sampler
  teacher_cfg = teacher_config(c)
  teacher_steps = evaluate.parse_steps(c.distill.report_teacher_steps)
  student_steps = evaluate.parse_steps(c.eval.sampling_steps)
  n_batches = -(-int(c.eval.num_samples) // int(c.sample.batch_size))
  phase = progress.Phase("distillation report",
                         n_batches * (sum(teacher_steps) + sum(student_steps)))
  rows = rows_for(run, f"teacher {teacher_cfg.sample.sampler}", run.frozen["teacher"],
                  teacher_steps, evaluator, hmm, config=teacher_cfg, phase=phase)
  rows += rows_for(run, f"{c.objective} student {sampler}", loop.eval_params(run),
                   student_steps, evaluator, hmm, aux=decoding.sampler_aux(c, run.state),
                   phase=phase)
  phase.done()
  header = evaluate.run_header(run, step, evaluator, hmm, teacher=c.distill.teacher)
  results = {"header": header, "rows": rows,
             "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
  table = report.markdown(results)
  if jax.process_index() == 0:
    out = run.workdir / "distill_report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table)
    results["plots"] = report.plots(results, out)
    print("\n" + table, flush=True)
  log.info("distillation report: %s", run.workdir / "distill_report")
  return results
