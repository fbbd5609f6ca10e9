"""End-to-end trainer tests on tiny configs: sharding equivalence, exact resume, NaN stop."""

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax import main
from idlm_jax.train import loop, metrics


def _config(tmp_path, *overrides):
  return config_lib.load_config("configs/demo_teacher.py:smoke", [
      f"data.cache_dir='{tmp_path / 'cache'}'", "ckpt.async_save=False", "log.tensorboard=False",
      *overrides])


def _params(run):
  return jax.device_get(run.state.params)


def _assert_trees_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


@pytest.mark.slow
def test_sharded_step_equals_single_device(tmp_path):
  cfg = _config(tmp_path, "parallel.ici_mesh=(2, 4, 1)", "train.steps=3")
  sharded = loop.build(cfg, tmp_path / "a", devices=jax.devices())
  assert dict(sharded.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  emb = sharded.state.params["vocab_embed"]["embedding"]
  assert emb.sharding.spec[1] == "fsdp"  # FSDP: parameters are split over devices
  loop.train(sharded)
  single = loop.build(_config(tmp_path, "train.steps=3"), tmp_path / "b",
                      devices=jax.devices()[:1])
  loop.train(single)
  _assert_trees_close(_params(sharded), _params(single), rtol=2e-5, atol=2e-6)
  sharded.close()
  single.close()


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
  cfg = _config(tmp_path, "train.steps=6", "ckpt.every=100")
  full = loop.build(cfg, tmp_path / "full", devices=jax.devices()[:1])
  ref = loop.train(full)
  interrupted = loop.build(cfg, tmp_path / "resume", devices=jax.devices()[:1])
  loop.train(interrupted, until=3)  # stop after step 3 (a checkpoint is saved there)
  assert interrupted.ckpt.latest_step() == 3
  resumed = loop.build(cfg, tmp_path / "resume", devices=jax.devices()[:1])
  out = loop.train(resumed)
  assert int(resumed.state.step) == 6
  assert resumed.train_iter.get_state() == full.train_iter.get_state()
  _assert_trees_close(_params(resumed), _params(full), rtol=0, atol=0)
  _assert_trees_close(jax.device_get(resumed.state.opt_state), jax.device_get(full.state.opt_state),
                      rtol=0, atol=0)
  losses = lambda h: [m["loss"] for s, m in h if s > 3]
  np.testing.assert_array_equal(losses(out["history"]), losses(ref["history"]))
  for run in (full, interrupted, resumed):
    run.close()


def test_nan_stops_with_step_and_metric(tmp_path):
  cfg = _config(tmp_path, "optim.lr=1e30", "optim.grad_clip=0.0", "optim.warmup_steps=0",
                "train.steps=12")
  run = loop.build(cfg, tmp_path / "nan", devices=jax.devices()[:1])
  with pytest.raises(metrics.NonFiniteError, match=r"non-finite (loss|grad_norm) = .* at step \d+"):
    loop.train(run)


@pytest.mark.slow
def test_run_writes_outputs_and_second_run_resumes(tmp_path, caplog):
  cfg = _config(tmp_path)
  workdir = tmp_path / "demo"
  first = main.run(cfg, workdir, devices=jax.devices()[:1])
  for name in ("config.json", "metrics.jsonl", "results.json", "samples/samples_step12.txt"):
    assert (workdir / name).exists(), name
  assert first.ckpt.latest_step() == 12
  assert first.results["val"]["nelbo"] > 0
  assert first.results["samples"]["nfe"] <= cfg.sample.steps + 1
  # finished: the same command prints the stored table (tests/evals/test_rerun.py); with
  # eval.recompute it resumes, trains nothing and evaluates again
  assert main.run(cfg, workdir, devices=jax.devices()[:1]).results["stored"]["step"] == 12
  with caplog.at_level("INFO", logger="idlm_jax"):
    second = main.run(_config(tmp_path, "eval.recompute=True"), workdir,
                      devices=jax.devices()[:1])
  assert "resumed from" in caplog.text and "nothing to train" in caplog.text
  _assert_trees_close(_params(first), _params(second), rtol=0, atol=0)
  # sampling reads no data: the run's corpus may be absent
  sample_only = main.run(_config(tmp_path, "mode='sample'", "data.source='owt'",
                                 "data.path='/nonexistent/owt'"), workdir, devices=jax.devices()[:1])
  assert sample_only.train_iter is None and sample_only.val_split is None
  assert len(sample_only.results["samples"]["texts"]) == cfg.sample.num_samples
