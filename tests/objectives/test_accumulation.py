"""Gradient accumulation (train.microbatches, objectives/accumulate.py): for every objective,
one step with the batch split into k = 4 microbatches equals one step on the whole batch
(k = 1) to float32 rounding; the batch must split over devices x microbatches (a one-line
ConfigError); per-row noise (rng.RowKey) does not depend on which rows share a draw.

Devices. One objective per way of accumulating (SHARDED: accumulate.mean_grad for diffusion,
as ar, sdtt and dcd call it; IDLM's two updates; DiDi's phases; sum_grad for r2_finetune)
runs on 8 devices, under pjit (k = 4; the teacher step k = 2 too) and under the pmap strategy
(k = 2, against the pmap step on the whole batch: its devices fold their index into the key,
so it draws other noise than pjit). The other objectives call the same functions and run on
one device: a mesh of 8 adds about 60% to the XLA compile time of every step
(SPMD partitioning; DiDi's k = 4 step: 8.3 s against 5.3 s on 2 cores), and compiling is
most of this file's time.

Tolerance. The accumulated step sums the same per-row terms in another order (microbatch sums,
then their sum), so its loss and gradients differ from k = 1 by float32 rounding of sums of
a few thousand terms: relative ~ sqrt(terms) * 2^-24, below RTOL = 2e-5 here. To see the
gradients through the optimizer, the tests use Adam with eps = 1 and lr = 1: its first update
is g / (|g| + 1), ~ g itself, so a parameter's update differs by about the gradient's rounding
(with eps = 1e-8 the update is ~ sign(g) and hides gradient errors, while entries with
|g| ~ eps amplify rounding). Updates (and the aux networks') must agree to RTOL of the
largest entry in that parameter; metrics (loss, gradient norms, rewards) to RTOL.
DiDi's student gradient is a sum of score-function terms whose group-centred advantages cancel
(and its discriminator's BCE gradient nearly cancels between the real and fake sides), which
magnifies rounding: the same k = 1 step on 1 device against 8 (no accumulation, only another
reduction order) differs by up to 7e-5 of a parameter's largest update, so DiDi's tolerance is
RTOL_DIDI = 3e-4 (4x that measured rounding level). The advantages divide by the group's
reward standard deviation, so rounding in the rewards grows by 1/std: the discriminator is
perturbed by DISC_SCALE = 0.1 (std ~ 0.014; at the aux networks' 0.05 the rewards were nearly
equal, std ~ 0.001, and the k = 4 policy-gradient loss moved by 5e-4 relative from rounding
alone), enough to separate the rewards without saturating its logits.
IDLM-Duo's student gradient runs pathwise through the relaxed student sample into the teacher
and the fake, whose contributions nearly cancel (the inverse loss is their difference): at
k = 4 its update differs by up to 2.2e-5 of the largest entry (vocab_embed and the output
layer; jax 0.11.2, 1.1e-5 on 0.10.2) against 2.3e-6 or less for every other objective
measured (idlm, diffusion_duo, dcd, and IDLM-Duo's fake), so its tolerance is
RTOL_IDLM_DUO = 1e-4 (4.6x the largest).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax import objectives, rng
from idlm_jax.diffusion import schedules
from idlm_jax.fields import ConfigError
from idlm_jax.objectives import accumulate
from idlm_jax.train import loop, parallel

RTOL = 2e-5
RTOL_DIDI = 3e-4
RTOL_IDLM_DUO = 1e-4
DISC_SCALE = 0.1  # the discriminator's perturbation (see the module docstring)
B = 32  # rows per step: a multiple of 8 devices x 4 microbatches

SYN = "configs/synthetic_mdlm.py:smoke"
DUO = "configs/synthetic_duo.py:smoke"
TEACHER = ["distill.teacher='demo'"]  # validated only: the frozen teacher is made below
# objective -> (config, overrides); dropout > 0 wherever the model has dropout in the step
CASES = {
    "diffusion": (SYN, ["model.dropout=0.1"]),
    "diffusion_chunked": (SYN, ["model.dropout=0.1", "model.loss_chunk=24"]),  # L = 64
    "diffusion_sedd": (SYN, ["model.dropout=0.1", "diffusion.algo='sedd'",
                             "diffusion.parameterization='score'",
                             "model.time_conditioning=True", "sample.sampler='analytic'"]),
    "diffusion_duo": (DUO, ["model.dropout=0.1", "diffusion.curriculum_start=0",
                            "diffusion.curriculum_end=10"]),
    "ar": ("configs/ar_embedded.py:smoke", ["model.dropout=0.1"]),
    "idlm": (SYN, ["objective='idlm'", "model.dropout=0.1", *TEACHER]),
    # the losses over chunks of 24 positions (L = 64: the last chunk padded)
    "idlm_chunked": (SYN, ["objective='idlm'", "model.dropout=0.1", "model.loss_chunk=24",
                           *TEACHER]),
    "idlm_duo": (DUO, ["objective='idlm'", "model.dropout=0.1", *TEACHER]),
    # IDLM-Duo over chunks: soft inputs embedded a chunk at a time, per-position Gaussian noise
    "idlm_duo_chunked": (DUO, ["objective='idlm'", "model.dropout=0.1", "model.loss_chunk=24",
                               *TEACHER]),
    "didi": ("configs/didi_synthetic.py:smoke", ["model.dropout=0.1", "distill.didi.group_size=2",
                                                 "distill.didi.disc_lr=1.0", *TEACHER]),
    # no dropout: the first rollout step runs on one row for all (shared_first), G = 4, and
    # the discriminator's frozen block (unfreeze_blocks=0: the one block of :smoke) runs once
    # for its update and the rewards (frozen_blocks)
    "didi_shared": ("configs/didi_synthetic.py:smoke", ["model.dropout=0.0",
                                                        "distill.didi.group_size=4",
                                                        "distill.didi.unfreeze_blocks=0",
                                                        "distill.didi.disc_lr=1.0", *TEACHER]),
    "sdtt": (SYN, ["objective='sdtt'", "model.dropout=0.1", *TEACHER]),
    "dcd": (DUO, ["objective='dcd'", "model.dropout=0.1", *TEACHER]),
    "r2_finetune": ("configs/r2_finetune_synthetic.py:smoke", ["model.dropout=0.1", *TEACHER]),
}


def _build(name, k, work, strategy="pjit", batch=B, devices=None):
  spec, extra = CASES[name]
  cfg = config_lib.load_config(spec, [
      f"train.microbatches={k}", f"train.global_batch_size={batch}", "optim.warmup_steps=0",
      "optim.lr=1.0", "optim.adam_eps=1.0", "optim.grad_clip=0.0", "optim.weight_decay=0.0",
      "log.tensorboard=False", f"data.cache_dir='{work.parent / 'cache'}'",
      f"parallel.strategy='{strategy}'", "ckpt.async_save=False", *extra])
  return loop.build(cfg, work / f"{name}_{strategy}_{k}", devices, datasets=False,
                    teacher=False)


def _perturb(tree, seed, scale=0.05):
  """tree + scale * N(0, 1), the same values for every run (adaLN-zero init leaves the output
  layer at 0: a perturbation gives every parameter a gradient)."""
  leaves, treedef = jax.tree.flatten(tree)
  r = np.random.default_rng(seed)
  out = [jax.device_put(np.asarray(x) + scale * r.standard_normal(x.shape).astype(np.float32),
                        x.sharding) for x in leaves]
  return jax.tree.unflatten(treedef, out)


def _batch(run, seed):
  """Host rows of the run's shape, with padding of varied lengths (so that microbatches hold
  different numbers of loss tokens), and R2's trajectory fields."""
  r = np.random.default_rng(seed)
  length, vocab = run.config.data.seq_len, run.tokenizer.vocab_size
  ids = r.integers(0, vocab, (B, length)).astype(np.int32)
  keep = np.arange(length)[None] < r.integers(length // 2, length + 1, (B, 1))
  rows = {"input_ids": ids, "attention_mask": keep.astype(np.int32)}
  if run.config.objective == "r2_finetune":
    steps = r.integers(0, 6, (B, length)).astype(np.int32)
    steps[:, 0] = -1  # a prompt position
    rows = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "commit_step": steps, "commit_rule": r.integers(0, 5, (B, length)).astype(np.int32)}
  return rows


