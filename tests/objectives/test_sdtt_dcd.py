"""The SDTT and DCD baselines (objectives/sdtt.py, dcd.py, progressive.py): teacher targets by
hand, the round schedule, the deterministic DCD trajectory, zero losses at student == teacher,
and short trainer runs from tiny teacher checkpoints."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax import models
from idlm_jax.data import tokenizers
from idlm_jax.diffusion import processes, uniform
from idlm_jax.diffusion.schedules import LogLinear
from idlm_jax.objectives import dcd, progressive, sdtt
from idlm_jax.objectives import state as objective_state
from idlm_jax.rng import normal_per_position
from idlm_jax.train import loop, state as state_lib

SYN = "configs/synthetic_mdlm.py:smoke"  # 24 symbols: tiny vocabularies and Duo tables
DUO = ["diffusion.algo='duo'", "diffusion.process='uniform'", "diffusion.parameterization='mean'",
       "model.time_conditioning=True", "diffusion.duo_table_points=201"]


# ------------------------------------------------------------------ SDTT teacher targets


def test_sdtt_targets_are_recorded_at_the_unmasking_step():
  """A toy teacher whose outputs force the draws: at step 0 (t = 0.5) even positions carry a
  +1e3 logit (certain to unmask) and odd ones only -1e6 (certain to stay masked); step 1 ends
  at s = 0, where every remaining mask is unmasked. Step 1's rows encode how many tokens of
  the row its input had unmasked, so they also show that step 1 sees step 0's draws."""
  v, mask, length = 5, 4, 6
  pos = jnp.arange(length)
  w = jnp.asarray(np.random.default_rng(0).normal(size=(length, v)), jnp.float32)
  onehot = jnp.arange(v)[None, :] == (pos % 3)[:, None]  # [L, V]

  def toy(x, t):
    step0 = (t > 0.4)[:, None, None]
    even = (pos % 2 == 0)[None, :, None]
    s0 = jnp.where(even & onehot[None], 1e3, -1e6) * jnp.ones((x.shape[0], 1, 1))
    s1 = w[None] + 0.01 * jnp.sum(x != mask, axis=1)[:, None, None]
    return jnp.where(step0, s0, s1)

  xt = jnp.full((2, length), mask, jnp.int32).at[1, 1].set(2)  # row 1: position 1 unmasked
  t = jnp.asarray([0.5, 0.5])
  got = np.asarray(sdtt.teacher_targets(toy, jax.random.key(0), xt, t, jnp.asarray(0.3),
                                        schedule=LogLinear(1e-3), num_steps=2, mask_id=mask,
                                        t_min=1e-5))
  for b, already in ((0, 0), (1, 1)):
    for l in range(length):
      if l % 2 == 0:  # unmasked at step 0: step 0's row
        np.testing.assert_array_equal(got[b, l], np.where(onehot[l], 1e3, -1e6))
      else:  # unmasked at step 1 (or unmasked in x_t): step 1's row, after 3 step-0 draws
        np.testing.assert_allclose(got[b, l], np.asarray(w[l]) + 0.01 * (3 + already),
                                   rtol=1e-6)


def _toy_net(params):
  """A 'network' whose logits ignore its input tokens: params["table"] [L, V]."""
  def model(x, sigma, dropout_key=None):
    del sigma, dropout_key
    return jnp.broadcast_to(params["table"], (*x.shape, params["table"].shape[-1]))
  return model


@pytest.mark.parametrize("kind", progressive.DIVERGENCES)
def test_sdtt_loss_is_zero_when_student_equals_teacher(kind):
  """With an input-independent teacher every recorded row equals the student's row."""
  v, mask = 6, 5
  rng = np.random.default_rng(1)
  table = {"table": jnp.asarray(rng.normal(size=(8, v)) * 2, jnp.float32)}
  other = {"table": jnp.asarray(rng.normal(size=(8, v)) * 2, jnp.float32)}
  x0 = jnp.asarray(rng.integers(0, mask, size=(4, 8)), jnp.int32)
  batch = {"input_ids": x0, "attention_mask": jnp.ones_like(x0)}
  loss_fn = lambda precision: functools.partial(
      sdtt.sdtt_loss, _toy_net, schedule=LogLinear(1e-3), mask_id=mask, t_min=1e-5,
      num_steps=2, antithetic=True, kind=kind, precision=precision)
  args = (batch, jax.random.key(0), jnp.asarray(0.05))
  loss, tokens = loss_fn("float32")(table, table, *args)
  assert float(loss) == 0.0 and float(tokens) > 0
  loss, _ = loss_fn("float32")(other, table, *args)
  assert float(loss) > 0
  loss64, _ = loss_fn("float64")(other, table, *args)
  np.testing.assert_allclose(float(loss64), float(loss), rtol=1e-4)


