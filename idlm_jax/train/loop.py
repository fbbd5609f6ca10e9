"""The training loop: build everything, train, validate, sample, checkpoint, resume.

`run(config, workdir)` is importable (Colab, tests); `idlm_jax.main` is its CLI.
"""

import dataclasses
import json
import logging
import math
import time
from typing import Any, Optional

import jax
import ml_collections
from etils import epath

from idlm_jax import config as config_lib
from idlm_jax import models
from idlm_jax.data import pipeline, tokenizers
from idlm_jax.evals import likelihood, samples
from idlm_jax.objectives import DISTILLATION, get_objective
from idlm_jax.train import checkpoint, metrics, parallel, state as state_lib
from idlm_jax.train import teacher as teacher_lib

log = logging.getLogger("idlm_jax")


@dataclasses.dataclass
class Run:
  """Everything built for one run (returned for inspection by tests and notebooks)."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: Any
  tokenizer: Any
  graphdef: Any
  state: Any
  shardings: Any
  train_iter: Any
  val_split: Any
  objective: Any
  ckpt: Any
  writer: Any
  frozen: Any = None  # {"teacher": params} of distillation runs (never donated)
  monitor: Any = None  # evals/monitor.Monitor of distillation runs
  p_train_step: Any = None
  p_eval_step: Any = None
  unigram_nats: float = float("nan")
  results: dict = dataclasses.field(default_factory=dict)


def build(config, workdir, devices=None) -> Run:
  """Validate the config, then build mesh, data, model state, objective and checkpointer."""
  config_lib.validate(config)
  workdir = checkpoint.as_path(workdir)  # local, or a URL such as gs://bucket/run
  mesh = parallel.make_mesh(config.parallel, devices)
  divisor = parallel.batch_divisor(mesh)
  for field in ("train.global_batch_size", "eval.batch_size", "sample.batch_size"):
    section, name = field.split(".")
    if config[section][name] % divisor:
      raise config_lib.ConfigError(f"config.{field}: {config[section][name]} is not a multiple "
                                   f"of the {divisor} devices along the batch axes")
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  train_iter, val_split = load_data(config, tokenizer)
  tx = state_lib.make_optimizer(config.optim, config.train.steps)
  build_model = lambda rngs: models.build_model(config.model, tokenizer.model_vocab_size, rngs)
  # (no mesh context here: nnx.eval_shape would read the logical names as mesh axes)
  graphdef, abstract_params = state_lib.abstract_model(build_model, config.seed)
  objective = get_objective(config, graphdef, tx, tokenizer.mask_id)
  frozen = None
  if config.objective in DISTILLATION and (config.mode == "train" or (
      config.mode == "eval_samplers" and config.distill.report_teacher_steps)):
    frozen = {"teacher": teacher_lib.load(config, abstract_params, mesh,
                                          tokenizer.model_vocab_size)}
  graphdef, state, shardings = state_lib.create_state(
      build_model, tx, config.seed, mesh, init_params=frozen and frozen["teacher"],
      aux_txs=objective.aux_txs)
  best = config.mode != "train" and config.eval.checkpoint == "best"
  ckpt = checkpoint.Checkpointer(workdir / ("best" if best else "checkpoints"),
                                 every=config.ckpt.every, keep=config.ckpt.keep,
                                 async_save=config.ckpt.async_save)
  writer = metrics.MetricWriter(workdir, tensorboard=config.log.tensorboard)
  run = Run(config=config, workdir=workdir, mesh=mesh, tokenizer=tokenizer, graphdef=graphdef,
            state=state, shardings=shardings, train_iter=train_iter, val_split=val_split,
            objective=objective, ckpt=ckpt, writer=writer, frozen=frozen)
  batch_sh = parallel.batch_sharding(mesh)
  rep = parallel.replicated(mesh)
  frozen_sh = frozen and {"teacher": shardings.params}
  train_step = objective.train_step
  if config.parallel.strategy == "pmap":  # per-device step, explicit gradient pmean
    train_step = parallel.pmap_train_step(train_step, mesh)
  run.p_train_step = jax.jit(train_step, in_shardings=(shardings, frozen_sh, batch_sh),
                             out_shardings=(shardings, rep), donate_argnums=(0,))
  run.p_eval_step = jax.jit(objective.eval_step, in_shardings=(shardings.params, None, batch_sh, rep),
                            out_shardings=rep)
  return run


def load_data(config, tokenizer):
  """(train iterator, validation split) as the mode needs them; None where not needed.

  train: both. eval: the validation split, or the zero-shot text files. sample and
  eval_samplers: no data (a converted teacher samples without its training corpus).
  """
  where = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if config.mode == "train" and config.objective == "r2_finetune":  # recorded trajectories
    from idlm_jax.objectives import r2_finetune
    return r2_finetune.get_datasets(config, tokenizer, **where)
  if config.mode == "train":
    return pipeline.get_datasets(config.data, tokenizer,
                                 global_batch_size=config.train.global_batch_size,
                                 eval_batch_size=config.eval.batch_size, **where)
  if config.mode == "eval" and config.eval.zero_shot_path:  # zero-shot PPL (evals/zero_shot.py)
    from idlm_jax.evals import zero_shot
    return None, zero_shot.text_split(config, tokenizer, config.eval.zero_shot_path, **where)
  if config.mode == "eval":
    rows = pipeline.load_split(config.data, tokenizer, "validation")
    return None, pipeline.EvalSplit(rows, batch_size=config.eval.batch_size,
                                    max_rows=int(config.data.max_val_rows), **where)
  return None, None


def restore_latest(run: Run) -> Optional[int]:
  """Resume state and data position from the latest checkpoint, if any."""
  step = run.ckpt.latest_step()
  if step is None or not run.config.ckpt.resume:
    return None
  target = state_lib.abstract_state(run.state, run.shardings)
  run.state, data_state, meta = run.ckpt.restore(step, target)
  if run.train_iter is None:
    pass  # eval / sample modes read no training data
  elif data_state:
    run.train_iter.set_state(data_state)
  else:  # e.g. a converted teacher (idlm_jax.convert): no data position was saved
    log.info("the checkpoint holds no data position: the data iterator starts from scratch")
  log.info("resumed from %s at step %d (saved %s)", run.ckpt.directory, step,
               meta.get("saved_at", "?"))
  return step


def save(run: Run, step: int, force: bool = False) -> bool:
  meta = {"saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), "step": step,
          "config": json.loads(run.config.to_json_best_effort()),
          "tokenizer": run.tokenizer.name}
  return run.ckpt.save(step, run.state, run.train_iter.get_state(), meta, force=force)


def save_best(run: Run, step: int) -> None:
  """<workdir>/best: the state at the best monitored step so far (monitor's rule)."""
  best = checkpoint.Checkpointer(run.workdir / "best", every=1, keep=1, async_save=False)
  meta = {"saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), "step": step,
          "config": json.loads(run.config.to_json_best_effort()),
          "tokenizer": run.tokenizer.name}
  try:
    best.save(step, run.state, run.train_iter.get_state(), meta, force=True)
    best.wait()
  finally:
    best.close()


def eval_params(run: Run):
  return run.state.ema_params if run.config.eval.use_ema else run.state.params


def validate_now(run: Run, step: int) -> dict:
  """Validation NELBO/PPL bound on the whole split (EMA weights by default)."""
  t0 = time.time()
  with parallel.mesh_context(run.mesh):
    res = likelihood.evaluate_split(run.p_eval_step, eval_params(run), None, run.val_split,
                                    run.mesh, seed=run.config.seed + 1)
  scalars = {"val/nelbo": res["nelbo"], "val/ppl": res["ppl"]}
  if math.isfinite(run.unigram_nats):  # known when the training split was loaded
    res["unigram_nelbo"] = scalars["val/unigram_nelbo"] = run.unigram_nats
  run.writer.scalars(step, scalars)
  log.info("step %d  val NELBO %.4f nats/token (PPL <= %.2f) vs unigram %.4f  "
               "[%d tokens, %.1fs]", step, res["nelbo"], res["ppl"], run.unigram_nats,
               res["tokens"], time.time() - t0)
  return res


def sample_now(run: Run, step: int) -> dict:
  """Write `sample.num_samples` decoded samples to <workdir>/samples/."""
  out = samples.generate(run.config, run.graphdef, eval_params(run), run.tokenizer, run.mesh,
                         seed=run.config.seed + 2,
                         aux=samples.sampler_aux(run.config, run.state))  # RGAS: discriminator
  counts = {k: out[k] for k in samples.COUNTS if k in out}  # NFE (+ RGAS's disc. calls)
  path = run.writer.texts(step, "samples", out["texts"], extra={"steps": out["steps"], **counts})
  run.writer.scalars(step, {"sample/nfe": out["nfe"], "sample/seconds": out["seconds"]})
  log.info("step %d  wrote %d samples (%d steps, NFE %.1f, %.1fs) to %s\n  first: %r",
               step, len(out["texts"]), out["steps"], out["nfe"], out["seconds"], path,
               out["texts"][0][:300])
  return out


def train(run: Run, until: Optional[int] = None) -> dict:
  """The loop, from the latest checkpoint to train.steps (or to `until`, saving there)."""
  c = run.config
  start = restore_latest(run) or 0
  total = c.train.steps
  if start >= total:
    log.info("checkpoint at step %d already reaches train.steps=%d: nothing to train",
                 start, total)
  progress = metrics.Progress(start, total, c.log.progress_every_s)
  history: list[tuple[int, dict]] = []
  pending: list[tuple[int, Any]] = []
  step = start
  log.info("training steps %d..%d: %d train rows, %d val rows, global batch %d, mesh %s",
               start, total, run.train_iter.num_rows, run.val_split.num_rows,
               c.train.global_batch_size, dict(run.mesh.shape))

  def drain():
    """Fetch queued step metrics (one transfer), check them, log their mean."""
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    done = [(s, m) for (s, _), m in zip(pending, fetched)]
    pending.clear()
    if c.train.check_finite:
      metrics.check_finite(done)
    history.extend(done)

  n_batches = run.objective.batches_per_step
  if run.monitor is not None and start == 0:
    run.monitor(0, run.state)  # the step-0 student is the teacher: the entropy baseline
  with parallel.mesh_context(run.mesh):
    while step < total:
      batch = tuple(parallel.global_batch(next(run.train_iter), run.mesh)
                    for _ in range(n_batches))
      run.state, step_metrics = run.p_train_step(run.state, run.frozen,
                                                 batch[0] if n_batches == 1 else batch)
      step += 1
      pending.append((step, step_metrics))
      if step % c.train.log_every == 0 or step == total:
        drain()
        mean = metrics.mean_metrics(history[-c.train.log_every:])
        run.writer.scalars(step, {f"train/{k}": v for k, v in mean.items()})
        progress.maybe_log(step, f"loss {mean['loss']:.4f}")
      out_of_time = 0 < c.train.max_minutes <= progress.elapsed_minutes()
      last = step == total or out_of_time or step == until
      if c.train.eval_every and step % c.train.eval_every == 0 and not last:
        validate_now(run, step)
      if c.train.sample_every and step % c.train.sample_every == 0 and not last:
        sample_now(run, step)
      if run.monitor is not None and step % c.distill.monitor_every == 0:
        drain()
        run.monitor(step, run.state, save_best=lambda: save_best(run, step))
      if last or step % c.ckpt.every == 0 or run.ckpt.reached_preemption(step):
        drain()  # never checkpoint past a non-finite step
        save(run, step, force=last)
      if run.ckpt.reached_preemption(step):
        log.warning("preemption: saved step %d, exiting cleanly", step)
        run.ckpt.wait()
        return {"preempted_at": step}
      if out_of_time:
        log.info("train.max_minutes=%.1f reached at step %d", c.train.max_minutes, step)
        break
      if step == until:
        break
  progress.maybe_log(step, "done", force=True)
  run.ckpt.wait()
  return {"final_step": step, "history": history}


def teacher_from_scratch(config, workdir, devices=None):
  """distill.teacher = "scratch:<config spec>": train that teacher config into
  <workdir>/teacher first (resuming it if interrupted), then distil it. Returns the config
  with distill.teacher pointing at the trained teacher."""
  spec = config.distill.teacher[len("scratch:"):]
  teacher_dir = checkpoint.as_path(workdir) / "teacher"
  if not (teacher_dir / "results.json").is_file():  # written when the teacher run finished
    log.info("distill.teacher: training the teacher %s into %s first", spec, teacher_dir)
    run(config_lib.load_config(spec, [f"data.cache_dir={config.data.cache_dir}"]), teacher_dir,
        devices)
  config = ml_collections.ConfigDict(config.to_dict())
  config.distill.teacher = str(teacher_dir)
  return config


def run(config, workdir, devices=None) -> Run:
  """Main entry: train (mode "train"), or evaluate / sample the latest checkpoint."""
  if config.objective in DISTILLATION and config.distill.teacher.startswith("scratch:"):
    config = teacher_from_scratch(config, workdir, devices)
  r = build(config, workdir, devices)
  if config.objective in DISTILLATION and config.mode == "train" and \
      config.distill.monitor_every:
    from idlm_jax.evals import monitor
    r.monitor = monitor.Monitor(r)
  if jax.process_index() == 0:
    r.workdir.mkdir(parents=True, exist_ok=True)
    (r.workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  if r.train_iter is not None:
    r.unigram_nats = pipeline.unigram_baseline(r.train_iter, r.val_split)
    log.info("corpus unigram baseline: %.4f nats/token (validation tokens under the "
             "train unigram)", r.unigram_nats)
  try:
    if config.mode == "train":
      r.results["train"] = train(r)
      step = int(jax.device_get(r.state.step))
    else:
      step = restore_latest(r)
      if step is None:
        raise FileNotFoundError(f"mode={config.mode!r} needs a checkpoint in "
                                f"{r.ckpt.directory}, found none")
    if config.mode == "eval_samplers" and r.frozen is not None:  # teacher vs student
      from idlm_jax.evals import distill_report
      r.results["report"] = distill_report.run_report(r, step)
    elif config.mode == "eval_samplers":  # sample-quality table/plots (evals/evaluate.py)
      from idlm_jax.evals import evaluate
      r.results["eval_samplers"] = evaluate.run_eval(r, step)
    elif "preempted_at" not in r.results.get("train", {}):
      if config.mode in ("train", "eval"):
        r.results["val"] = validate_now(r, step)
      if config.mode in ("train", "sample") and config.objective != "ar":
        r.results["samples"] = sample_now(r, step)
      if config.mode == "train" and r.frozen is not None and \
          config.distill.report_teacher_steps:
        from idlm_jax.evals import distill_report
        r.results["report"] = distill_report.run_report(r, step)
      _write_summary(r, step)
  finally:
    r.ckpt.wait()
    r.writer.close()
  return r


def _write_summary(r: Run, step: int) -> None:
  """<workdir>/results.json: final validation, unigram baseline and sampling cost."""
  if jax.process_index() != 0:
    return
  out = {"step": step}
  if math.isfinite(r.unigram_nats):
    out["unigram_nelbo"] = r.unigram_nats
  if "val" in r.results:
    out.update(val_nelbo=r.results["val"]["nelbo"], val_ppl_bound=r.results["val"]["ppl"],
               val_tokens=r.results["val"]["tokens"])
  if "samples" in r.results:
    s = r.results["samples"]
    out.update(sample_steps=s["steps"], sample_nfe=s["nfe"], sample_seconds=s["seconds"],
               num_samples=len(s["texts"]))
  (r.workdir / "results.json").write_text(json.dumps(out, indent=2) + "\n")