def _step(run, batches):
  """(initial params of every network, state, metrics) of one step from perturbed params (and
  a perturbed copy as the frozen teacher of a distillation objective)."""
  state = run.state.replace(params=_perturb(run.state.params, 1), aux={
      name: net.replace(params=_perturb(net.params, 3 + i, DISC_SCALE if name == "disc" else 0.05))
      for i, (name, net) in enumerate(sorted(run.state.aux.items()))})
  init = jax.device_get(_nets(state))
  frozen = {"teacher": _perturb(run.state.params, 2)} \
      if objectives.get(run.config.objective).teacher else None
  glob = tuple(parallel.global_batch(b, run.mesh) for b in batches)
  with parallel.mesh_context(run.mesh):
    state, metrics = run.p_train_step(state, frozen, glob[0] if len(glob) == 1 else glob)
  return init, jax.device_get(state), jax.device_get(metrics)


def _nets(state):
  return {"model": state.params, **{name: net.params for name, net in state.aux.items()}}


def _updates(result):
  init, state, _ = result
  return jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), init, _nets(state))


def _compare(ref, got, what, rtol):
  m1, m2 = ref[2], got[2]
  assert set(m1) == set(m2)
  for name in m1:
    np.testing.assert_allclose(m2[name], m1[name], rtol=rtol, atol=1e-6,
                               err_msg=f"{what}: metric {name}")
  u1, u2 = _updates(ref), _updates(got)
  for net in u1:  # each parameter's update to rtol of its largest entry, plus the float32
    # spacing of the parameters themselves (an update is a difference of two stored values)
    jax.tree.map(lambda x, y, p: np.testing.assert_allclose(
        y, x, rtol=0, atol=rtol * float(np.max(np.abs(x))) + 2.0 ** -22 * float(
            np.max(np.abs(p))) + 1e-9, err_msg=f"{what}: {net} update"),
        u1[net], u2[net], ref[0][net])


