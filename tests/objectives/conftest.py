"""Fixtures shared by the distillation tests."""

import jax
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
  run = loop.build(cfg, work, devices=jax.devices()[:1])
  loop.train(run)
  return work
