"""The trainer: build everything a run needs, train, checkpoint, resume. It only trains:
evaluation, sampling and reports are `Hook`s and modes of idlm_jax/evals, which use `build`,
`restore_latest` and `eval_params` from here (and this module never imports them).

`build(config, workdir)` and `train(run, hooks)` are importable (Colab, tests);
`idlm_jax.main` dispatches the modes.
"""

import dataclasses
import json
import logging
import signal
import threading
import time
from typing import Any, Optional, Protocol

import jax
import ml_collections
from etils import epath

from idlm_jax import fields as F
from idlm_jax import models, objectives
from idlm_jax.data import pipeline, tokenizers
from idlm_jax.diffusion import processes
from idlm_jax.fields import ConfigError, Field
from idlm_jax.objectives.state import make_optimizer
from idlm_jax.train import checkpoint, metrics, parallel, profiler, state as state_lib
from idlm_jax.train import teacher as teacher_lib

log = logging.getLogger("idlm_jax")

FIELDS = {
    "train.steps": Field(1_000_000, "total optimiser steps.", check=F.positive),
    "train.global_batch_size": Field(512, "sequences per step, over all hosts and devices.",
                                     check=F.positive),
    "train.max_minutes": Field(0.0, ">0: stop (with a checkpoint) after this many minutes of "
                               "training.", check=F.non_negative),
    "train.log_every": Field(100, "steps between train-metric logs.", check=F.positive),
    "train.eval_every": Field(10_000, "steps between validation runs (0: only at the end).",
                              check=F.non_negative),
    "train.sample_every": Field(10_000, "steps between sample dumps (0: only at the end).",
                                check=F.non_negative),
    "train.check_finite": Field(True, "stop with the step and metric name on a NaN/Inf loss or "
                                "gradient."),
    "ckpt.every": Field(5000, "steps between checkpoints (the last step is always saved).",
                        check=F.positive),
    "ckpt.keep": Field(3, "keep the latest N checkpoints.", check=F.at_least(1)),
    "ckpt.async_save": Field(True, "orbax asynchronous saving."),
    "ckpt.resume": Field(True, "resume from the latest checkpoint in the workdir if there is "
                         "one."),
    "eval.batch_size": Field(64, "global validation batch size.", check=F.positive),
    "eval.use_ema": Field(True, "evaluate and sample with the EMA weights."),
    "eval.checkpoint": Field("latest", 'which checkpoint the eval/sample modes read: "latest" '
                             '(<workdir>/checkpoints) or "best" (<workdir>/best, kept by a '
                             "distillation run's monitor).", choices=("latest", "best")),
    "log.tensorboard": Field(True, "TensorBoard event files in the workdir (plus metrics.jsonl "
                             "always)."),
    "log.progress_every_s": Field(30.0, "seconds between progress lines (steps/s, ETA).",
                                  check=F.positive),
}


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
  objective: Any  # objectives.Objective: the pure steps
  process: Any  # diffusion.processes.Process of config.diffusion.algo
  ckpt: Any  # checkpoint.Checkpointer of the workdir (None when eval.model is scored)
  writer: Any
  train_iter: Any = None
  val_split: Any = None
  frozen: Any = None  # {"teacher": params} of distillation runs (never donated)
  p_train_step: Any = None
  p_eval_step: Any = None
  unigram_nats: float = float("nan")
  results: dict = dataclasses.field(default_factory=dict)
  model_step: Optional[int] = None  # the training step of the eval.model loaded (else None)

  def close(self) -> None:
    """Wait for a pending asynchronous checkpoint save (CheckpointSaveError if it failed) and
    close the metric files (a later record opens metrics.jsonl again, appending; TensorBoard
    stays closed). `with loop.build(...) as run:` closes at the end of the block."""
    try:
      if self.ckpt is not None:
        self.ckpt.wait()
    finally:
      self.writer.close()

  def __enter__(self) -> "Run":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class Hook(Protocol):
  """Something `train` runs between steps (validation, samples, the distillation monitor,
  the profiler). `due(step, last)` says whether it runs after `step` (`last`: the run stops
  after this step); `__call__(run, step)` runs it on the current state; an optional
  `start(run, step)` runs once before the first step."""

  def due(self, step: int, last: bool) -> bool: ...

  def __call__(self, run: Run, step: int) -> None: ...


