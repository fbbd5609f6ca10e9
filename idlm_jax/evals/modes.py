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
"""

import json
import logging
import math
import time

import jax
from etils import epath

from idlm_jax import decoding
from idlm_jax.data import pipeline
from idlm_jax.evals import (distill_report, evaluate, likelihood, monitor, prompted_eval,
                            reasoning_eval, zero_shot)
from idlm_jax.evals import samples as samples_lib
from idlm_jax.fields import Field
from idlm_jax.train import loop, parallel

log = logging.getLogger("idlm_jax")

FIELDS = {
    "eval.zero_shot_path": Field(
        "", 'mode "eval": the NELBO / PPL bound of the checkpoint on EVERY document of these text '
        "files (file, folder or glob of .txt/.jsonl, one document per line/record; \"\" = the "
        "validation split)."),
}


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
  exact = run.process is None  # the causal LM's NLL is exact, the diffusion NELBO a bound
  log.info("step %d  val %s %.4f nats/token (PPL %s %.2f) vs unigram %.4f  [%d tokens, %.1fs]",
           step, "NLL" if exact else "NELBO", res["nelbo"], "=" if exact else "<=", res["ppl"],
           run.unigram_nats, res["tokens"], time.time() - t0)
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
  step = loop.restore_latest(run)
  if step is None:
    raise FileNotFoundError(f"mode={run.config.mode!r} needs a checkpoint in "
                            f"{run.ckpt.directory}, found none")
  return step


def _finish(run: loop.Run) -> None:
  run.ckpt.wait()
  run.writer.close()


def train(config, workdir, devices=None) -> loop.Run:
  """Train, then validate, sample, report and summarise (see the module docstring)."""
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
        run.results["report"] = distill_report.run_report(run, step)
      write_summary(run, step)
  finally:
    _finish(run)
  return run


def evaluate_mode(config, workdir, devices=None) -> loop.Run:
  """Validation (or zero-shot) NELBO of the checkpoint."""
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
    write_summary(run, step)
  finally:
    _finish(run)
  return run


def sample(config, workdir, devices=None) -> loop.Run:
  """Samples from the checkpoint into <workdir>/samples/."""
  run = loop.build(config, workdir, devices)
  _start(run)
  try:
    step = _restore(run)
    if config.objective != "ar":
      run.results["samples"] = sample_now(run, step)
    write_summary(run, step)
  finally:
    _finish(run)
  return run


def eval_samplers(config, workdir, devices=None) -> loop.Run:
  """The sample-quality table, or the teacher-vs-student report of a distillation run."""
  report = bool(config.distill.report_teacher_steps)
  run = loop.build(config, workdir, devices, teacher=report)
  _start(run)
  try:
    step = _restore(run)
    if run.frozen is not None:
      run.results["report"] = distill_report.run_report(run, step)
    else:
      run.results["eval_samplers"] = evaluate.run_eval(run, step)
  finally:
    _finish(run)
  return run


MODES = {"train": train, "eval": evaluate_mode, "sample": sample,
         "eval_samplers": eval_samplers, "eval_reasoning": reasoning_eval.eval_reasoning,
         "eval_prompted": prompted_eval.eval_prompted}


def write_summary(run: loop.Run, step: int) -> None:
  """<workdir>/results.json (mode "train"; results_<mode>.json for the others): final
  validation, unigram baseline and sampling cost."""
  if jax.process_index() != 0:
    return
  out = {"step": step}
  if math.isfinite(run.unigram_nats):
    out["unigram_nelbo"] = run.unigram_nats
  if "val" in run.results:
    out.update(val_nelbo=run.results["val"]["nelbo"], val_ppl_bound=run.results["val"]["ppl"],
               val_tokens=run.results["val"]["tokens"])
  if "samples" in run.results:
    s = run.results["samples"]
    out.update(sample_steps=s["steps"], sample_nfe=s["nfe"], sample_seconds=s["seconds"],
               num_samples=len(s["texts"]))
  name = output_name(run.config.mode, "results", ".json")
  (epath.Path(run.workdir) / name).write_text(json.dumps(out, indent=2) + "\n")
