"""Metric writers (JSONL + TensorBoard), finiteness checks and progress with ETA.

The workdir may be a local path or a URL (`gs://bucket/run`): every file goes through
`etils.epath`, the filesystem layer orbax uses (tf.io.gfile when TensorFlow is installed,
otherwise fsspec, which needs `gcsfs` for gs://), TensorBoard event files too
(`_epath_event_files` routes tensorboardX's writer through it). Object stores cannot append
(gcsfs silently overwrites), so on a URL metrics.jsonl is kept whole in memory and rewritten
at most every `REMOTE_SYNC_S` seconds and at flush/close (`_RemoteLog`).
"""

import json
import logging
import math
import time
from typing import Optional

import jax
import numpy as np
from etils import epath
from tensorboardX import SummaryWriter, record_writer

from idlm_jax.train import checkpoint

log = logging.getLogger("idlm_jax")
REMOTE_SYNC_S = 60.0


class NonFiniteError(FloatingPointError):
  """A NaN/Inf appeared in a training metric; the message names the step and the metric."""


class MetricWriter:
  """Scalars to <workdir>/metrics.jsonl and TensorBoard events; texts to <workdir>/samples/.

  Only process 0 writes.
  """

  def __init__(self, workdir, tensorboard: bool = True, mode: str = "train"):
    self.workdir = epath.Path(workdir)
    self.active = jax.process_index() == 0
    self._tb = self._tb_dir = None
    self._logged_at_resume: tuple[int, set] = (-1, set())
    # the training run's record is metrics.jsonl; other modes (eval, sample) keep their own
    name = "metrics.jsonl" if mode == "train" else f"metrics_{mode}.jsonl"
    self.path = self.workdir / name
    self._jsonl = None  # opened at the first record (see _log)
    if self.active:
      self.workdir.mkdir(parents=True, exist_ok=True)
      if tensorboard:
        logdir = self.workdir / "tensorboard"
        self._tb_dir = logdir if mode == "train" else logdir / mode

  def _log(self):
    """The JSONL log, opened for appending at the first record: a Run that is built and never
    logs (inspected, evaluated, or refused at restore) holds no open file."""
    if self._jsonl is None:
      self._jsonl = _RemoteLog(self.path) if checkpoint.is_url(self.path) else \
          self.path.open("a")
    return self._jsonl

  def _board(self):
    """The TensorBoard writer, opened at the first record: a writer that never logged and was
    not closed raises at interpreter exit on Python 3.12 (tensorboardX's atexit close starts
    its queue's thread then), and a run that logs nothing leaves no empty event file."""
    if self._tb is None and self._tb_dir is not None:
      if checkpoint.is_url(self._tb_dir):
        _epath_event_files(str(self._tb_dir).split("://")[0])
      self._tb = SummaryWriter(str(self._tb_dir))
    return self._tb

  def scalars(self, step: int, values: dict) -> None:
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    resumed_at, logged = self._logged_at_resume
    if step == resumed_at:  # logged before the checkpoint we resumed from: keep the first line
      values = {k: v for k, v in values.items() if k not in logged}
      if not values:
        return
      logged.update(values)
    log = self._log()
    log.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
    if not isinstance(log, _RemoteLog):  # (that one syncs every REMOTE_SYNC_S)
      log.flush()
    board = self._board()
    if board is not None:
      for k, v in values.items():
        board.add_scalar(k, v, int(step))

  def texts(self, step: int, name: str, texts: list[str], extra: Optional[dict] = None) -> epath.Path:
    """Write samples as <workdir>/samples/<name>_step<step>.txt (+ .jsonl with metadata)."""
    out = self.workdir / "samples" / f"{name}_step{int(step)}.txt"
    if not self.active:
      return out
    out.parent.mkdir(parents=True, exist_ok=True)
    sep = "\n" + "=" * 80 + "\n"
    out.write_text(sep.join(texts) + "\n")
    with out.with_suffix(".jsonl").open("w") as f:
      for i, text in enumerate(texts):
        f.write(json.dumps({"index": i, "text": text, **(extra or {})}) + "\n")
    board = self._board()
    if board is not None:
      board.add_text(name, "\n\n---\n\n".join(texts[:8]), int(step))
    return out

  def truncate_after(self, step: int) -> int:
    """Drop the lines logged after `step` (a resumed run's checkpoint step: a killed run
    wrote them past its last checkpoint, and the resumed run writes those steps again), so
    every (step, metric) appears once; the metrics already logged at `step` itself are kept
    and not written again. Returns the number of lines dropped."""
    if not self.active:
      return 0
    if self._jsonl is not None:
      self._jsonl.close()  # reopened (appending) at the next record
      self._jsonl = None
    lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
    keep, logged = [], set()
    for line in lines:
      try:
        record = json.loads(line)
        at = int(record["step"])
      except (ValueError, KeyError, TypeError):  # a line cut by a crash mid-write
        continue
      if at <= step:
        keep.append(line if line.endswith("\n") else line + "\n")
        if at == step:
          logged |= set(record) - {"step", "time"}
    self._logged_at_resume = (int(step), logged)
    dropped = len(lines) - len(keep)
    if dropped:
      self.path.write_text("".join(keep))
    return dropped

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self.active:
      if self._jsonl is not None:
        self._jsonl.close()
        self._jsonl = None
      if self._tb is not None:
        self._tb.close()
      self._tb = self._tb_dir = None


