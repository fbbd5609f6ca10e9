"""The pmap strategy (parallel.pmap_train_step) against pjit on 8 fake CPU devices: the same
parameters after a few steps of teacher pretraining, IDLM and AR training; the FSDP shardings
of pjit; per-device noise; checkpoints that restore under either strategy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.train import loop, parallel

TEACHER = "configs/demo_teacher.py:smoke"
FSDP_TP = "parallel.ici_mesh=(1, 4, 2)"  # pjit with FSDP over 4 devices and tensor parallel 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def _build(spec, work, cache, strategy, extra=()):
  cfg = config_lib.load_config(spec, [
      f"parallel.strategy='{strategy}'", f"data.cache_dir='{cache}'", "ckpt.async_save=False",
      "optim.warmup_steps=0", "log.tensorboard=False", *extra])
  return loop.build(cfg, work)


def _same_noise_step(run):
  """The run's pmap step with every device drawing the same noise for its rows."""
  step = parallel.pmap_train_step(run.objective.train_step, run.mesh, device_keys=False)
  frozen_sh = run.frozen and {"teacher": run.shardings.params}
  return jax.jit(step, in_shardings=(run.shardings, frozen_sh,
                                     parallel.batch_sharding(run.mesh)),
                 out_shardings=(run.shardings, parallel.replicated(run.mesh)),
                 donate_argnums=(0,))


def _train_both(pjit_run, pmap_run, steps: int):
  """`steps` steps of pjit on 8-row batches and of pmap on 8 identical copies of them (each
  device sees the 8 rows and draws the noise pjit draws for them: same update)."""
  pmap_step = _same_noise_step(pmap_run)
  n = pmap_run.mesh.size
  for _ in range(steps):
    rows = [next(pjit_run.train_iter) for _ in range(pjit_run.objective.batches_per_step)]
    one = tuple(parallel.global_batch(r, pjit_run.mesh) for r in rows)
    tiled = tuple(parallel.global_batch({k: np.concatenate([v] * n) for k, v in r.items()},
                                        pmap_run.mesh) for r in rows)
    unpack = lambda b: b[0] if len(b) == 1 else b
    with parallel.mesh_context(pjit_run.mesh):
      pjit_run.state, m1 = pjit_run.p_train_step(pjit_run.state, pjit_run.frozen, unpack(one))
    with parallel.mesh_context(pmap_run.mesh):
      pmap_run.state, m2 = pmap_step(pmap_run.state, pmap_run.frozen, unpack(tiled))
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5, atol=1e-6)


def _assert_close(a, b, rtol=2e-5, atol=2e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                       rtol=rtol, atol=atol), a, b)


def _spec(x):
  return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))


