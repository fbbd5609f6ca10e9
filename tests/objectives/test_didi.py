"""DiDi-Instruct (objectives/didi.py, models/discriminator.py, decoding/rgas.py): grouped
rewards, the score-function gradient, spectral normalisation, the RGAS tilt, and the trainer
path (pure, sharded-equal, exact resume)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax import main
from idlm_jax import rng as rng_lib
from idlm_jax.decoding import ancestral as samplers, rgas
from idlm_jax.diffusion import mdlm
from idlm_jax.diffusion.categorical import x64_scope
from idlm_jax.diffusion.schedules import LogLinear
from idlm_jax.models import discriminator as disc_lib
from idlm_jax.objectives import didi
from idlm_jax.objectives.state import init_net
from idlm_jax.train import loop

from tests.objectives.conftest import check_sharded_resume


# ------------------------------------------------------------------ pure maths


def test_group_advantages_and_reward_clipping_by_hand():
  r = jnp.asarray([1, 2, 3, 4, 5, 5, 5, 5, 0, 0, 0, 100], jnp.float32)
  s = np.sqrt(5 / 3)  # unbiased std of 1, 2, 3, 4
  want = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s, 0, 0, 0, 0, -0.5, -0.5, -0.5, 1.5]
  np.testing.assert_allclose(didi.group_advantages(r, 4, 3.0), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(didi.group_advantages(r, 4, 1.0), np.clip(want, -1, 1), rtol=1e-5,
                             atol=1e-6)
  # per-token log-odds ~ the logit, clipped at +-8; mean over masked positions only
  logits = jnp.asarray([[0.5, 20.0, -30.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
  masked = jnp.asarray([[1, 1, 1, 0], [0, 0, 0, 0]])
  got = didi.sequence_rewards(logits, masked, 8.0)
  odds = np.log(1 / (1 + np.exp(-0.5)) + 1e-6) - np.log(1 - 1 / (1 + np.exp(-0.5)) + 1e-6)
  np.testing.assert_allclose(got, [(odds + 8.0 - 8.0) / 3, 0.0], rtol=1e-4, atol=1e-5)


def test_discriminator_loss_and_time_weight_by_hand():
  lr, lf = jnp.asarray([[1.0, -2.0]]), jnp.asarray([[0.5, 3.0]])
  mr, mf = jnp.asarray([[1.0, 0.0]]), jnp.asarray([[1.0, 1.0]])
  bce = lambda x, y: -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 / (1 + np.exp(x))))
  want = 0.5 * (bce(1.0, 0.9) + 0.5 * (bce(0.5, 0.1) + bce(3.0, 0.1)))
  np.testing.assert_allclose(didi.discriminator_loss(lr, mr, lf, mf, 0.1), want, rtol=1e-5)
  tau = jnp.asarray([0.02, 0.5, 0.98])  # log-linear: omega = 1/tau (eps -> 0), clipped
  w = didi.time_weight(LogLinear(1e-3), tau, 0.1, 10.0)
  np.testing.assert_allclose(w, [10.0, 1 / 0.5, 1 / 0.98], rtol=2e-3)
  tau, pi = didi.sample_tau(jax.random.key(0), 4000, 2.0, 2.0, 0.02, 0.98)
  assert float(tau.min()) >= np.float32(0.02) and float(tau.max()) <= np.float32(0.98)
  np.testing.assert_allclose(pi, 6 * tau * (1 - tau), rtol=1e-4)  # Beta(2,2) pdf
  assert abs(float(tau.mean()) - 0.5) < 0.02


def _toy_student(theta):
  """SUBS log-probs whose logits at a position are theta[token] (t ignored)."""
  def log_probs(x, t):
    del t
    return mdlm.subs_log_probs(theta[x], x, 4)
  return log_probs


def test_policy_gradient_is_the_score_function_estimator():
  v, mask, n, length = 5, 4, 6, 7  # tokens 0..3, [MASK] = 4
  theta = jnp.asarray(np.random.default_rng(0).normal(size=(v, v)), jnp.float32)
  tau = jnp.asarray([0.2, 0.4, 0.5, 0.6, 0.8, 0.9])
  coef = jnp.asarray([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])  # omega * A
  roll = functools.partial(didi.student_rollout, teacher=None, key=jax.random.key(1), tau=tau,
                           schedule=LogLinear(1e-3), mask_id=mask, seq_len=length, t0=1e-3)
  loss = lambda th: didi.policy_gradient_loss(roll(_toy_student(th)).logp, coef, 1.0)
  grad = np.asarray(jax.jit(jax.grad(loss))(theta), np.float64)
  r = jax.jit(lambda th: roll(_toy_student(th)))(theta)
  # by hand: every newly unmasked token was predicted from a [MASK] input, i.e. from row
  # theta[mask], whose softmax over the 4 real tokens is p: d log p_x / d theta[mask] = e_x - p
  p = np.exp(np.asarray(theta[mask, :mask], np.float64))
  p /= p.sum()
  want = np.zeros((v, v))
  x1, x_tau, x0 = np.full((n, length), mask), np.asarray(r.x_tau), np.asarray(r.x0)
  for i in range(n):
    for prev, new in ((x1[i], x_tau[i]), (x_tau[i], x0[i])):
      for l in range(length):
        if prev[l] == mask and new[l] != mask:
          want[mask, :mask] -= float(coef[i]) / n * (np.eye(mask)[new[l]] - p)
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)
  assert (np.asarray(r.x_tau) == mask).any() and (np.asarray(r.x_tau) != mask).any()
  # the step's single-forward VJP with cotangent -coef / N is the same gradient
  pullback = jax.jit(lambda th, ct: jax.vjp(lambda t: roll(_toy_student(t)).logp, th)[1](ct)[0])
  np.testing.assert_allclose(pullback(theta, -coef / n), grad, rtol=1e-5, atol=1e-7)


def test_shared_first_step_equals_the_per_row_first_step():
  """One-row first step (no dropout: all rows see all-[MASK] at t=1) = N rows, values and
  gradients, including the KL to a teacher and the entropy bonus."""
  v, mask, length = 5, 4, 7
  rng = np.random.default_rng(2)
  theta = jnp.asarray(rng.normal(size=(v, v)), jnp.float32)
  teacher = _toy_student(jnp.asarray(rng.normal(size=(v, v)), jnp.float32))
  tau = jnp.asarray([0.2, 0.4, 0.5, 0.6, 0.8, 0.9])
  coef = jnp.asarray([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])

  def run(th, shared):
    r = didi.student_rollout(_toy_student(th), teacher, jax.random.key(1), tau,
                             schedule=LogLinear(1e-3), mask_id=mask, seq_len=length, t0=1e-3,
                             kl_hi=0.3, kl_lo=0.2, shared_first=shared)
    return -jnp.mean(coef * r.logp) + r.kl - 0.1 * r.entropy, r

  outs = [jax.jit(jax.value_and_grad(run, has_aux=True), static_argnums=1)(theta, shared)
          for shared in (False, True)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *outs)
  assert float(outs[0][0][1].kl) > 0


def test_spectral_norm_power_iteration_converges_to_top_singular_value():
  rng = np.random.default_rng(0)
  for shape in ((16, 8), (12, 1), (6, 10)):
    w = jnp.asarray(rng.normal(size=shape), jnp.float32)
    u = disc_lib._normalize(jnp.asarray(rng.normal(size=shape[1]), jnp.float32))
    u, v = jax.jit(lambda u: jax.lax.fori_loop(
        0, 100, lambda _, uv: disc_lib.power_iteration(w, uv[0]), (u, w @ u)))(u)
    top = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0]
    np.testing.assert_allclose(disc_lib.spectral_sigma(w, u, v), top, rtol=1e-4)
    # d sigma / dW = v u^T, the top singular pair's outer product (torch's constant u, v)
    g = jax.grad(lambda k: disc_lib.spectral_sigma(k, u, v))(w)
    uu, _, vt = np.linalg.svd(np.asarray(w, np.float64))
    np.testing.assert_allclose(np.abs(g), np.abs(np.outer(uu[:, 0], vt[0])), atol=1e-3)
  # torch's step: v = normalize(W^T u), then u = normalize(W v) (W = kernel^T), in float64
  w64, u64 = rng.normal(size=(6, 4)), rng.normal(size=4)
  u64 /= np.linalg.norm(u64)
  v_want = w64 @ u64 / np.linalg.norm(w64 @ u64)
  u_want = w64.T @ v_want / np.linalg.norm(w64.T @ v_want)
  u_got, v_got = disc_lib.power_iteration(jnp.asarray(w64, jnp.float32),
                                          jnp.asarray(u64, jnp.float32))
  np.testing.assert_allclose(u_got, u_want, atol=1e-6)
  np.testing.assert_allclose(v_got, v_want, atol=1e-6)
  # the head normalises its kernels; power iteration moves only sn_u and sn_v
  params = disc_lib.head_params(8, jax.random.key(0))
  for name in params:  # fresh: sn_v = normalize(W^T u), so sigma = |W^T u| > 0
    k = params[name]["kernel"]
    np.testing.assert_allclose(disc_lib.spectral_sigma(k, params[name]["sn_u"],
                                                       params[name]["sn_v"]),
                               np.linalg.norm(k @ params[name]["sn_u"]), rtol=1e-5)
  moved = disc_lib.power_iterate_params({"head": params})["head"]
  for name in params:
    np.testing.assert_array_equal(moved[name]["kernel"], params[name]["kernel"])
    assert not np.allclose(moved[name]["sn_u"], params[name]["sn_u"]) or name == "linear_2"


@pytest.mark.slow
def test_discriminator_split_at_any_block_is_the_whole_forward():
  """logits_from(hidden(x, blocks=j), start=j) = the discriminator, bit for bit, at every j
  (ids and probability inputs, eval mode and train mode with dropout: block i keeps its
  dropout draw), so the DiDi reward may reuse the frozen blocks' output of the discriminator
  update."""
  model = disc_lib.Discriminator(vocab_size=11, hidden_size=16, n_blocks=3, n_heads=2,
                                 cond_dim=8, dropout=0.2, time_conditioning=True,
                                 rngs=nnx.Rngs(params=0))
  rng = np.random.default_rng(3)
  graphdef, state = nnx.split(model)  # adaLN starts at zero (identity blocks): perturb it all
  model = nnx.merge(graphdef, jax.tree.map(
      lambda w: w + 0.3 * jnp.asarray(rng.normal(size=w.shape), w.dtype), state))
  ids = jnp.asarray(rng.integers(0, 11, size=(2, 6)), jnp.int32)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 6, 11)), jnp.float32))
  sigma = jnp.asarray([0.3, 1.7])
  for x in (ids, probs):
    for key in (None, jax.random.key(4)):
      whole = jax.jit(lambda x, key: model(x, sigma, dropout_key=key))(x, key)
      for j in range(4):
        split = jax.jit(lambda x, key, j=j: model.logits_from(
            model.hidden(x, sigma, blocks=j, dropout_key=key), sigma, start=j,
            dropout_key=key))(x, key)
        np.testing.assert_array_equal(split, whole)
  train = model(ids, sigma, dropout_key=jax.random.key(4))
  assert bool(jnp.any(train != model(ids, sigma)))  # the keyed calls did drop out


def test_discriminator_update_with_its_frozen_blocks_run_once():
  """frozen_blocks = j: the same update as every block inside the loss (no dropout), over one
  or two microbatches, and the kept fake-side hidden states give the updated discriminator's
  logits on z_fake (the rewards)."""
  v, length, rows, blocks, unfreeze = 9, 6, 4, 3, 1
  config = config_lib.load_config("configs/didi_synthetic.py:smoke", ["distill.didi.disc_lr=0.1"])
  model = disc_lib.Discriminator(vocab_size=v, hidden_size=16, n_blocks=blocks, n_heads=2,
                                 cond_dim=8, time_conditioning=False, rngs=nnx.Rngs(params=0))
  rng = np.random.default_rng(5)
  graphdef, state = nnx.split(model, nnx.Param)
  params = jax.tree.map(lambda w: w + 0.3 * jnp.asarray(rng.normal(size=w.shape), w.dtype),
                        nnx.to_pure_dict(state))
  disc_net = lambda p: nnx.merge(graphdef, nnx.State(p))  # noqa: E731
  labels = disc_lib.trainable_labels(params, unfreeze)
  tx = didi.disc_optimizer(config, labels)
  z_real, z_fake = (jnp.asarray(rng.integers(0, v, size=(rows, length)), jnp.int32)
                    for _ in range(2))
  m_real, m_fake = (jnp.asarray(rng.random((rows, length)) < 0.5, jnp.float32)
                    for _ in range(2))
  sigma = jnp.asarray(rng.random(rows) + 0.1, jnp.float32)
  key = jax.random.key(6)

  def update(k, frozen_blocks):
    side = jax.tree.map(lambda x: x.reshape(k, rows // k, *x.shape[1:]),
                        (z_real, m_real, z_fake, m_fake, sigma))
    row_key = rng_lib.row_key(key, jnp.arange(rows).reshape(k, -1), rows)
    return didi.discriminator_update(init_net(params, tx), disc_net, tx, labels, side,
                                     row_key, 0.1, True, frozen_blocks)

  whole, metrics, none = jax.jit(update, static_argnums=(0, 1))(1, None)
  assert none is None and float(metrics["disc_grad_norm"]) > 0
  for k in (1, 2):
    new, m, h_fake = jax.jit(update, static_argnums=(0, 1))(k, blocks - unfreeze)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 (new.params, m), (whole.params, metrics))
    assert h_fake.shape == (k, rows // k, length, 16)
    updated = disc_net(new.params)
    # the two programs fuse the top block differently: rounding at the logits' scale, not each
    # entry's (measured up to 3.8e-6 = 1.1e-6 of the largest logit, at an entry of -0.16)
    full = np.asarray(updated(z_fake, sigma))
    np.testing.assert_allclose(
        updated.logits_from(h_fake.reshape(rows, length, 16), sigma, start=blocks - unfreeze),
        full, rtol=0, atol=1e-5 * float(np.max(np.abs(full))))


def _toy_disc(a, c):
  """Per-token logits of probability vectors [B, L, V] (or ids), coupled across positions."""
  def disc_fn(z, t):
    p = jax.nn.one_hot(z, a.shape[0]) if z.ndim == 2 else z
    h = jnp.tanh(p @ a)  # [B, L, H]
    return (h @ c)[..., 0] + 0.3 * jnp.mean(h[..., :1], axis=1) * t[:, None]
  return disc_fn


def test_rgas_tilt_equals_finite_difference_gradient():
  v, mask, b, length = 6, 5, 2, 5
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    a = jnp.asarray(rng.normal(size=(v, 3)))
    c = jnp.asarray(rng.normal(size=(3, 1)))
    disc_fn = _toy_disc(a, c)
    x = jnp.asarray([[mask, 1, mask, mask, 0], [2, mask, mask, 3, mask]])
    log_x0 = mdlm.subs_log_probs(jnp.asarray(rng.normal(size=(b, length, v))), x, mask)
    log_x0 = log_x0.astype(jnp.float64)
    t = jnp.asarray([0.7, 0.3])
    g = np.asarray(rgas.tilt_gradient(disc_fn, log_x0, x, t, mask, 1e9))
    masked = np.asarray(x == mask)

    score_jit = jax.jit(lambda l: jnp.sum(disc_fn(jax.nn.softmax(l, -1), t) * masked))
    score = lambda l: float(score_jit(l))

    h = 1e-6
    for bi in range(b):
      for li in range(length):
        for vi in range(v):
          if not masked[bi, li] or vi == mask:
            assert g[bi, li, vi] == 0.0
            continue
          e = jnp.zeros_like(log_x0).at[bi, li, vi].set(h)
          fd = (score(log_x0 + e) - score(log_x0 - e)) / (2 * h)
          np.testing.assert_allclose(g[bi, li, vi], fd, rtol=1e-5, atol=1e-8)
    clipped = np.asarray(rgas.tilt_gradient(disc_fn, log_x0, x, t, mask, 0.01))
    np.testing.assert_allclose(clipped, np.clip(g, -0.01, 0.01))


def test_rgas_without_guidance_is_the_ancestral_sampler_and_counts_calls():
  v, mask, b, length = 6, 5, 3, 12
  rng = np.random.default_rng(1)
  theta = jnp.asarray(rng.normal(size=(v, v)), jnp.float32)
  log_probs_fn = lambda x, t: mdlm.subs_log_probs(theta[x], x, mask)
  disc_fn = _toy_disc(jnp.asarray(rng.normal(size=(v, 3)), jnp.float32),
                      jnp.asarray(rng.normal(size=(3, 1)), jnp.float32))
  common = dict(batch_size=b, seq_len=length, mask_id=mask, schedule=LogLinear(1e-3),
                num_steps=6, precision="float64", noise_removal="ancestral")
  with x64_scope("float64"):
    plain = samplers.mdlm_ancestral(log_probs_fn, jax.random.key(2), cache=False, **common)
    unguided = rgas.rgas(log_probs_fn, disc_fn, jax.random.key(2), rerank_ratio=0.0,
                         scale_start=0.0, scale_end=0.0, **common)
    guided = jax.jit(functools.partial(rgas.rgas, log_probs_fn, disc_fn, rerank_ratio=0.5,
                                       num_candidates=3, **common))(jax.random.key(3))
  np.testing.assert_array_equal(unguided.tokens, plain.tokens)
  assert int(unguided.nfe) == 7 and int(unguided.disc_forwards) == 6
  assert (np.asarray(guided.tokens) != mask).all()
  assert (int(guided.nfe), int(guided.disc_forwards), int(guided.disc_grads)) == (7, 3 + 3 * 3, 3)


# ------------------------------------------------------------------ the trainer path


def _didi_run(teacher_dir, work, devices, extra=()):
  cfg = config_lib.load_config("configs/demo.py:smoke", [
      "objective='didi'", f"distill.teacher='{teacher_dir}'",
      f"data.cache_dir='{teacher_dir / 'cache'}'", "distill.monitor_every=0",
      "ckpt.async_save=False", "ckpt.every=1", "train.steps=2", "train.global_batch_size=8",
      "distill.didi.group_size=2", "optim.warmup_steps=0", "optim.grad_clip=0.5",
      "train.log_every=1", *extra])
  return loop.build(cfg, work, devices=devices)


@pytest.mark.slow
def test_step_is_pure_sharded_equal_and_resumes_exactly(teacher_dir, tmp_path):
  one = _didi_run(teacher_dir, tmp_path / "one", jax.devices()[:1])
  teacher = one.frozen["teacher"]
  disc = one.state.aux["disc"].params  # a copy of the teacher's trunk + a new head
  for k in disc_lib.TRUNK:
    jax.tree.map(np.testing.assert_array_equal, disc[k], teacher[k])
  assert "output_layer" not in disc and set(disc["head"]) == {"linear_0", "linear_2"}
  # pure: the same state, teacher and batch give the same new state and metrics
  position = one.train_iter.get_state()
  batch = loop.parallel.global_batch(next(one.train_iter), one.mesh)
  one.train_iter.set_state(position)
  with loop.parallel.mesh_context(one.mesh):
    outs = [one.p_train_step(jax.tree.map(jnp.copy, one.state), one.frozen, batch)
            for _ in range(2)]
  jax.tree.map(np.testing.assert_array_equal, *outs)
  new = outs[0][0]
  assert int(new.aux["disc"].step) == 1
  labels = disc_lib.trainable_labels(disc, 4)
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.aux["disc"].params, disc)
  for (path, lab), (_, mv) in zip(jax.tree_util.tree_leaves_with_path(labels),
                                  jax.tree_util.tree_leaves_with_path(moved)):
    name = jax.tree_util.keystr(path)
    if lab == "frozen":
      # frozen trunk; sn_u and sn_v move by power iteration
      assert not mv or "sn_u" in name or "sn_v" in name, name
  assert any(jax.tree.leaves(moved))
  loop.train(one)  # 2 steps from the untouched state and data position
  check_sharded_resume(one, lambda: _didi_run(teacher_dir, tmp_path / "eight", jax.devices()),
                       "disc", stop=1, total=2)
  one.close()


def test_step_traces_with_block_remat(teacher_dir, tmp_path):
  """Every model in the step is built inside the traced functions, so nnx.remat'd blocks
  (model.remat="block") trace; the frozen teacher is built inside the vjp'd rollout."""
  run = _didi_run(teacher_dir, tmp_path, jax.devices()[:1], ["model.remat='block'"])
  batch = loop.parallel.global_batch(next(run.train_iter), run.mesh)
  with loop.parallel.mesh_context(run.mesh):
    new, metrics = jax.eval_shape(run.p_train_step, run.state, run.frozen, batch)
  assert new.params.keys() == run.state.params.keys() and "loss" in metrics