def test_divergences_equal_their_formulas():
  rng = np.random.default_rng(2)
  lp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 7)), jnp.float32))
  lq = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 7)), jnp.float32))
  p, q = np.exp(np.asarray(lp, np.float64)), np.exp(np.asarray(lq, np.float64))
  want = {"kl-bwd": (p * np.log(p / q)).sum(-1), "kl-fwd": (q * np.log(q / p)).sum(-1),
          "mse": ((np.log(p) - np.log(q)) ** 2).sum(-1), "tvd": 0.5 * np.abs(p - q).sum(-1)}
  for kind, value in want.items():
    np.testing.assert_allclose(progressive.divergence(lp, lq, kind), value, rtol=1e-5)


# ------------------------------------------------------------------ rounds


def test_round_schedule_doubles_the_step_and_copies_only_at_boundaries():
  round_steps, num_rounds = 3, 3
  params = {"w": jnp.zeros(())}
  teacher = objective_state.init_net({"w": jnp.full((), -1.0)}, progressive.ROUND_TEACHER_TX)
  state = objective_state.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=(),
                               ema_params=params, rng=jax.random.key_data(jax.random.key(0)),
                               aux={progressive.ROUND_TEACHER: teacher})
  copy = jax.jit(functools.partial(progressive.copy_student_to_teacher, round_steps=round_steps,
                                   num_rounds=num_rounds))
  for k in range(14):
    before = float(state.aux[progressive.ROUND_TEACHER].params["w"])
    state = copy(state)
    after = state.aux[progressive.ROUND_TEACHER]
    boundary = k > 0 and k % round_steps == 0 and k // round_steps < num_rounds
    assert float(after.params["w"]) == (float(k) if boundary else before), k
    r = int(progressive.round_index(jnp.asarray(k), round_steps, num_rounds))
    assert r == min(k // round_steps, num_rounds - 1) and int(after.step) == r
    np.testing.assert_allclose(sdtt.teacher_dt(jnp.asarray(r), 1024, 2, 1e-5),
                               (1 - 1e-5) / 1024 * 2 ** r, rtol=1e-6)
    np.testing.assert_allclose(dcd.step_size(jnp.asarray(r), 512), 2 ** r / 512, rtol=1e-6)
    # one "update": the student's weight is the number of steps taken
    state = state.replace(step=state.step + 1, params={"w": state.params["w"] + 1.0})


# ------------------------------------------------------------------ DCD


def test_dcd_trajectory_is_the_argmax_of_one_shared_gaussian_draw():
  b, length, k = 64, 16, 11
  key = jax.random.key(3)
  x0 = jax.random.randint(jax.random.key(4), (b, length), 0, k)
  t, s = dcd.trajectory_times(jnp.linspace(0.01, 1.0, b), jnp.asarray(0.125))
  assert bool(jnp.all(s < t)) and bool(jnp.all(t <= 1.0)) and float(t[-1]) == 1.0
  gamma = lambda u: uniform.gamma_t(u, -4.0, -1.0)
  z_t, z_s = dcd.trajectory(key, x0, gamma(t), gamma(s), k)
  again = dcd.trajectory(key, x0, gamma(t), gamma(s), k)
  np.testing.assert_array_equal(z_t, again[0])
  np.testing.assert_array_equal(z_s, again[1])
  eps = normal_per_position(key, (b, length, k))  # the one draw, by hand
  onehot = jax.nn.one_hot(x0, k)
  for z, g in ((z_t, gamma(t)), (z_s, gamma(s))):
    a, sd = jnp.sqrt(jax.nn.sigmoid(-g))[:, None, None], jnp.sqrt(jax.nn.sigmoid(g))[:, None, None]
    np.testing.assert_array_equal(z, jnp.argmax(a * onehot + sd * eps, -1))
  # the same noise at a higher signal-to-noise ratio: a clean token at t stays clean at s
  assert bool(jnp.all(jnp.where(z_t == x0, z_s == x0, True)))
  assert float(jnp.mean(z_s == x0)) > float(jnp.mean(z_t == x0))


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_dcd_loss_is_zero_for_the_same_network_at_the_same_point(tmp_path):
  config = config_lib.load_config(SYN, ["objective='dcd'", "mode='eval'",
                                        f"data.cache_dir='{tmp_path}'", *DUO])
  tok = tokenizers.get_tokenizer(config.data.tokenizer)
  model = models.build_model(config.model, tok.model_vocab_size, nnx.Rngs(params=0))
  graphdef, params = state_lib.split_params(model)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  params = jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape)
                                        for x, k in zip(leaves, keys)])
  x0 = jax.random.randint(jax.random.key(0), (4, 32), 0, tok.vocab_size).astype(jnp.int32)
  batch = {"input_ids": x0, "attention_mask": jnp.ones_like(x0)}
  loss_fn = functools.partial(dcd.dcd_loss, functools.partial(nnx.merge, graphdef),
                              processes.uniform.duo_transform(config, tok.model_vocab_size), eps=1e-3, antithetic=True,
                              kind="kl-bwd", precision="float32")
  loss, tokens = loss_fn(params, params, batch, jax.random.key(1), jnp.asarray(0.0))
  assert float(loss) == 0.0 and float(tokens) == x0.size
  loss, _ = loss_fn(params, params, batch, jax.random.key(1), jnp.asarray(0.25))
  assert float(loss) > 0