@pytest.mark.slow
def test_teacher_pjit_equals_pmap_and_shardings_follow_the_rules(tmp_path, cache):
  pjit_run = _build(TEACHER, tmp_path / "pjit", cache, "pjit",
                    [FSDP_TP, "train.global_batch_size=8"])
  pmap_run = _build(TEACHER, tmp_path / "pmap", cache, "pmap", ["train.global_batch_size=64"])
  assert dict(pjit_run.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  assert dict(pmap_run.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  # FSDP / tensor parallel as LOGICAL_RULES say: embed -> fsdp, vocab/heads/mlp -> tensor
  p, mu = pjit_run.state.params, pjit_run.state.opt_state[1][0].mu  # (clip, adamw(scale_by_adam))
  block = p["blocks"][0]
  expected = {("vocab_embed", "embedding"): ("tensor", "fsdp"),
              ("blocks", 0, "attn_qkv", "kernel"): ("fsdp", "tensor"),
              ("blocks", 0, "mlp_2", "kernel"): ("tensor", "fsdp"),
              ("blocks", 0, "norm1", "scale"): ("fsdp",),
              ("output_layer", "linear", "kernel"): ("fsdp", "tensor")}
  for path, spec in expected.items():
    leaf, moment = p, mu
    for k in path:
      leaf, moment = leaf[k], moment[k]
    assert _spec(leaf) == spec, (path, leaf.sharding.spec)
    assert _spec(moment) == spec, (path, moment.sharding.spec)  # optimizer moments follow
  assert block["attn_qkv"]["kernel"].addressable_shards[0].data.shape[0] * 4 == \
      block["attn_qkv"]["kernel"].shape[0]
  # pmap: everything replicated
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(pmap_run.state))
  _train_both(pjit_run, pmap_run, steps=3)
  _assert_close(pjit_run.state.params, pmap_run.state.params)
  _assert_close(pjit_run.state.ema_params, pmap_run.state.ema_params)
  _assert_close(pjit_run.state.opt_state, pmap_run.state.opt_state)
  assert int(pmap_run.state.step) == 3
  # the built pmap step folds the device index into the key: the devices draw different
  # noise, so its update differs from the same-noise one; the stored key is unchanged
  batch = parallel.global_batch(next(pmap_run.train_iter), pmap_run.mesh)
  copy = jax.tree.map(jnp.copy, pmap_run.state)
  with parallel.mesh_context(pmap_run.mesh):
    a, _ = pmap_run.p_train_step(pmap_run.state, None, batch)
    b, _ = _same_noise_step(pmap_run)(copy, None, batch)
  assert max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a.params),
                                                            jax.tree.leaves(b.params))) > 0
  np.testing.assert_array_equal(np.asarray(a.rng), np.asarray(b.rng))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, cache):
  """A 2-step smoke MDLM teacher (as in tests/objectives/test_idlm.py)."""
  work = tmp_path_factory.mktemp("teacher")
  run = _build(TEACHER, work, cache, "pjit", ["train.steps=2"])
  loop.train(run)
  return work


@pytest.mark.slow
def test_idlm_pjit_equals_pmap(teacher_dir, tmp_path, cache):
  extra = [f"distill.teacher='{teacher_dir}'", "distill.monitor_every=0"]
  pjit_run = _build("configs/demo.py:smoke", tmp_path / "pjit", cache, "pjit",
                    [*extra, "train.global_batch_size=8"])
  pmap_run = _build("configs/demo.py:smoke", tmp_path / "pmap", cache, "pmap",
                    [*extra, "train.global_batch_size=64"])
  _train_both(pjit_run, pmap_run, steps=2)  # each step: one fake update, one student update
  _assert_close(pjit_run.state.params, pmap_run.state.params)
  _assert_close(pjit_run.state.aux["fake"].params, pmap_run.state.aux["fake"].params)
  _assert_close(pjit_run.state.aux["fake"].opt_state, pmap_run.state.aux["fake"].opt_state)
  # the teacher stays untouched and replicated under pmap
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(pmap_run.frozen))


@pytest.mark.slow
def test_ar_distinct_rows_per_device_and_checkpoints_restore_under_either(tmp_path, cache):
  """The built pmap step (per-device keys) on different rows per device equals pjit: AR with
  dropout 0 draws no noise, packed rows give every device the same token count."""
  spec, extra = "configs/ar_embedded.py:smoke", ["train.steps=3", "ckpt.every=3"]
  pjit_run = _build(spec, tmp_path / "pjit", cache, "pjit", extra)
  pmap_run = _build(spec, tmp_path / "pmap", cache, "pmap", extra)
  out = [loop.train(r)["history"] for r in (pjit_run, pmap_run)]  # same data order
  for (_, m1), (_, m2) in zip(*out):
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    assert m1["tokens"] == m2["tokens"]
  _assert_close(pjit_run.state.params, pmap_run.state.params)
  # a pmap checkpoint resumes under pjit (sharded) and a pjit one under pmap (replicated)
  for src, strategy, extra_mesh in ((pmap_run, "pjit", [FSDP_TP]), (pjit_run, "pmap", [])):
    other = _build(spec, src.workdir, cache, strategy, [*extra, *extra_mesh])
    assert loop.restore_latest(other) == 3
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 other.state, src.state)
    leaves = jax.tree.leaves(other.state.params)
    assert any(not x.sharding.is_fully_replicated for x in leaves) == (strategy == "pjit")
