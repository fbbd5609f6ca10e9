"""Checkpoints through orbax (the only module that imports orbax).

Layout: <workdir>/checkpoints/<step>/{state, data_iter, meta}. orbax writes each step to a
temporary directory and renames it when complete, so a crash never leaves a half checkpoint
that looks finished. Saves happen every `ckpt.every` steps, on the last step, and at a
preemption sync point (multi-host runs with jax.distributed).

Workdirs may be local paths or URLs (`gs://bucket/run`, what every host of a pod reaches):
paths are `etils.epath.Path`s (`as_path`), the filesystem layer orbax itself uses.
"""

from typing import Any, Optional

import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

ITEMS = ("state", "data_iter", "meta")


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

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iter: dict, meta: dict, force: bool = False) -> bool:
    """Save if the policies say so (or `force`); returns whether a save started."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=ocp.args.JsonSave(data_iter),
                              meta=ocp.args.JsonSave(meta))
    return self._manager.save(step, args=args, force=force)

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
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
