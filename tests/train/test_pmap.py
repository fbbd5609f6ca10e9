"""The pmap strategy (parallel.pmap_train_step) against pjit on 8 fake CPU devices: the same
parameters after a few steps of teacher pretraining, IDLM and AR training; the FSDP shardings
of pjit; per-device noise; checkpoints that restore under either strategy."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax.objectives import state as state_lib
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


# Reduction order: pjit's implicit all-reduce and pmap's pmean add the same float32 terms in
# different orders (and XLA:CPU's optimisation level changes fusion and summation order), so
# gradients agree to a few ulp of their terms, not bit for bit. Adam turns a gradient into
# ~lr * sign(g) per element: an element whose gradient is within rounding of 0 may move by up
# to 2 lr differently per step (that was the 2.9e-6 of issue #20 against atol 2e-6), but only
# a vanishing fraction of elements can. So the strategies are compared on the whole update
# relative to its size: float32 rounding gives ~1e-6 here, UPDATE_RTOL leaves 100x, and a
# missing or wrong gradient reduction changes every element's gradient (>= 0.1, see
# test_pmap_without_the_gradient_pmean_fails).
UPDATE_RTOL = 1e-4


def _update_error(init, a, b) -> float:
  """||(a - init) - (b - init)|| / ||b - init|| over all leaves (float64)."""
  num = den = 0.0
  for x0, x, y in zip(*(jax.tree.leaves(jax.device_get(t)) for t in (init, a, b))):
    x0, x, y = (np.asarray(v, np.float64) for v in (x0, x, y))
    num += float(np.sum((x - y) ** 2))
    den += float(np.sum((y - x0) ** 2))
  return (num / max(den, 1e-300)) ** 0.5


def _assert_same_update(init, a, b, rtol=UPDATE_RTOL):
  err = _update_error(init, a, b)
  assert err <= rtol, f"the two updates differ by {err:.3g} of their size (allowed {rtol})"


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
  init = jax.device_get(pmap_run.state)
  _train_both(pjit_run, pmap_run, steps=3)
  _assert_same_update(init.params, pjit_run.state.params, pmap_run.state.params)
  _assert_same_update(init.ema_params, pjit_run.state.ema_params, pmap_run.state.ema_params)
  _assert_same_update(init.opt_state, pjit_run.state.opt_state, pmap_run.state.opt_state)
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
  with _build(TEACHER, work, cache, "pjit", ["train.steps=2"]) as run:
    loop.train(run)
  return work


@pytest.mark.slow
def test_idlm_pjit_equals_pmap(teacher_dir, tmp_path, cache):
  extra = [f"distill.teacher='{teacher_dir}'", "distill.monitor_every=0"]
  pjit_run = _build("configs/demo.py:smoke", tmp_path / "pjit", cache, "pjit",
                    [*extra, "train.global_batch_size=8"])
  pmap_run = _build("configs/demo.py:smoke", tmp_path / "pmap", cache, "pmap",
                    [*extra, "train.global_batch_size=64"])
  init = jax.device_get(pmap_run.state)
  _train_both(pjit_run, pmap_run, steps=2)  # each step: one fake update, one student update
  _assert_same_update(init.params, pjit_run.state.params, pmap_run.state.params)
  _assert_same_update(init.aux["fake"].params, pjit_run.state.aux["fake"].params,
                      pmap_run.state.aux["fake"].params)
  _assert_same_update(init.aux["fake"].opt_state, pjit_run.state.aux["fake"].opt_state,
                      pmap_run.state.aux["fake"].opt_state)
  # the teacher stays untouched and replicated under pmap
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(pmap_run.frozen))


@pytest.mark.slow
def test_ar_distinct_rows_per_device_and_checkpoints_restore_under_either(tmp_path, cache):
  """The built pmap step (per-device keys) on different rows per device equals pjit: AR with
  dropout 0 draws no noise, packed rows give every device the same token count."""
  spec, extra = "configs/ar_embedded.py:smoke", ["train.steps=3", "ckpt.every=3"]
  pjit_run = _build(spec, tmp_path / "pjit", cache, "pjit", extra)
  pmap_run = _build(spec, tmp_path / "pmap", cache, "pmap", extra)
  init = jax.device_get(pmap_run.state.params)
  out = [loop.train(r)["history"] for r in (pjit_run, pmap_run)]  # same data order
  for (_, m1), (_, m2) in zip(*out):
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    assert m1["tokens"] == m2["tokens"]
  # (issue #20: elementwise atol 2e-6 failed on 1 of 65536 elements on AVX-512)
  _assert_same_update(init, pjit_run.state.params, pmap_run.state.params)
  # a pmap checkpoint resumes under pjit (sharded) and a pjit one under pmap (replicated)
  for src, strategy, extra_mesh in ((pmap_run, "pjit", [FSDP_TP]), (pjit_run, "pmap", [])):
    other = _build(spec, src.workdir, cache, strategy, [*extra, *extra_mesh])
    assert loop.restore_latest(other) == 3
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 other.state, src.state)
    leaves = jax.tree.leaves(other.state.params)
    assert any(not x.sharding.is_fully_replicated for x in leaves) == (strategy == "pjit")
    other.close()
  pjit_run.close()
  pmap_run.close()


# ------------------------------------------------------------------ the gradient all-reduce
#
# The comparisons above feed every device the same rows and noise (teacher, IDLM) or draw no
# noise (AR), so they hold for a step that forgets to average gradients too (issue #19). Here
# every device gets its own rows and its own noise (the built step's per-device keys), and the
# reference is computed without shard_map: each device's gradient by a plain jit of the
# objective's step on its rows and key, their mean fed to the optimizer. Adam's first moment
# after one step is exactly (1 - b1) * the gradient it was given, so it is compared element
# by element, with a bound derived from float32 summation: the pmean adds 8 per-device terms
# (error <= 7 u sum_i |g_i| / 8 in any order), each per-device gradient is itself a sum over
# the device's tokens computed by a differently compiled program (a few ulp of its terms);
# GRAD_ULPS = 64 ulp of the mean absolute per-device term covers both.

GRAD_ULPS = 64
U32 = float(np.finfo(np.float32).eps) / 2  # float32 unit roundoff


def _first_moment(opt_state):
  """Adam's mu (the parameter tree) inside an optax chain's state."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu"))
           if hasattr(x, "mu")]
  assert len(found) == 1, found
  return found[0].mu