class _RemoteLog:
  """An append-only text file on object storage: the whole text is kept and rewritten (the
  previous run's lines first, when resuming) at most every REMOTE_SYNC_S seconds on write,
  and always on flush/close."""

  def __init__(self, path: epath.Path):
    self.path = path
    self._chunks = [path.read_text()] if path.exists() else []
    self._last = time.time()
    self._dirty = False

  def write(self, text: str) -> None:
    self._chunks.append(text)
    self._dirty = True
    if time.time() - self._last >= REMOTE_SYNC_S:
      self.flush()

  def flush(self) -> None:
    if self._dirty:
      self.path.write_text("".join(self._chunks))
      self._dirty, self._last = False, time.time()

  def close(self) -> None:
    self.flush()


class _EpathEventFiles:
  """A tensorboardX record-writer factory that opens event files through etils.epath."""

  def open(self, path):
    return epath.Path(path).open("wb")

  def directory_check(self, path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _epath_event_files(scheme: str) -> None:
  """Route tensorboardX's event files under `scheme`:// through epath (its own gs:// writer
  would need google-cloud-storage; this one uses the workdir's filesystem layer)."""
  record_writer.register_writer_factory(scheme, _EpathEventFiles())


def check_finite(history: list[tuple[int, dict]]) -> None:
  """Raise NonFiniteError naming the first step and metric that is NaN or Inf."""
  for step, metrics in history:
    for name, value in metrics.items():
      if not np.all(np.isfinite(value)):
        raise NonFiniteError(f"non-finite {name} = {float(value)} at step {step}; training "
                             f"stopped (the last checkpoint before it is intact)")


def mean_metrics(history: list[tuple[int, dict]]) -> dict:
  """Average of fetched per-step metrics (host numpy)."""
  keys = history[0][1].keys()
  return {k: float(np.mean([m[k] for _, m in history])) for k in keys}


class Progress:
  """Logs steps/s and ETA at most every `every_s` seconds."""

  def __init__(self, start_step: int, total_steps: int, every_s: float):
    self.total, self.every_s = total_steps, every_s
    self._t0 = self._last = time.time()
    self._step0 = start_step

  def maybe_log(self, step: int, extra: str = "", force: bool = False) -> None:
    now = time.time()
    if not force and now - self._last < self.every_s:
      return
    self._last = now
    rate = (step - self._step0) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else math.inf
    log.info("step %d/%d  %.2f steps/s  ETA %s  %s", step, self.total, rate, _fmt(eta), extra)

  def elapsed_minutes(self) -> float:
    return (time.time() - self._t0) / 60.0


def _fmt(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