# ------------------------------------------------------------------ the trainer path


def _teacher(tmp_path_factory, name, extra=()):
  """A teacher checkpoint of the smoke model at its random init (no train step to compile)."""
  work = tmp_path_factory.mktemp(name)
  cfg = config_lib.load_config(SYN, [f"data.cache_dir='{work / 'cache'}'",
                                     "ckpt.async_save=False", *extra])
  run = loop.build(cfg, work, devices=jax.devices()[:1])
  loop.save(run, 1, force=True)
  run.ckpt.wait()
  return work


@pytest.fixture(scope="module")
def mdlm_teacher(tmp_path_factory):
  return _teacher(tmp_path_factory, "mdlm_teacher")


@pytest.fixture(scope="module")
def duo_teacher(tmp_path_factory):
  return _teacher(tmp_path_factory, "duo_teacher", DUO)


def _run(teacher, work, extra, cache=None):
  cfg = config_lib.load_config(SYN, [
      f"distill.teacher='{teacher}'", f"data.cache_dir='{cache or teacher / 'cache'}'",
      "ckpt.async_save=False", "ckpt.every=2", "train.steps=4", "optim.warmup_steps=0",
      *extra])
  return loop.build(cfg, work, devices=jax.devices()[:1])


def _assert_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


def _train_through_one_round(run):
  """Steps 1-2 in round 0 (teacher = the frozen teacher), 3-4 after the copy at step 2."""
  _assert_equal(run.state.aux[progressive.ROUND_TEACHER].params, run.frozen["teacher"])
  loop.train(run, until=2)
  student_at_boundary = jax.device_get(run.state.params)
  _assert_equal(run.state.aux[progressive.ROUND_TEACHER].params, run.frozen["teacher"])
  loop.train(run)
  teacher = run.state.aux[progressive.ROUND_TEACHER]
  assert int(teacher.step) == 1 and int(run.state.step) == 4
  _assert_equal(teacher.params, student_at_boundary)
  run.close()


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_sdtt_trains_through_a_round_from_a_teacher_checkpoint(mdlm_teacher, tmp_path):
  run = _run(mdlm_teacher, tmp_path / "sdtt", [
      "objective='sdtt'", "distill.sdtt.round_steps=2", "distill.sdtt.num_rounds=2",
      "distill.sdtt.orig_steps=16"])
  _train_through_one_round(run)
  assert all(not x.is_deleted() for x in jax.tree.leaves(run.frozen["teacher"]))


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_dcd_trains_through_a_round_and_its_workdir_loads_as_a_teacher(duo_teacher, tmp_path):
  run = _run(duo_teacher, tmp_path / "dcd", [
      "objective='dcd'", "distill.dcd.round_steps=2", "distill.dcd.num_rounds=2",
      "distill.dcd.T=8", "diffusion.gamma_min=-4.0", "diffusion.gamma_max=-1.0", *DUO])
  _train_through_one_round(run)
  # IDLM-DCD: the DCD run's workdir is a teacher whose weights are the DCD student's EMA
  idlm = _run(tmp_path / "dcd", tmp_path / "idlm_dcd", ["objective='idlm'", *DUO],
              cache=duo_teacher / "cache")
  _assert_equal(idlm.frozen["teacher"], run.state.ema_params)