def _reference_step(run, state, batch):
  """The pmap semantics without shard_map: (the state after one step on the mean of the
  devices' gradients, [each device's gradient]), device i using rows i and key fold_in(key,
  i) as `parallel.pmap_train_step` does."""
  n = run.mesh.size
  rows = len(batch["input_ids"]) // n
  host = jax.device_get(state)

  @jax.jit
  def step(state, batch, mean):
    """One step on `batch`; the optimizer gets `mean` (None: this batch's own gradient)."""
    seen = []

    def hook(grads):
      seen.append(grads)
      return grads if mean is None else mean

    with state_lib.gradient_reduction(hook), nnx.logical_axis_rules(()):
      new_state, _ = run.objective.train_step(state, None, batch)
    return new_state, seen[0]

  def device(i):
    key = jax.random.fold_in(jax.random.wrap_key_data(host.rng), i)
    part = {k: v[i * rows:(i + 1) * rows] for k, v in batch.items()}
    return host.replace(rng=jax.random.key_data(key)), part

  grads = [jax.device_get(step(*device(i), None)[1]) for i in range(n)]
  mean = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0, dtype=np.float64)
                      .astype(np.float32), *grads)
  new_state, _ = step(*device(0), mean)
  return jax.device_get(new_state.replace(rng=host.rng)), grads


def _moment_violation(run, pmap_state, ref_state, grads) -> float:
  """max over elements of |mu_pmap - mu_ref| / ((1 - b1) GRAD_ULPS u mean_i |g_i|): <= 1
  when the pmap step averaged the same gradients up to float32 rounding."""
  b1 = run.config.optim.b1
  scale = jax.tree.map(lambda *g: np.mean(np.abs(np.stack(g)), axis=0), *grads)
  worst = 0.0
  for a, b, s in zip(*(jax.tree.leaves(t) for t in (
      jax.device_get(_first_moment(pmap_state.opt_state)), _first_moment(ref_state.opt_state),
      scale))):
    bound = (1 - b1) * GRAD_ULPS * U32 * s + 1e-30
    worst = max(worst, float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / bound)))
  return worst


def _distinct_rows_step(tmp_path, cache):
  run = _build(TEACHER, tmp_path / "pmap", cache, "pmap", ["train.global_batch_size=16",
                                                          "optim.grad_clip=0.0"])
  batch = next(run.train_iter)
  assert len({tuple(r) for r in batch["input_ids"]}) == len(batch["input_ids"])  # distinct
  reference, grads = _reference_step(run, run.state, batch)
  return run, batch, reference, grads


@pytest.fixture(scope="module")
def distinct_rows(tmp_path_factory, cache):
  """(pmap run, its first batch: 2 distinct rows per device, the reference state after one
  step, the 8 per-device gradients), shared by the two tests below."""
  return _distinct_rows_step(tmp_path_factory.mktemp("distinct"), cache)


def _pmap_step(run, batch):
  step = jax.jit(parallel.pmap_train_step(run.objective.train_step, run.mesh),
                 in_shardings=(run.shardings, None, parallel.batch_sharding(run.mesh)),
                 out_shardings=(run.shardings, parallel.replicated(run.mesh)))
  with parallel.mesh_context(run.mesh):
    state, _ = step(run.state, None, parallel.global_batch(batch, run.mesh))
  return state


def test_pmap_distinct_rows_and_noise_per_device_equals_the_mean_gradient(distinct_rows):
  run, batch, reference, grads = distinct_rows
  init = jax.device_get(run.state)
  state = _pmap_step(run, batch)
  assert _moment_violation(run, state, reference, grads) <= 1.0
  _assert_same_update(init.params, state.params, reference.params)
  # the devices' gradients really differ (distinct rows and noise): averaging matters
  spread = _update_error(jax.tree.map(np.zeros_like, grads[0]), grads[1], grads[0])
  assert spread > 0.1


def test_pmap_without_the_gradient_pmean_fails(distinct_rows, monkeypatch):
  """The same comparison with the all-reduce deliberately dropped: each device applies its
  own gradient, and the comparison must fail (by far)."""
  run, batch, reference, grads = distinct_rows
  init = jax.device_get(run.state)
  monkeypatch.setattr(state_lib, "gradient_reduction",
                      lambda reduce: contextlib.nullcontext())
  state = _pmap_step(run, batch)
  assert _moment_violation(run, state, reference, grads) > 1e3
  assert _update_error(init.params, state.params, reference.params) > 100 * UPDATE_RTOL
