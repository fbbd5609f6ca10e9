"""The run modes (config.mode), dispatched by idlm_jax.main:

train          build, train with the evaluation hooks (validation every train.eval_every,
               samples every train.sample_every, the distillation monitor), then validate,
               sample, report and write <workdir>/results.json
eval           validation NELBO / PPL bound (or exact NLL for "ar") of the latest (or best)
               checkpoint, on the validation split or on eval.zero_shot_path's text files
               (<workdir>/results_eval.json)
sample         write sample.num_samples samples from the checkpoint (results_sample.json)
eval_samplers  the sample-quality table (evals/evaluate.py), or a distillation run's teacher
               vs student report (evals/distill_report.py), in their own folders
Each returns the built `loop.Run` with its results. Only mode "train" writes config.json,
results.json and metrics.jsonl; the others write config_<mode>.json, results_<mode>.json and
metrics_<mode>.jsonl, so they never overwrite a run's training record.

A finished run answers at once: mode "train" on a workdir whose results.json was written at
train.steps by the same config prints the stored final table (and the distillation report)
without building anything; eval.recompute=True resumes instead (nothing left to train) and
validates, samples and reports again. eval, sample and eval_samplers score eval.model (a
shipped, exported or converted model, train/teacher.py) instead of the workdir's checkpoint
when it is set.
"""

import dataclasses
import json
import logging
import math
import time
from typing import Any, Optional

import jax
from etils import epath

from idlm_jax import decoding
from idlm_jax.data import pipeline
from idlm_jax.evals import (distill_report, evaluate, likelihood, monitor, prompted_eval,
                            reasoning_eval, report, zero_shot)
from idlm_jax.evals import samples as samples_lib
from idlm_jax.fields import Field
from idlm_jax.train import checkpoint, loop, parallel

log = logging.getLogger("idlm_jax")

FIELDS = {
    "eval.zero_shot_path": Field(
        "", 'mode "eval": the NELBO / PPL bound of the checkpoint on EVERY document of these text '
        "files (file, folder or glob of .txt/.jsonl, one document per line/record; \"\" = the "
        "validation split)."),
    "eval.recompute": Field(
        False, 'mode "train" on a finished workdir (results.json written at train.steps by the '
        "same config): False prints the stored final table at once; True resumes the run "
        "(nothing left to train) and validates, samples and reports again."),
}
# fields that do not change what a finished run computed (left out of the same-config check)
RERUN_FIELDS = ("eval.recompute",)


def exact_likelihood(config) -> bool:
  """Whether validation measures the exact NLL: the causal "ar" LM's exp(NLL) is its
  perplexity, while every diffusion objective's NELBO only bounds the NLL (PPL <= exp(NELBO))."""
  return config.objective == "ar"


# ------------------------------------------------------------------ evaluation pieces


def validate_now(run: loop.Run, step: int, split=None) -> dict:
  """Validation NELBO/PPL bound on the whole split (EMA weights by default)."""
  t0 = time.time()
  split = run.val_split if split is None else split
  with parallel.mesh_context(run.mesh):
    res = likelihood.evaluate_split(run.p_eval_step, loop.eval_params(run), None, split,
                                    run.mesh, seed=run.config.seed + 1)
  scalars = {"val/nelbo": res["nelbo"], "val/ppl": res["ppl"]}
  if math.isfinite(run.unigram_nats):  # known when the training split was loaded
    res["unigram_nelbo"] = scalars["val/unigram_nelbo"] = run.unigram_nats
  run.writer.scalars(step, scalars)
  exact = exact_likelihood(run.config)  # the causal LM's NLL is exact, a NELBO a bound
  unigram = f" vs unigram {run.unigram_nats:.4f}" if math.isfinite(run.unigram_nats) else ""
  log.info("step %d  val %s %.4f nats/token (PPL %s %.2f)%s  [%d tokens, %.1fs]", step,
           "NLL" if exact else "NELBO", res["nelbo"], "=" if exact else "<=", res["ppl"], unigram,
           res["tokens"], time.time() - t0)
  return res


def sample_now(run: loop.Run, step: int) -> dict:
  """Write `sample.num_samples` decoded samples to <workdir>/samples/."""
  out = samples_lib.generate(run.config, run.process, run.graphdef, loop.eval_params(run),
                             run.tokenizer, run.mesh, seed=run.config.seed + 2,
                             aux=decoding.sampler_aux(run.config, run.state))
  counts = {k: out[k] for k in decoding.COUNTS if k in out}  # NFE (+ RGAS's disc. calls)
  path = run.writer.texts(step, "samples", out["texts"], extra={"steps": out["steps"], **counts})
  run.writer.scalars(step, {"sample/nfe": out["nfe"], "sample/seconds": out["seconds"]})
  log.info("step %d  wrote %d samples (%d steps, NFE %.1f, %.1fs) to %s\n  first: %r",
           step, len(out["texts"]), out["steps"], out["nfe"], out["seconds"], path,
           out["texts"][0][:300])
  return out


