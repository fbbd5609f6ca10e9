"""The profiler hook (train/profiler.py) traces the configured step range into the workdir,
and the steps carry named scopes by method part, so a profile reads by part."""

import jax
import pytest

from idlm_jax import config as config_lib
from idlm_jax.train import loop, parallel


def _config(tmp_path, *extra):
  return config_lib.load_config("configs/demo_teacher.py:smoke", [
      "train.steps=3", "ckpt.async_save=False", "log.tensorboard=False",
      f"data.cache_dir='{tmp_path / 'cache'}'", *extra])


@pytest.mark.slow
def test_trace_of_the_configured_steps_lands_in_the_workdir(tmp_path):
  cfg = _config(tmp_path, "log.profile_start=2", "log.profile_steps=1")
  run = loop.build(cfg, tmp_path / "run", devices=jax.devices()[:1])
  loop.train(run)
  run.close()
  traces = list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize("objective,scopes", [
    ("diffusion", ("teacher_loss", "optimizer")),
])
def test_steps_carry_named_scopes(objective, scopes, tmp_path):
  cfg = _config(tmp_path, f"objective={objective}")
  run = loop.build(cfg, tmp_path / "run", devices=jax.devices()[:1])
  batch = parallel.global_batch(next(run.train_iter), run.mesh)
  with parallel.mesh_context(run.mesh):
    text = run.p_train_step.lower(run.state, run.frozen, batch).as_text(debug_info=True)
  for scope in scopes:
    assert f"/{scope}/" in text, scope