def rtol_for(name):
  return RTOL_DIDI if name.startswith("didi") else \
      RTOL_IDLM_DUO if name.startswith("idlm_duo") else RTOL


def _check(name, tmp_path, strategy, ks, devices=None):
  runs = {k: _build(name, k, tmp_path, strategy, devices=devices) for k in (1, *ks)}
  batches = [_batch(runs[1], seed) for seed in range(runs[1].objective.batches_per_step)]
  ref = _step(runs[1], batches)
  assert all(np.isfinite(v) for v in ref[2].values())
  assert max(float(np.max(np.abs(x))) for x in jax.tree.leaves(_updates(ref)["model"])) > 1e-4
  for k in ks:
    _compare(ref, _step(runs[k], batches), f"{name} {strategy} k={k}", rtol_for(name))


# the chunked IDLM steps: test_idlm_chunked's sharded test compares them, whole and in 2
# microbatches, with the unchunked whole-batch step (which this test compares with 4)
CHECKED_ELSEWHERE = ("idlm_chunked", "idlm_duo_chunked")
# one objective per way of accumulating: accumulate.mean_grad (diffusion; ar, sdtt and dcd call
# it the same way), IDLM's two updates, DiDi's phases, sum_grad (r2_finetune)
SHARDED = ("diffusion", "idlm", "didi", "r2_finetune")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CASES) - set(CHECKED_ELSEWHERE)))
def test_every_objective_accumulated_equals_whole_batch_pjit(name, tmp_path):
  _check(name, tmp_path, "pjit", (2, 4) if name == "diffusion" else (4,),
         None if name in SHARDED else jax.devices()[:1])


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED)
def test_objectives_accumulated_equal_whole_batch_pmap(name, tmp_path):
  _check(name, tmp_path, "pmap", (2,))


def test_batch_must_split_over_devices_times_microbatches(tmp_path):
  with pytest.raises(ConfigError, match=r"train.microbatches: global_batch_size 16 is not a "
                     r"multiple of devices x microbatches = 8 x 4 = 32"):
    _build("diffusion", 4, tmp_path, batch=16)
  with pytest.raises(ConfigError, match="train.microbatches"):
    config_lib.load_config(SYN, ["train.microbatches=0"])


def test_row_noise_does_not_depend_on_the_other_rows():
  """A RowKey's draws for rows {1, 3} are rows 1 and 3 of the whole batch's draws; split and
  fold_in keep that; the antithetic times of a microbatch are the batch's."""
  key = jax.random.key(3)
  whole, part = rng.all_rows(key, 4), rng.row_key(key, jnp.array([1, 3]), 4)
  for draw in (lambda k, n: rng.uniform(k, (n, 5)), lambda k, n: rng.normal(k, (n, 2, 3)),
               lambda k, n: rng.bits(k, (2, n, 3), row_axis=1)[:, :, 0].T,
               lambda k, n: rng.normal_per_position(k, (n, 5, 3)),
               lambda k, n: rng.bernoulli(rng.fold_in(rng.split(k, 3)[2], 7), 0.5, (n, 9))):
    np.testing.assert_array_equal(np.asarray(draw(whole, 4))[np.array([1, 3])],
                                  np.asarray(draw(part, 2)))
  t = schedules.sample_t(whole, 4, 1e-3)
  np.testing.assert_allclose(schedules.sample_t(part, 2, 1e-3), t[np.array([1, 3])], rtol=0)
  np.testing.assert_allclose(t, schedules.sample_t(key, 4, 1e-3), rtol=0)  # = the plain key's
  np.testing.assert_array_equal(rng.normal_per_position(key, (4, 5, 3)),
                                rng.normal_per_position(whole, (4, 5, 3)))


def test_split_keeps_every_microbatch_on_every_device():
  """Microbatch j holds rows j, j + k, ...: with the batch in contiguous per-device blocks
  whose size is a multiple of k, each microbatch takes the same number of rows per device."""
  x = jnp.arange(32)
  micro = accumulate.split({"x": x}, 4)["x"]
  np.testing.assert_array_equal(micro, np.arange(32).reshape(8, 4).T)
  np.testing.assert_array_equal(accumulate.rows(2, 4, 8), micro[2])
  per_device = np.asarray(micro) // 4  # device of each row (8 devices x 4 rows)
  assert all(sorted(row) == list(range(8)) for row in per_device)
