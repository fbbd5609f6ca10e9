"""Checkpoints through orbax (the only module that imports orbax).

Layout: <workdir>/checkpoints/<step>/{state, data_iter, meta}. orbax writes each step to a
temporary directory and renames it when complete, so a crash never leaves a half checkpoint
that looks finished. Saves happen every `ckpt.every` steps, on the last step, and at a
preemption sync point (multi-host runs with jax.distributed).

Workdirs may be local paths or URLs (`gs://bucket/run`, what every host of a pod reaches):
paths are `etils.epath.Path`s (`as_path`), the filesystem layer orbax itself uses.
"""

import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from idlm_jax.fields import ConfigError

ITEMS = ("state", "data_iter", "meta")
SKIPPED_DIR = "skipped_checkpoints"  # unreadable checkpoints a resumed run moved aside


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir restores, or a save failed; the message names path and cause."""


class CheckpointSaveError(CheckpointError):
  """Writing a checkpoint failed (unwritable or full storage, ...); the run must stop."""


class CheckpointMismatchError(ConfigError):
  """The checkpoint was trained with a different model: the message names the step, the path
  and the config fields that differ from the checkpoint's stored config."""


def one_line(error: BaseException, limit: int = 300) -> str:
  """An exception as `Type: first line...` (orbax and tensorstore messages run to pages)."""
  text = " ".join(str(error).split())
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def path_name(path) -> str:
  """A pytree key path as a dotted name (attribute, dict and sequence keys alike)."""
  parts = []
  for k in path:
    for attr in ("name", "key", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return ".".join(parts)


def is_url(path) -> bool:
  """Whether `path` names remote storage (gs://, s3://, ...) rather than a local file."""
  return "://" in str(path)


def as_path(path) -> epath.Path:
  """A workdir or checkpoint folder: a URL as it is, a local path with ~ expanded and made
  absolute (orbax needs absolute paths; pathlib's `.absolute()` would mangle a URL)."""
  if is_url(path):
    return epath.Path(str(path))
  return epath.Path(path).expanduser().absolute()


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` holding train state, data position, metadata."""

  def __init__(self, directory, *, every: int, keep: int, async_save: bool = True,
               read_only: bool = False):
    self.directory = as_path(directory)
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(every),
            policies.PreemptionCheckpointingPolicy(),
        ]),
        preservation_policy=policies.LatestN(keep),
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)
    self._saving: Optional[int] = None  # the step of the latest save started

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The finished checkpoints' steps, oldest first."""
    return sorted(self._manager.all_steps())

  def step_path(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def stored_shapes(self, step: int) -> dict:
    """{dotted leaf name: shape} of the train state stored at `step`, read from its metadata
    (no array data), to compare with the state a config builds before restoring."""
    meta = ocp.PyTreeCheckpointHandler().metadata(self.step_path(step) / "state")
    tree = getattr(meta, "tree", meta)
    return {path_name(p): tuple(leaf.shape)
            for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}

  def set_aside(self, step: int) -> epath.Path:
    """Move the checkpoint of `step` (unreadable) out of the manager's folder, to
    <parent>/skipped_checkpoints/<folder>-<step>-<time>, so the resumed run can save that step
    again and the evidence stays for inspection; returns where it went."""
    target = self.directory.parent / SKIPPED_DIR / \
        f"{self.directory.name}-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    self.step_path(step).rename(target)
    return target

  def reload(self) -> None:
    """Re-read the steps on storage (after `set_aside`, which process 0 runs): a barrier
    first on multi-host jobs, so no host reads the folder before it changed."""
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("idlm_jax checkpoint set_aside")
    self._manager.reload()

  def save(self, step: int, state: Any, data_iter: dict, meta: dict, force: bool = False) -> bool:
    """Save if the policies say so (or `force`); returns whether a save started. Raises
    CheckpointSaveError if this save or an earlier asynchronous one failed."""
    self.check()
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=ocp.args.JsonSave(data_iter),
                              meta=ocp.args.JsonSave(meta))
    try:
      started = self._manager.save(step, args=args, force=force)
    except Exception as e:  # noqa: BLE001 (OSError, tensorstore and orbax errors)
      raise self._save_error(step, e) from e
    if started:
      self._saving = step
    return started

  def _save_error(self, step: Optional[int], error: BaseException) -> CheckpointSaveError:
    return CheckpointSaveError(f"saving a checkpoint to {self.directory} failed (step "
                               f"{step}): {one_line(error)}")

  def check(self) -> None:
    """Raise CheckpointSaveError now if a background (asynchronous) save has failed, rather
    than at the next save, possibly thousands of steps later (cheap: reads a flag)."""
    try:
      self._manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(self._saving, e) from e

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """(state, data_iter, meta) at `step`, the state placed as `abstract_state`'s shardings."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data_iter=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    out = self._manager.restore(step, args=args)
    return out.state, dict(out.data_iter), dict(out.meta)

  def restore_params(self, step: int, abstract_params: Any, use_ema: bool = True) -> Any:
    """Only the (EMA) parameters of a checkpoint, e.g. a frozen teacher or a sampling run."""
    key = "ema_params" if use_ema else "params"
    target = {key: abstract_params}
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
    return self._manager.restore(step, args=args).state[key]

  def restore_meta(self, step: int) -> dict:
    """The run metadata saved with `step` (config, tokenizer, time)."""
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    return dict(self._manager.restore(step, args=args).meta)

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Block until the pending asynchronous save is written (CheckpointSaveError if not)."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(self._saving, e) from e

  def close(self) -> None:
    self._manager.close()
