"""Fixtures shared by the distillation tests."""

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.train import loop


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
  """A 2-step smoke MDLM teacher checkpoint (the demo teacher's architecture, smoke size),
  trained once per test session (per xdist worker) for every distillation test."""
  work = tmp_path_factory.mktemp("teacher")
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", [
      "train.steps=2", f"data.cache_dir='{work / 'cache'}'", "ckpt.async_save=False"])
  with loop.build(cfg, work, devices=jax.devices()[:1]) as run:
    loop.train(run)
  return work


def check_sharded_resume(one, make_eight, aux: str, stop: int, total: int) -> None:
  """`one` (trained to `total` steps on 1 device) equals a run on 8 devices (`make_eight()`)
  stopped at `stop` (checkpointed) and resumed to `total`: the parameters, the aux network's
  parameters and optimizer state, and both step counters."""
  eight = make_eight()
  assert eight.mesh.size == 8
  loop.train(eight, until=stop)  # stop (checkpointed) ...
  resumed = make_eight()
  loop.train(resumed)  # ... and resume on 8 devices
  for a, b in ((one.state.params, resumed.state.params),
               (one.state.aux[aux].params, resumed.state.aux[aux].params),
               (one.state.aux[aux].opt_state, resumed.state.aux[aux].opt_state)):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6), a, b)
  assert int(resumed.state.step) == total and int(resumed.state.aux[aux].step) == total
  eight.close()
  resumed.close()
