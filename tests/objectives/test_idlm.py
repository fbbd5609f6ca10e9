"""IDLM (objectives/idlm.py): the inverse loss on tiny vocabularies, gradients, the sharded
step and exact resume."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax import models
from idlm_jax.data import tokenizers
from idlm_jax.diffusion import mdlm, processes, sedd, uniform
from idlm_jax.diffusion.schedules import LogLinear
from idlm_jax.objectives import idlm
from idlm_jax.train import loop, state as state_lib

from tests.objectives.conftest import check_sharded_resume

SYN = "configs/synthetic_mdlm.py:smoke"  # 24 symbols: Duo tables and V-sized loops stay tiny
ALGOS = {
    "mdlm": [],
    "sedd": ["diffusion.algo='sedd'", "diffusion.parameterization='score'",
             "model.time_conditioning=True", "sample.sampler='analytic'"],
    "duo": ["diffusion.algo='duo'", "diffusion.process='uniform'",
            "diffusion.parameterization='mean'", "model.time_conditioning=True",
            "diffusion.duo_table_points=201"],
}


def _config(algo, tmp_path, extra=()):
  return config_lib.load_config(SYN, ["objective='idlm'", "mode='eval'",
                                      f"data.cache_dir='{tmp_path}'", *ALGOS[algo], *extra])


def _nets(config, seed=0):
  """A random DiT; every parameter is perturbed (adaLN-zero leaves the output layer at 0)."""
  tok = tokenizers.get_tokenizer(config.data.tokenizer)
  model = models.build_model(config.model, tok.model_vocab_size, nnx.Rngs(params=seed))
  graphdef, params = state_lib.split_params(model)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(100 + seed), len(leaves))
  leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return graphdef, jax.tree.unflatten(treedef, leaves), tok


def _batch(tok, b=4, length=32, seed=0):
  ids = jax.random.randint(jax.random.key(seed), (b, length), 0, tok.vocab_size)
  return {"input_ids": ids.astype(jnp.int32), "attention_mask": jnp.ones((b, length), jnp.int32)}


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_fake_equal_to_teacher_gives_zero_student_gradient(algo, tmp_path):
  config = _config(algo, tmp_path)
  graphdef, params, tok = _nets(config)
  _, other, _ = _nets(config, seed=1)  # the student differs from the teacher
  proc = idlm.parts(config, processes.get(config, vocab_size=tok.model_vocab_size,
                                               mask_id=tok.mask_id))
  net = functools.partial(nnx.merge, graphdef)
  loss_fn = functools.partial(idlm.inverse_loss, proc, net)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))  # one compile for both calls
  (loss, _), grads = grad_fn(other, params, params, _batch(tok), jax.random.key(3))
  norm = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))))
  if algo == "duo":  # teacher and fake branches are identical programs, fused differently by
    assert abs(float(loss)) < 1e-6 and norm < 1e-6  # XLA: they cancel to float32 rounding
  else:  # the custom VJP's cotangent is lambda (log f - log f*) = 0 exactly
    assert float(loss) == 0.0 and norm == 0.0
  # and with a different fake the gradient is finite and nonzero
  (_, _), grads = grad_fn(other, other, params, _batch(tok), jax.random.key(3))
  norm = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))))
  assert np.isfinite(norm) and norm > 0


def _toy_model(table):
  """A 'network' whose logits at a position are table[token]: hand-computable outputs."""
  def model(x, sigma, dropout_key=None):
    del sigma, dropout_key
    return table[x]
  return model


def test_mdlm_losses_equal_hand_computation():
  v, mask = 5, 4  # tokens 0..3 and [MASK] = 4
  schedule = LogLinear(1e-3)
  proc = processes.MDLM(schedule, mask_id=mask, vocab_size=v).inverse_parts()
  rng = np.random.default_rng(0)
  student, teacher, fake = (_toy_model(jnp.asarray(rng.normal(size=(v, v)) * 2, jnp.float32))
                            for _ in range(3))
  x0 = jnp.asarray(rng.integers(0, 4, size=(3, 6)), jnp.int32)
  batch = {"input_ids": x0, "attention_mask": jnp.ones_like(x0)}
  G = proc.student(student, batch, jax.random.key(0), None)
  r = proc.renoise(G, jax.random.key(1))
  lt, lf = proc.output(teacher, r), proc.output(fake, r)
  got_fake = np.asarray(proc.fake_loss(lf, r, G))
  got_inv = np.asarray(proc.inverse_loss(lt, lf, r, G))
  G, xt, w = np.asarray(G, np.float64), np.asarray(r.tokens), np.asarray(r.weight, np.float64)

  def subs_log_probs(table, tok):
    row = np.asarray(table(jnp.asarray([tok]), None), np.float64)[0]
    if tok != mask:
      return np.where(np.arange(v) == tok, 0.0, mdlm.NEG_INF)
    row[mask] = -np.inf
    return row - np.log(np.sum(np.exp(row[:mask])))

  for b in range(3):
    for l in range(6):
      if xt[b, l] != mask:
        assert got_fake[b, l] == 0 and got_inv[b, l] == 0
        assert G[b, l, xt[b, l]] > 0  # an unmasked x_t2 token is a draw from G
        continue
      pf, pt = subs_log_probs(fake, xt[b, l]), subs_log_probs(teacher, xt[b, l])
      h_f = -w[b] * sum(G[b, l, k] * pf[k] for k in range(mask))
      h_t = -w[b] * sum(G[b, l, k] * pt[k] for k in range(mask))
      np.testing.assert_allclose(got_fake[b, l], h_f, rtol=1e-5)
      np.testing.assert_allclose(got_inv[b, l], h_t - h_f, rtol=1e-4, atol=1e-5)
  assert (xt == mask).any() and (xt != mask).any()


def test_soft_losses_reduce_to_the_one_hot_teacher_losses():
  rng = np.random.default_rng(1)
  b, length, v, mask = 3, 5, 7, 6
  x0 = jnp.asarray(rng.integers(0, v - 1, size=(b, length)), jnp.int32)
  xt = jnp.where(jnp.asarray(rng.random((b, length)) < 0.6), mask, x0)
  sigma = jnp.asarray([0.1, 1.0, 3.0], jnp.float32)
  log_s = jnp.asarray(rng.normal(size=(b, length, v)), jnp.float32)
  log_s = sedd.log_score(log_s, xt, sigma, "absorbing")
  ref = sedd.score_entropy(log_s, sigma, xt, x0, graph="absorbing", mask_id=mask)
  soft = processes.sedd.soft_score_entropy(log_s, jax.nn.one_hot(x0, v), 1.0 / jnp.expm1(sigma),
                                      (xt == mask).astype(jnp.float32), mask)
  np.testing.assert_allclose(soft, ref, rtol=1e-5, atol=1e-5)
  log_x = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(b, length, v)) * 2, jnp.float32))
  zt = jnp.asarray(rng.integers(0, v, size=(b, length)), jnp.int32)
  a, da = jnp.asarray([0.1, 0.5, 0.95]), jnp.asarray([-1.0, -0.5, -2.0])
  np.testing.assert_allclose(uniform.nelbo_per_token_soft(log_x, zt, jax.nn.one_hot(x0, v), a, da),
                             uniform.nelbo_per_token(log_x, zt, x0, a, da), rtol=1e-4, atol=1e-5)


# output-layer scale: softmax-based losses take logits of order 1e4; SEDD's score entropy has
# exp(log-score) itself (float32 overflows past 88), so it is pushed to log-scores of ~50.
@pytest.mark.slow
@pytest.mark.parametrize("algo,factor", [("mdlm", 3e3), ("duo", 3e3), ("sedd", 4.0)])
def test_student_gradient_finite_at_extreme_logits(algo, factor, tmp_path):
  config = _config(algo, tmp_path)
  graphdef, params, tok = _nets(config)
  _, student, _ = _nets(config, seed=1)
  _, fake, _ = _nets(config, seed=2)
  # scale the output layers: saturated softmax / very large scores everywhere
  scale = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, x: x * factor if "output" in jax.tree_util.keystr(path) else x, p)
  proc = idlm.parts(config, processes.get(config, vocab_size=tok.model_vocab_size,
                                               mask_id=tok.mask_id))
  net = functools.partial(nnx.merge, graphdef)
  (loss, _), grads = jax.jit(jax.value_and_grad(functools.partial(
      idlm.inverse_loss, proc, net), has_aux=True))(scale(student), scale(fake), scale(params),
                                                    _batch(tok), jax.random.key(0))
  (floss, _), fgrads = jax.jit(jax.value_and_grad(functools.partial(
      idlm.fake_loss, proc, net), has_aux=True))(scale(fake), scale(student), _batch(tok),
                                                 jax.random.key(0))
  for tree in (grads, fgrads):
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(tree))
  assert np.isfinite(float(loss)) and np.isfinite(float(floss))


# ------------------------------------------------------------------ the trainer path


def _idlm_run(teacher_dir, work, devices, extra=()):
  cfg = config_lib.load_config("configs/demo.py:smoke", [
      f"distill.teacher='{teacher_dir}'", f"data.cache_dir='{teacher_dir / 'cache'}'",
      "distill.monitor_every=0", "ckpt.async_save=False", "ckpt.every=2", "train.steps=4",
      "optim.warmup_steps=0",
      *extra])
  return loop.build(cfg, work, devices=devices)


@pytest.mark.slow
def test_state_starts_as_copies_of_the_teacher(teacher_dir, tmp_path):
  run = _idlm_run(teacher_dir, tmp_path / "r", jax.devices()[:1])
  teacher = run.frozen["teacher"]
  for tree in (run.state.params, run.state.ema_params, run.state.aux["fake"].params):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), tree, teacher)
  loop.train(run, until=1)  # the student moved, the teacher buffers did not
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                              run.state.params, teacher)))
  assert all(not x.is_deleted() for x in jax.tree.leaves(teacher))
  assert int(run.state.aux["fake"].step) == 1
  run.close()


@pytest.mark.slow
def test_sharded_step_equals_single_device_and_resume_is_exact(teacher_dir, tmp_path):
  one = _idlm_run(teacher_dir, tmp_path / "one", jax.devices()[:1])
  loop.train(one)
  check_sharded_resume(one, lambda: _idlm_run(teacher_dir, tmp_path / "eight", jax.devices()),
                       "fake", stop=2, total=4)
  one.close()


def test_teacher_mismatch_and_missing_teacher_are_clear_errors(teacher_dir, tmp_path):
  with pytest.raises(config_lib.ConfigError, match="distill.teacher"):
    config_lib.load_config("configs/demo.py:smoke", ["distill.teacher=''"])
  with pytest.raises(config_lib.ConfigError, match="model.hidden_size"):
    _idlm_run(teacher_dir, tmp_path / "x", jax.devices()[:1], ["model.hidden_size=64"])
  with pytest.raises(FileNotFoundError, match="distill.teacher"):
    _idlm_run(tmp_path / "nowhere", tmp_path / "y", jax.devices()[:1])


@pytest.mark.parametrize("name", ["idlm_mdlm_owt", "idlm_sedd_owt", "idlm_duo_owt",
                                  "idlm_dcd_owt", "idlm_mdlm_lm1b", "idlm_duo_lm1b",
                                  "idlm_synthetic", "demo"])
def test_idlm_configs_load_with_paper_settings(name):
  cfg = config_lib.load_config(f"configs/{name}.py", ["distill.teacher='/some/teacher'"])
  assert cfg.objective == "idlm" and cfg.distill.fake_steps == 1
  if name.endswith(("owt", "lm1b")):  # reference/idlm.md §4
    assert cfg.optim.lr == (3e-7 if "sedd" in name else 1e-6)
    assert (cfg.optim.warmup_steps, cfg.optim.grad_clip, cfg.optim.ema) == (2500, 0.0, 0.9999)
    assert cfg.train.global_batch_size == 512 and cfg.optim.weight_decay == 0.0
  if "duo" in name or "dcd" in name:
    assert (cfg.diffusion.gamma_min, cfg.diffusion.gamma_max, cfg.diffusion.tau) == \
        (-3.55, -1.85, 1e-3)
    assert cfg.sample.noise_removal == "argmax"  # greedy tail


def test_idlm_step_carries_named_scopes(teacher_dir, tmp_path):
  """The fake and student updates are named scopes (a GPU profile reads by part)."""
  run = _idlm_run(teacher_dir, tmp_path / "r", jax.devices()[:1])
  batches = tuple(loop.parallel.global_batch(next(run.train_iter), run.mesh) for _ in range(2))
  with loop.parallel.mesh_context(run.mesh):
    text = run.p_train_step.lower(run.state, run.frozen, batches).as_text(debug_info=True)
  for scope in ("fake_update", "student_update"):
    assert f"/{scope}/" in text, scope
