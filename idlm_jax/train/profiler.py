"""A `jax.profiler` trace of a configured step range, written into the workdir (as clu's
`periodic_actions.Profile` does): <workdir>/profile/, readable with TensorBoard's profile
plugin or Perfetto. The steps carry `jax.named_scope`s by method part (teacher_loss,
fake_update, student_update, student_rollout, discriminator_update, optimizer, ...), so a
GPU profile reads by part of the method. Only process 0 traces."""

import logging

import jax

from idlm_jax import fields as F
from idlm_jax.fields import Field

log = logging.getLogger("idlm_jax")

FIELDS = {
    "log.profile_start": Field(0, "> 0: trace train steps profile_start .. profile_start + "
                               "profile_steps - 1 with jax.profiler into <workdir>/profile "
                               "(0: no trace).", check=F.non_negative_or_off("0: off")),
    "log.profile_steps": Field(5, "steps in the profiler trace.", check=F.at_least(1)),
}


class ProfileHook:
  """Starts the trace after step start - 1 (before step `start` runs) and stops it, after
  waiting for the state, once step start + steps - 1 is done."""

  def __init__(self, logdir, start: int, steps: int):
    self.logdir, self.first, self.last = str(logdir), start, start + steps - 1
    self.active = False

  def start(self, run, step: int) -> None:
    if step == self.first - 1:
      self._begin()

  def due(self, step: int, last: bool) -> bool:
    return step == self.first - 1 or (self.active and (step >= self.last or last))

  def __call__(self, run, step: int) -> None:
    if not self.active:
      self._begin()
      return
    jax.block_until_ready(run.state)
    jax.profiler.stop_trace()
    self.active = False
    log.info("profiler: traced steps %d..%d into %s", self.first, step, self.logdir)

  def _begin(self) -> None:
    if not self.active:
      jax.profiler.start_trace(self.logdir)
      self.active = True


def hooks(config, workdir) -> list:
  """[ProfileHook] when log.profile_start > 0 (process 0 only), else []."""
  if config.log.profile_start <= 0 or jax.process_index() != 0:
    return []
  return [ProfileHook(workdir / "profile", config.log.profile_start, config.log.profile_steps)]
