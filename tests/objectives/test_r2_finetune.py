"""Fine-tuning on R2 trajectories (issue #8 part 2): intermediate states rebuilt from commit
steps (by hand, and against every network input of a real `mdlm_r2` run), the trajectory
loss on a toy model by hand, the quality filter, the .npz round trip and the data source."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.data import trajectories as traj_data
from idlm_jax.data.tokenizers import get_tokenizer
from idlm_jax.decoding import r2 as r2_samplers, r2_rules as r2, trajectories as r2_trajectories
from idlm_jax.diffusion import categorical, mdlm
from idlm_jax.diffusion.schedules import LogLinear
from idlm_jax.models import dllm
from idlm_jax.objectives import r2_finetune

M = 9  # [MASK]


def test_state_at_rebuilds_intermediate_states_by_hand():
  tokens = np.array([[5, 1, 2, 3, 4]])
  steps = np.array([[-1, 2, 0, 1, 2]])  # position 0 is a prompt token
  want = {0: [5, M, M, M, M], 1: [5, M, 2, M, M], 2: [5, M, 2, 3, M], 3: [5, 1, 2, 3, 4]}
  for k, row in want.items():
    np.testing.assert_array_equal(traj_data.state_at(tokens, steps, k, M), [row])
  ks = jnp.array([1, 2])  # per-row k, JAX arrays
  out = traj_data.state_at(jnp.array(np.repeat(tokens, 2, 0)),
                                 jnp.array(np.repeat(steps, 2, 0)), ks, M)
  np.testing.assert_array_equal(out, [want[1], want[2]])
  np.testing.assert_array_equal(traj_data.num_calls(steps), [3])


V, B, L = 6, 4, 8
W = jax.random.normal(jax.random.key(0), (V + 1, V + 1)) * 2.0


def toy_log_probs(x, t):
  del t
  h = jax.nn.one_hot(x, V + 1) @ W
  h = 2.0 * (h + 0.5 * jnp.roll(h, 1, axis=1) + jnp.roll(h, -1, axis=1))
  return mdlm.subs_log_probs(h, x, V)


def test_recorded_commit_steps_reproduce_every_network_input():
  """x_k = final where commit_step < k, else [MASK], equals the input of the sampler's k-th
  call for every row and k (recorded through a host callback), with all rules and a prompt."""
  calls = []

  def recording_fn(x, t):
    jax.debug.callback(lambda v: calls.append(np.asarray(v)), x, ordered=True)
    return toy_log_probs(x, t)

  prefix = jnp.array([[0, -1]] * B, jnp.int32)
  with categorical.x64_scope("float64"):
    out = jax.device_get(jax.jit(lambda k: r2_samplers.mdlm_r2(
        recording_fn, k, batch_size=B, seq_len=L, mask_id=V, schedule=LogLinear(1e-3),
        num_steps=6, options=r2_samplers.R2Options(rules=r2.RULES), prefix=prefix))(
            jax.random.key(3)))
  assert len(calls) == int(out.nfe)
  steps, rules = np.asarray(out.commit_step), np.asarray(out.commit_rule)
  np.testing.assert_array_equal(steps[:, 0], -1)  # the prompt
  assert np.all(steps[:, 1:] >= 0) and np.all(rules[:, 1:] >= 0)
  np.testing.assert_array_equal(traj_data.num_calls(steps), out.row_nfe)
  for r in range(len(r2_samplers.COUNTS)):  # per-rule counts agree with the record
    assert int((rules == r).sum()) == int(out.commits[r])
  for b in range(B):  # row b makes its first row_nfe[b] calls of the batch
    for k in range(int(out.row_nfe[b])):
      np.testing.assert_array_equal(
          traj_data.state_at(out.tokens[b], steps[b], k, V), calls[k][b])


def test_loss_terms_by_hand():
  """One row, L = 4, k = 1: M = {1, 2, 3} (s >= 1), m = 3/4; E (h = 1, rules {temporal}) =
  {1} (s = 1 < 2, temporal); position 2 has s = 1 but was a floor commit; 3 is later."""
  log_p = jnp.log(jnp.array([[1.0, 0.5, 0.25, 0.99]]))
  steps = jnp.array([[0, 1, 1, 2]])
  rules = jnp.array([[0, 4, 0, 4]])
  k = jnp.array([1])
  s = r2_finetune.loss_terms(log_p, steps, rules, k, horizon=1, rule_ids=(4,), target=0.95)
  ce = -np.log([0.5, 0.25, 0.99])
  np.testing.assert_allclose(s["nelbo_sum"], ce.sum() / 0.75, rtol=1e-6)
  np.testing.assert_allclose(s["tokens"], 4.0)
  np.testing.assert_allclose(s["sharpen_sum"], np.log(0.95) - np.log(0.5), rtol=1e-6)
  np.testing.assert_allclose(s["early"], 1.0)
  np.testing.assert_allclose(s["masked"], 3.0)
  total = r2_finetune.combine(s, 2.0)
  np.testing.assert_allclose(total, ce.sum() / 0.75 / 4 + 2 * (np.log(0.95) - np.log(0.5)),
                             rtol=1e-6)
  # horizon 2 adds position 3 (temporal, s = 2 < 3), whose p = .99 >= c*: a zero hinge
  s2 = r2_finetune.loss_terms(log_p, steps, rules, k, horizon=2, rule_ids=(4,), target=0.95)
  np.testing.assert_allclose(s2["early"], 2.0)
  np.testing.assert_allclose(s2["sharpen_sum"], s["sharpen_sum"], rtol=1e-6)
  none = r2_finetune.loss_terms(log_p, steps, rules, k, horizon=2, rule_ids=(), target=0.95)
  assert float(none["early"]) == 0.0


def test_trajectory_loss_on_a_toy_model_by_hand():
  """trajectory_sums with a fixed toy network equals the hand computation at the drawn k."""
  tokens = jnp.array([[1, 2, 3, 4, 5, 0], [2, 2, 1, 0, 3, 4]], jnp.int32)
  steps = jnp.array([[-1, 0, 2, 1, 3, 3], [0, 1, 1, 2, 0, 4]], jnp.int32)
  rules = jnp.array([[-1, 0, 4, 1, 2, 0], [0, 4, 1, 0, 0, 3]], jnp.int32)
  batch = {"input_ids": tokens, "commit_step": steps, "commit_rule": rules,
           "attention_mask": jnp.ones_like(tokens)}

  def model(x, sigma, dropout_key=None):
    del sigma, dropout_key
    return jax.nn.one_hot(x, V + 1) @ W + jnp.roll(jax.nn.one_hot(x, V + 1) @ W, 1, axis=1)

  key = jax.random.key(7)
  s = r2_finetune.trajectory_sums(model, batch, key, schedule=LogLinear(1e-3), mask_id=V,
                                  horizon=2, rule_ids=(1, 2, 3, 4), target=0.9, train=True)
  k = np.asarray(r2_finetune.sample_call(jax.random.split(key)[0], steps))
  assert np.all(k >= 0) and np.all(k < np.array([4, 5]))
  xk = np.where(np.asarray(steps) < k[:, None], tokens, V)
  logp = np.asarray(jax.nn.log_softmax(jnp.where(jnp.arange(V + 1) == V, -jnp.inf,
                                                  model(jnp.asarray(xk), None)), -1))
  lp = np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]
  masked = np.asarray(steps) >= k[:, None]
  free = (np.asarray(steps) >= 0).sum(-1)
  nelbo = sum((-lp[b][masked[b]]).sum() * free[b] / masked[b].sum() for b in range(2))
  early = masked & (np.asarray(steps) < k[:, None] + 2) & np.isin(np.asarray(rules), [1, 2, 3, 4])
  hinge = np.maximum(0.0, np.log(0.9) - lp)[early].sum()
  np.testing.assert_allclose(s["nelbo_sum"], nelbo, rtol=1e-5)
  np.testing.assert_allclose(s["sharpen_sum"], hinge, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s["early"], early.sum())
  np.testing.assert_allclose(s["tokens"], free.sum())


def test_keep_best_keeps_the_lowest_scores():
  scores = np.array([3.0, 1.0, np.nan, 2.0, 0.5, 4.0, 1.5, 2.5])
  np.testing.assert_array_equal(r2_trajectories.keep_best(scores, 0.25), [4, 1])
  np.testing.assert_array_equal(r2_trajectories.keep_best(scores, 0.3), [4, 1, 6])
  np.testing.assert_array_equal(r2_trajectories.keep_best(scores, 1.0)[-1], 2)  # NaN last
  assert len(r2_trajectories.keep_best(scores, 1e-6)) == 1
  with pytest.raises(ValueError):
    r2_trajectories.keep_best(scores, 0.0)


def test_npz_round_trip_and_data_source(tmp_path):
  rng = np.random.default_rng(0)
  traj = traj_data.Trajectories(
      rng.integers(0, V, (10, L)).astype(np.int32), rng.integers(-1, 20, (10, L)).astype(np.int32),
      rng.integers(-1, 6, (10, L)).astype(np.int32), rng.random(10).astype(np.float32))
  path = tmp_path / "t.npz"
  traj_data.save(path, traj, {"steps": 64})
  back, meta = traj_data.load(path)
  assert meta == {"steps": 64}
  for a, b in zip(traj, back):
    np.testing.assert_array_equal(a, b)
  rows = traj_data.TrajectoryRows(back, V + 1)
  got = rows.gather(np.array([3, 1]))
  np.testing.assert_array_equal(got["input_ids"], traj.tokens[[3, 1]])
  np.testing.assert_array_equal(got["commit_step"], traj.commit_step[[3, 1]])
  np.testing.assert_array_equal(got["commit_rule"], traj.commit_rule[[3, 1]])
  assert got["attention_mask"].shape == (2, L) and rows.token_counts().sum() == 10 * L
  from idlm_jax import config as config_lib
  from ml_collections import ConfigDict
  with pytest.raises(config_lib.ConfigError, match=r"distill\.r2ft\.trajectories"):
    r2_finetune.get_datasets(ConfigDict({"distill": {"r2ft": {"trajectories": ""}}}), None)
  stats = r2_trajectories.rule_stats(traj)
  assert set(stats["commits_per_sample"]) == set(r2_samplers.COUNTS)


def test_random_masks_keep_the_trajectory_count():
  steps = jnp.array([[-1, 0, 2, 1, 3, 3], [0, 1, 1, 2, 0, 4]], jnp.int32)
  k = jnp.array([2, 1])
  m = np.asarray(r2_finetune.random_masks(jax.random.key(0), steps, k))
  np.testing.assert_array_equal(m.sum(-1), [3, 4])
  assert not m[0, 0]  # never the prompt


@pytest.mark.parametrize("override,message", [
    ("distill.r2ft.sharpen_rules='floor'", r"distill\.r2ft\.sharpen_rules"),
    ("distill.r2ft.keep_fraction=0.0", r"distill\.r2ft\.keep_fraction: must be in \(0, 1\]"),
    ("distill.r2ft.masks='zigzag'", r"distill\.r2ft\.masks"),
    ("diffusion.algo='sedd'", r"diffusion\.algo"),
])
def test_config_validation_names_the_field(override, message):
  from idlm_jax import config as config_lib
  base = ["distill.teacher=/tmp/teacher", "distill.r2ft.trajectories=/tmp/t.npz"]
  config_lib.load_config("configs/r2_finetune_synthetic.py", base)  # valid as shipped + paths
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load_config("configs/r2_finetune_synthetic.py", [*base, override])


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_prompted_trajectories_carry_the_attention_mask(tmp_path):
  """Prompted (left-padded) trajectories: the stored attention mask reaches the batches, the
  validation split is the reasoning test split, and the DLLM loss sees the mask (pads hidden:
  changing a hidden pad token changes nothing)."""
  tok = get_tokenizer("reasoning")
  n, length = 4, 48
  rng = np.random.default_rng(0)
  tokens = rng.integers(10, 100, (n, length)).astype(np.int32)
  tokens[:, :3] = tok.pad_id
  step = np.concatenate([np.full((n, 16), -1), rng.integers(0, 5, (n, 32))], 1)
  rule = np.where(step >= 0, 1, -1)
  att = (np.arange(length) >= 3)[None].repeat(n, 0).astype(np.int32)
  path = tmp_path / "t.npz"
  traj_data.save(path, traj_data.Trajectories(tokens, step, rule, np.zeros(n, np.float32)),
                 {"test": True}, att)
  cfg = config_lib.load_config("configs/reasoning_llada.py:r2ft", [
      f"distill.r2ft.trajectories='{path}'", "data.reasoning.test_problems=8",
      "train.global_batch_size=4", "eval.batch_size=4"])
  train, val = r2_finetune.get_datasets(cfg, tok)
  batch = next(train)
  assert (batch["attention_mask"] == att[:len(batch["attention_mask"])]).all()
  assert "prompt_mask" in val.batch(0)
  model = dllm.build(dllm.DLLMConfig(arch="llada", vocab_size=tok.model_vocab_size, d_model=32,
                                     n_layers=1, n_heads=2, n_kv_heads=2, mlp_hidden_size=64,
                                     rope_theta=1e4, rms_norm_eps=1e-5))
  b = {k: jnp.asarray(v) for k, v in train.rows.gather(np.arange(n)).items()}
  other = dict(b, input_ids=b["input_ids"].at[:, 0].set(11))
  kw = dict(schedule=LogLinear(1e-3), mask_id=tok.mask_id, horizon=3, rule_ids=(1,),
            target=0.95, train=False)
  a = r2_finetune.trajectory_sums(model, b, jax.random.key(0), **kw)
  c = r2_finetune.trajectory_sums(model, other, jax.random.key(0), **kw)
  assert float(a["nelbo_sum"]) == pytest.approx(float(c["nelbo_sum"]), rel=1e-5)