class Periodic:
  """A trainer hook running fn(run, step) every `every` steps (0: never), not at the last step
  (the mode runs it after training)."""

  def __init__(self, every: int, fn):
    self.every, self.fn = every, fn

  def due(self, step: int, last: bool) -> bool:
    return bool(self.every) and step % self.every == 0 and not last

  def __call__(self, run, step: int) -> None:
    self.fn(run, step)


def training_hooks(run: loop.Run) -> list:
  c = run.config
  hooks = [Periodic(c.train.eval_every, validate_now)]
  if c.objective != "ar":
    hooks.append(Periodic(c.train.sample_every, sample_now))
  if run.frozen is not None and c.distill.monitor_every:
    hooks.append(monitor.MonitorHook(run))
  return hooks


# ------------------------------------------------------------------ the modes


def output_name(mode: str, stem: str, suffix: str) -> str:
  """A mode's own output file: the training run's `config.json` / `results.json`; the other
  modes write `config_<mode>.json` / `results_<mode>.json`, so evaluating a finished run (e.g.
  on a new zero-shot file) never overwrites its training config or summary."""
  return f"{stem}{suffix}" if mode == "train" else f"{stem}_{mode}{suffix}"


def _start(run: loop.Run) -> None:
  if jax.process_index() == 0:
    run.workdir.mkdir(parents=True, exist_ok=True)
    name = output_name(run.config.mode, "config", ".json")
    (run.workdir / name).write_text(run.config.to_json_best_effort(indent=2))


def _restore(run: loop.Run) -> int:
  """The step of the model the mode reads: eval.model's (loaded by `loop.build`), else the
  workdir's latest (or best) checkpoint, restored."""
  if run.model_step is not None:
    return run.model_step
  step = loop.restore_latest(run)
  if step is None:
    raise FileNotFoundError(f"mode={run.config.mode!r} needs a checkpoint in "
                            f"{run.ckpt.directory}, found none")
  return step


@dataclasses.dataclass
class StoredRun:
  """What mode "train" returns on a finished workdir: the stored summary, nothing built."""

  config: Any
  workdir: epath.Path
  results: dict