def check_batch_sizes(config, mesh) -> None:
  """Every batch splits evenly over the devices along the batch axes, and each device's rows
  of a train batch into train.microbatches (objectives/accumulate.py)."""
  divisor = parallel.batch_divisor(mesh)
  for field in ("train.global_batch_size", "eval.batch_size", "sample.batch_size"):
    section, name = field.split(".")
    if config[section][name] % divisor:
      raise ConfigError(f"config.{field}: {config[section][name]} is not a multiple of the "
                        f"{divisor} devices along the batch axes")
  k, batch = config.train.microbatches, config.train.global_batch_size
  if batch % (divisor * k):
    raise ConfigError(f"config.train.microbatches: global_batch_size {batch} is not a multiple "
                      f"of devices x microbatches = {divisor} x {k} = {divisor * k}")


def make_objective(config, graphdef, tx, tokenizer):
  """(objectives.Objective, diffusion process or None) of config.objective for a model with
  structure `graphdef` and optimizer `tx`."""
  spec = objectives.get(config.objective)
  vocab = tokenizer.model_vocab_size
  process = processes.get(config, vocab_size=vocab, mask_id=tokenizer.mask_id) \
      if spec.uses_process else None
  ctx = objectives.Context(config=config, graphdef=graphdef, tx=tx, mask_id=tokenizer.mask_id,
                           vocab_size=vocab, process=process)
  return spec.make(ctx), process


def build(config, workdir, devices=None, *, datasets: Optional[bool] = None,
          teacher: Optional[bool] = None) -> Run:
  """Mesh, data, model state, objective and checkpointer of a (validated) config.

  datasets: load the training iterator and validation split (default: in mode "train").
  teacher: load the frozen teacher of a distillation objective (default: in mode "train").
  """
  workdir = checkpoint.as_path(workdir)  # local, or a URL such as gs://bucket/run
  mesh = parallel.make_mesh(config.parallel, devices)
  check_batch_sizes(config, mesh)
  spec = objectives.get(config.objective)
  datasets = config.mode == "train" if datasets is None else datasets
  teacher = spec.teacher and (config.mode == "train" if teacher is None else teacher)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  vocab = tokenizer.model_vocab_size
  train_iter = val_split = None
  if datasets:
    where = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if spec.data is not None:  # the objective's own training data (r2_finetune)
      train_iter, val_split = spec.data(config, tokenizer, **where)
    else:
      train_iter, val_split = pipeline.get_datasets(
          config.data, tokenizer, global_batch_size=config.train.global_batch_size,
          eval_batch_size=config.eval.batch_size, **where)
  tx = make_optimizer(config.optim, config.train.steps)
  build_model = lambda rngs: models.build_model(config.model, vocab, rngs)
  # (no mesh context here: nnx.eval_shape would read the logical names as mesh axes)
  graphdef, abstract_params = state_lib.abstract_model(build_model, config.seed)
  objective, process = make_objective(config, graphdef, tx, tokenizer)
  frozen = {"teacher": teacher_lib.load(config, abstract_params, mesh, vocab)} \
      if teacher else None
  init_params, model_step, ckpt = frozen and frozen["teacher"], None, None
  if config.mode != "train" and config.eval.model:  # a model outside the workdir: no checkpoints
    init_params, model_step = teacher_lib.load_params(config, config.eval.model, abstract_params,
                                                      mesh, vocab, field="eval.model")
  graphdef, state, shardings = state_lib.create_state(
      build_model, tx, config.seed, mesh, init_params=init_params, aux_txs=objective.aux_txs)
  if model_step is None:
    best = config.mode != "train" and config.eval.checkpoint == "best"
    ckpt = checkpoint.Checkpointer(workdir / ("best" if best else "checkpoints"),
                                   every=config.ckpt.every, keep=config.ckpt.keep,
                                   async_save=config.ckpt.async_save)
  writer = metrics.MetricWriter(workdir, tensorboard=config.log.tensorboard, mode=config.mode)
  run = Run(config=config, workdir=workdir, mesh=mesh, tokenizer=tokenizer, graphdef=graphdef,
            state=state, shardings=shardings, objective=objective, process=process, ckpt=ckpt,
            writer=writer, train_iter=train_iter, val_split=val_split, frozen=frozen,
            model_step=model_step)
  batch_sh = parallel.batch_sharding(mesh)
  rep = parallel.replicated(mesh)
  frozen_sh = frozen and {"teacher": shardings.params}
  train_step = objective.train_step
  if config.parallel.strategy == "pmap":  # per-device step, explicit gradient pmean
    train_step = parallel.pmap_train_step(train_step, mesh)
  run.p_train_step = jax.jit(train_step, in_shardings=(shardings, frozen_sh, batch_sh),
                             out_shardings=(shardings, rep), donate_argnums=(0,))
  run.p_eval_step = jax.jit(objective.eval_step,
                            in_shardings=(shardings.params, None, batch_sh, rep),
                            out_shardings=rep)
  if train_iter is not None:
    run.unigram_nats = pipeline.unigram_baseline(train_iter, val_split)
    log.info("corpus unigram baseline: %.4f nats/token (validation tokens under the "
             "train unigram)", run.unigram_nats)
  return run


