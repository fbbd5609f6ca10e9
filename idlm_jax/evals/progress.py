"""Progress lines with ETA for the long evaluation phases (eval_samplers tables, distillation
reports, long sampling runs): at most one line every `every_s` seconds, on process 0 only."""

import logging
import math
import time

import jax

log = logging.getLogger("idlm_jax")


def _fmt(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Phase:
  """`total` units of work (e.g. sampling steps x batches); `advance(n, what)` after each
  piece logs "<name>: done/total (what), elapsed, ETA" when `every_s` passed since the last
  line. `done()` logs the total time if the phase took longer than `every_s`."""

  def __init__(self, name: str, total: float, every_s: float = 10.0):
    self.name, self.total, self.every_s = name, max(float(total), 1e-9), every_s
    self.units = 0.0
    self._t0 = self._last = time.time()
    self.active = jax.process_index() == 0

  def advance(self, units: float = 1.0, what: str = "") -> None:
    self.units += units
    now = time.time()
    if not self.active or now - self._last < self.every_s:
      return
    self._last = now
    elapsed = now - self._t0
    eta = elapsed / self.units * (self.total - self.units) if self.units > 0 else math.inf
    log.info("%s: %.0f%% (%s), %s elapsed, ETA %s", self.name,
             100.0 * min(self.units / self.total, 1.0), what, _fmt(elapsed), _fmt(eta))

  def done(self) -> None:
    elapsed = time.time() - self._t0
    if self.active and elapsed >= self.every_s:
      log.info("%s: done in %s", self.name, _fmt(elapsed))