def stored_summary(config, workdir) -> Optional[dict]:
  """<workdir>/results.json when it records a finished run of this same config (its step is
  train.steps, its config equals this one but for RERUN_FIELDS) and eval.recompute is off;
  else None (the run trains / resumes as usual)."""
  path = checkpoint.as_path(workdir) / "results.json"
  if config.eval.recompute or not path.exists():
    return None
  try:
    summary = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    log.warning("%s is unreadable (%s): running again", path, checkpoint.one_line(e, 100))
    return None
  if summary.get("step") != config.train.steps or "config" not in summary:
    return None  # unfinished (train.max_minutes), or written before summaries held a config
  diffs = [d for d in loop.config_diff(summary["config"],
                                       json.loads(config.to_json_best_effort()))
           if not d.startswith(RERUN_FIELDS)]
  if diffs:
    log.info("%s was written by another config (%s%s): running again", path,
             "; ".join(d.replace(" in the checkpoint", " then") for d in diffs[:3]),
             f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
    return None
  return summary


def final_table(summary: dict, workdir) -> str:
  """The final output of a run, from its stored files: the distillation report (if the run
  made one) and the summary table. Printed at the end of a run and by a rerun of it."""
  parts = []
  if summary.get("report"):
    stored = json.loads((checkpoint.as_path(workdir) / summary["report"]).read_text())
    parts.append(report.markdown(stored))
  parts.append(summary_table(summary))
  return "\n".join(parts)


def summary_table(summary: dict) -> str:
  """A Markdown table of results.json / results_<mode>.json: the likelihood labelled as what
  it is (an exact NLL and PPL "=", or a NELBO and PPL "<="), unigram baseline, samples."""
  where = summary.get("model") or summary.get("workdir", "")
  lines = [f"Results of {where} at step {summary['step']} ({summary.get('mode', 'train')}, "
           f"{summary.get('written', '')}):", "", "| quantity | value |", "|---|---|"]
  data = summary.get("eval_data", "validation split")
  if "val_nll" in summary:
    lines += [f"| NLL on the {data}, exact (nats/token) | {summary['val_nll']:.4f} |",
              f"| PPL = exp(NLL) | {summary['val_ppl']:.2f} |"]
  if "val_nelbo" in summary:
    lines += [f"| NELBO on the {data}, a bound on the NLL (nats/token) | "
              f"{summary['val_nelbo']:.4f} |",
              f"| PPL <= exp(NELBO) | {summary['val_ppl_bound']:.2f} |"]
  if "val_tokens" in summary:
    lines.append(f"| tokens scored | {summary['val_tokens']:.0f} |")
  if "unigram_nelbo" in summary:
    lines.append(f"| unigram baseline (nats/token) | {summary['unigram_nelbo']:.4f} |")
  if "num_samples" in summary:
    lines.append(f"| samples | {summary['num_samples']} at {summary['sample_steps']} steps, NFE "
                 f"{summary['sample_nfe']:.1f}, {summary['sample_seconds']:.1f} s |")
  return "\n".join(lines) + "\n"


def _show(summary: dict, workdir) -> None:
  if jax.process_index() == 0:
    print("\n" + final_table(summary, workdir), flush=True)


def train(config, workdir, devices=None):
  """Train, then validate, sample, report and summarise (see the module docstring); on a
  finished workdir of the same config, print its stored final table (a `StoredRun`)."""
  stored = stored_summary(config, workdir)
  if stored is not None:
    log.info("%s: finished at step %d (%s); its stored results follow "
             "(--config.eval.recompute=True evaluates again)", workdir, stored["step"],
             stored.get("written", "?"))
    _show(stored, workdir)
    return StoredRun(config=config, workdir=checkpoint.as_path(workdir),
                     results={"stored": stored})
  run = loop.build(config, workdir, devices)
  _start(run)
  try:
    run.results["train"] = loop.train(run, hooks=training_hooks(run))
    if "preempted_at" not in run.results["train"]:
      step = int(jax.device_get(run.state.step))
      run.results["val"] = validate_now(run, step)
      if run.process is not None:  # "ar" and "llada_sft" have no diffusion sampler
        run.results["samples"] = sample_now(run, step)
      if run.frozen is not None and config.distill.report_teacher_steps:
        run.results["report"] = distill_report.run_report(run, step, show=False)
      _show(write_summary(run, step), run.workdir)
  finally:
    run.close()
  return run


def evaluate_mode(config, workdir, devices=None) -> loop.Run:
  """Validation (or zero-shot) NELBO of the checkpoint (or of eval.model)."""
  run = loop.build(config, workdir, devices)
  _start(run)
  where = dict(process_index=jax.process_index(), process_count=jax.process_count())
  try:
    if config.eval.zero_shot_path:
      run.val_split = zero_shot.text_split(config, run.tokenizer, config.eval.zero_shot_path,
                                           **where)
    else:
      rows = pipeline.load_split(config.data, run.tokenizer, "validation")
      run.val_split = pipeline.EvalSplit(rows, batch_size=config.eval.batch_size,
                                         max_rows=int(config.data.max_val_rows), **where)
    step = _restore(run)
    run.results["val"] = validate_now(run, step)
    _show(write_summary(run, step), run.workdir)
  finally:
    run.close()
  return run


def sample(config, workdir, devices=None) -> loop.Run:
  """Samples from the checkpoint (or eval.model) into <workdir>/samples/."""
  run = loop.build(config, workdir, devices)
  _start(run)
  try:
    step = _restore(run)
    if config.objective != "ar":
      run.results["samples"] = sample_now(run, step)
    write_summary(run, step)
  finally:
    run.close()
  return run


def eval_samplers(config, workdir, devices=None) -> loop.Run:
  """The sample-quality table, or the teacher-vs-student report of a distillation run."""
  report_steps = bool(config.distill.report_teacher_steps)
  run = loop.build(config, workdir, devices, teacher=report_steps)
  _start(run)
  try:
    step = _restore(run)
    if run.frozen is not None:
      run.results["report"] = distill_report.run_report(run, step)
    else:
      run.results["eval_samplers"] = evaluate.run_eval(run, step)
  finally:
    run.close()
  return run


MODES = {"train": train, "eval": evaluate_mode, "sample": sample,
         "eval_samplers": eval_samplers, "eval_reasoning": reasoning_eval.eval_reasoning,
         "eval_prompted": prompted_eval.eval_prompted}


def write_summary(run: loop.Run, step: int) -> dict:
  """<workdir>/results.json (mode "train"; results_<mode>.json for the others): final
  validation (an exact NLL for "ar", else a NELBO bound), unigram baseline, sampling cost,
  where the report is, and the config (a rerun of the same config prints it back). Returns
  the summary (written by process 0)."""
  c = run.config
  out = {"step": step, "mode": c.mode, "workdir": str(run.workdir),
         "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
  if c.eval.model:
    out["model"] = c.eval.model
  if math.isfinite(run.unigram_nats):
    out["unigram_nelbo"] = run.unigram_nats
  if "val" in run.results:
    val = run.results["val"]
    if exact_likelihood(c):
      out.update(val_nll=val["nelbo"], val_ppl=val["ppl"])
    else:
      out.update(val_nelbo=val["nelbo"], val_ppl_bound=val["ppl"])
    out["val_tokens"] = val["tokens"]
    out["eval_data"] = (f"zero-shot text {c.eval.zero_shot_path}" if c.eval.zero_shot_path
                        else f"{c.data.source} validation split")
  if "samples" in run.results:
    s = run.results["samples"]
    out.update(sample_steps=s["steps"], sample_nfe=s["nfe"], sample_seconds=s["seconds"],
               num_samples=len(s["texts"]))
  if "report" in run.results:
    out["report"] = "distill_report/results.json"
  out["config"] = json.loads(c.to_json_best_effort())
  if jax.process_index() == 0:
    name = output_name(c.mode, "results", ".json")
    (epath.Path(run.workdir) / name).write_text(json.dumps(out, indent=2) + "\n")
  return out