# config sections whose fields decide the train state's shapes and structure
STATE_FIELDS = ("model.", "data.tokenizer", "objective", "optim.", "diffusion.", "distill.")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_diff(stored: dict, current: dict) -> list[str]:
  """`field: stored -> current` for every config field whose value differs (JSON values)."""
  a, b = _flat(stored), _flat(current)
  return [f"{k}: {a.get(k, '<absent>')!r} in the checkpoint, {b.get(k, '<absent>')!r} now"
          for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_compatible(run: Run, step: int, target) -> None:
  """Raise CheckpointMismatchError when the state stored at `step` has other arrays or
  shapes than `target` (the state this config builds), naming the config fields that differ
  from the config stored with the checkpoint. Unreadable metadata raises its own error (the
  caller treats it as a damaged checkpoint)."""
  stored = run.ckpt.stored_shapes(step)
  wanted = {checkpoint.path_name(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(target)}
  bad = [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
  if not bad:
    return
  try:
    saved_config = run.ckpt.restore_meta(step).get("config", {})
  except Exception as e:  # noqa: BLE001 (the shapes already say enough)
    saved_config, why = None, checkpoint.one_line(e, 100)
  name = bad[0]
  shape = lambda tree: "absent" if name not in tree else tree[name]
  head = (f"checkpoint step {step} at {run.ckpt.step_path(step)} holds a different model "
          f"than this config builds ({len(bad)} arrays differ, e.g. {name}: {shape(stored)} "
          f"stored, {shape(wanted)} now)")
  if saved_config is None:
    detail = f"its stored config is unreadable ({why})"
  else:
    diffs = config_diff(saved_config, json.loads(run.config.to_json_best_effort()))
    relevant = [d for d in diffs if d.startswith(STATE_FIELDS)] or diffs
    detail = ("config fields that differ from the checkpoint's: " + "; ".join(relevant[:8]) +
              (f" (+{len(relevant) - 8} more)" if len(relevant) > 8 else "")) if relevant \
        else "no config field differs (the code's model changed)"
  raise checkpoint.CheckpointMismatchError(
      f"{head}; {detail}. Resume with the checkpoint's values or use another --workdir")


def restore_latest(run: Run) -> Optional[int]:
  """Resume state and data position from the newest checkpoint that restores, if any.

  A damaged checkpoint (truncated or zeroed files, a deleted item) is skipped with a warning
  naming its step and the cause, and the next older one is tried; in mode "train" the
  skipped ones are moved to <workdir>/skipped_checkpoints (the run saves those steps again).
  A checkpoint of another model raises CheckpointMismatchError (no fallback: every step
  would mismatch alike), and so does running out of memory; none restoring raises
  CheckpointError listing each cause. A skipped checkpoint is moved, never deleted, so a
  failure that was not damage after all (a storage outage) costs time, not the checkpoint."""
  steps = run.ckpt.all_steps()[::-1]
  if not steps or not run.config.ckpt.resume:
    return None
  target = state_lib.abstract_state(run.state, run.shardings)
  skipped = []
  for step in steps:
    try:
      check_compatible(run, step, target)
      state, data_state, meta = run.ckpt.restore(step, target)
    except checkpoint.CheckpointMismatchError:
      raise
    except Exception as e:  # noqa: BLE001 (orbax / tensorstore / json raise many types)
      why = checkpoint.one_line(e)
      if isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in why:
        raise  # out of memory says nothing about the checkpoint: no fallback
      log.warning("checkpoint step %d at %s does not restore (%s): skipping it", step,
                  run.ckpt.step_path(step), why)
      skipped.append((step, why))
      continue
    break
  else:
    causes = "; ".join(f"step {s}: {why}" for s, why in skipped)
    raise checkpoint.CheckpointError(
        f"no checkpoint in {run.ckpt.directory} restores ({causes}); move that folder away to "
        "start from scratch")
  run.state = state
  if run.train_iter is None:
    pass  # eval / sample modes read no training data
  elif data_state:
    run.train_iter.set_state(data_state)
  else:  # e.g. a converted teacher (idlm_jax.convert): no data position was saved
    log.info("the checkpoint holds no data position: the data iterator starts from scratch")
  if skipped:
    log.warning("resuming from step %d instead of the unreadable newer checkpoint(s) %s",
                step, ", ".join(str(s) for s, _ in skipped))
    if run.config.mode == "train":
      if jax.process_index() == 0:
        for s, _ in skipped:
          log.warning("moved the unreadable checkpoint of step %d to %s", s,
                      run.ckpt.set_aside(s))
      run.ckpt.reload()  # every host sees the moved folders before it saves
  log.info("resumed from %s at step %d (saved %s)", run.ckpt.directory, step,
           meta.get("saved_at", "?"))
  return step


def run_meta(run: Run, step: int) -> dict:
  return {"saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), "step": step,
          "config": json.loads(run.config.to_json_best_effort()),
          "tokenizer": run.tokenizer.name}


def save(run: Run, step: int, force: bool = False) -> bool:
  return run.ckpt.save(step, run.state, run.train_iter.get_state(), run_meta(run, step),
                       force=force)


def save_best(run: Run, step: int) -> None:
  """<workdir>/best: the state at step `step` (the distillation monitor's best so far)."""
  best = checkpoint.Checkpointer(run.workdir / "best", every=1, keep=1, async_save=False)
  try:
    best.save(step, run.state, run.train_iter.get_state(), run_meta(run, step), force=True)
    best.wait()
  finally:
    best.close()


def eval_params(run: Run):
  return run.state.ema_params if run.config.eval.use_ema else run.state.params


class StopSignals:
  """SIGTERM / SIGINT while training: the handler only records the signal; the loop finishes
  the current step, writes a checkpoint and returns (`train`'s "stopped_by"). A second signal
  acts as usual (the previous handlers are back), so a stuck run can still be killed.

  Installed on single-process runs from the main thread only: a multi-host job stops at the
  preemption sync point instead (jax.distributed's notifier and orbax's
  PreemptionCheckpointingPolicy), where every host agrees on the step."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[int] = None
    self._previous: dict = {}

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = signum
    self._restore()

  def _restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.received else ""


def train(run: Run, until: Optional[int] = None, hooks=()) -> dict:
  """The loop, from the latest checkpoint to train.steps (or to `until`, saving there), with
  `hooks` (and the configured profiler) run between steps. On SIGTERM / SIGINT it saves the
  step it finishes and returns {"stopped_by": "SIGTERM", "preempted_at": step, ...}."""
  with StopSignals() as signals:
    return _train(run, until, hooks, signals)


def _train(run: Run, until: Optional[int], hooks, signals: StopSignals) -> dict:
  c = run.config
  start = restore_latest(run) or 0
  dropped = run.writer.truncate_after(start)
  if dropped:
    log.info("metrics.jsonl: dropped %d lines logged after step %d by the run that stopped "
             "there (its steps are trained again)", dropped, start)
  total = c.train.steps
  if start >= total:
    log.info("checkpoint at step %d already reaches train.steps=%d: nothing to train",
             start, total)
  hooks = list(hooks) + profiler.hooks(c, run.workdir)
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

  for hook in hooks:
    if hasattr(hook, "start"):
      hook.start(run, start)
  n_batches = run.objective.batches_per_step
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
      run.ckpt.check()  # a failed asynchronous save stops the run now
      if signals.received:  # SIGTERM / SIGINT: save this step and stop, hooks skipped
        drain()
        save(run, step, force=True)
        run.ckpt.wait()
        run.writer.flush()
        log.warning("%s: stopped after step %d, saved its checkpoint to %s; run the same "
                    "command again to resume", signals.name, step, run.ckpt.step_path(step))
        return {"stopped_by": signals.name, "preempted_at": step, "history": history}
      for hook in hooks:
        if hook.due(step, last):
          drain()  # never evaluate past a non-finite step
          hook(run, step)
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