@pytest.mark.slow
def test_rgas_sampler_on_a_didi_workdir(teacher_dir, tmp_path):
  """sample.sampler="rgas" through the trainer: the monitor, the end-of-training samples, the
  distillation report (teacher rows: ancestral) and mode eval_samplers on the checkpoint read
  the discriminator from TrainState.aux["disc"], and report student NFE and discriminator
  calls apart (2 steps, rerank ratio 0.5, 2 candidates: 1 tilt + 2 re-rank forwards)."""
  overrides = [
      "objective='didi'", f"distill.teacher='{teacher_dir}'",
      f"data.cache_dir='{teacher_dir / 'cache'}'", "ckpt.async_save=False", "train.steps=1",
      "train.global_batch_size=8", "distill.didi.group_size=2", "distill.didi.rgas_candidates=2",
      "sample.sampler=rgas", "sample.steps=2", "distill.monitor_every=1",
      "distill.monitor_steps='2'", "distill.monitor_samples=8", "eval.sampling_steps='2'",
      "eval.num_samples=8", "distill.report_teacher_steps='2'"]
  cfg = config_lib.load_config("configs/demo.py:smoke", overrides)
  run = main.run(cfg, tmp_path, devices=jax.devices()[:1])
  counts = lambda r: (r["nfe"], r["disc_forwards"], r["disc_grads"])
  assert counts(run.results["samples"]) == (3.0, 3.0, 1.0)
  monitored = json.loads((tmp_path / "monitor.jsonl").read_text().splitlines()[-1])
  assert counts(monitored["cells"]["2"]) == (3.0, 3.0, 1.0)
  data, teacher, student = run.results["report"]["rows"]
  assert data["steps"] is None  # the held-out data row comes first
  assert teacher["sampler"] == "teacher ancestral" and "disc_forwards" not in teacher
  assert student["sampler"] == "didi student rgas" and counts(student) == (3.0, 3.0, 1.0)
  cfg = config_lib.load_config("configs/demo.py:smoke", overrides + [
      "mode=eval_samplers", "distill.report_teacher_steps=''"])
  rows = main.run(cfg, tmp_path, devices=jax.devices()[:1]).results["eval_samplers"]["rows"]
  assert [(r["sampler"], counts(r)) for r in rows if r["steps"]] == [("rgas", (3.0, 3.0, 1.0))]
  assert "disc. forwards" in (tmp_path / "eval_samplers" / "results.md").read_text()


def test_didi_config_errors():
  with pytest.raises(config_lib.ConfigError, match="group_size"):
    config_lib.load_config("configs/didi_mdlm_owt.py:smoke", ["distill.teacher='x'",
                                                              "distill.didi.group_size=1"])
  with pytest.raises(config_lib.ConfigError, match="tau_min"):
    config_lib.load_config("configs/didi_mdlm_owt.py:smoke", ["distill.teacher='x'",
                                                              "distill.didi.tau_min=0.99"])
  with pytest.raises(config_lib.ConfigError, match="didi.real"):
    config_lib.load_config("configs/didi_mdlm_owt.py:smoke", ["distill.teacher='x'",
                                                              "distill.didi.real='gan'"])
  with pytest.raises(config_lib.ConfigError, match="diffusion.algo"):
    config_lib.load_config("configs/didi_mdlm_owt.py:smoke", [
        "distill.teacher='x'", "diffusion.algo='sedd'", "diffusion.parameterization='score'",
        "model.time_conditioning=True", "sample.sampler='analytic'"])


def test_didi_configs_load_with_reference_settings():
  cfg = config_lib.load_config("configs/didi_mdlm_owt.py", ["distill.teacher='/some/teacher'"])
  assert (cfg.optim.lr, cfg.optim.decay, cfg.optim.final_lr_fraction) == (1e-6, "linear", 0.01)
  assert cfg.train.global_batch_size == 128 and cfg.distill.didi.group_size == 4
  demo = config_lib.load_config("configs/didi_mdlm_owt.py:demo")  # the shipped demo teacher
  assert demo.objective == "didi" and demo.distill.teacher == "demo"
  assert demo.data.tokenizer == "demo-bpe-2048" and demo.model.dropout == 0.0
  assert demo.eval.sampling_steps == "16,8,4" and demo.distill.report_teacher_steps


def test_nonfinite_counts_the_leaves_holding_nan_or_inf():
  from idlm_jax.objectives import didi
  tree = {"a": jnp.array([1.0, jnp.nan]), "b": jnp.array([[jnp.inf, -jnp.inf]]),
          "c": jnp.zeros((3, 2)), "d": jnp.array([-jnp.inf, 2.0])}
  assert float(jax.jit(didi._nonfinite)(tree)) == 3.0
  assert float(didi._nonfinite({"c": jnp.ones(4)})) == 0.0
