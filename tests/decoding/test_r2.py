"""R2 decoding rules on hand-built confidence arrays, the `mdlm_r2` sampler's invariants
(commits are final, NFE = network calls, the floor alone is `mdlm_ancestral`), and prompt
prefixes clamped by every sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax.decoding import ancestral as samplers, r2 as r2_samplers, r2_rules as r2
from idlm_jax.decoding import score as score_samplers, uniform as uniform_samplers
from idlm_jax.diffusion import categorical, mdlm
from idlm_jax.diffusion.schedules import LogLinear

T, F = True, False


def _b(rows):
  return jnp.array(rows, bool)


def _f(rows):
  return jnp.array(rows, jnp.float32)


def test_threshold_and_top1_rules():
  conf = _f([[0.95, 0.3, 0.9, 0.99], [0.2, 0.4, 0.1, 0.3]])
  cand = _b([[T, T, T, F], [F, F, F, F]])
  np.testing.assert_array_equal(r2.threshold_rule(conf, cand, 0.9), [[T, F, T, F], [F] * 4])
  np.testing.assert_array_equal(r2.top1_rule(conf, cand), [[T, F, F, F], [F] * 4])


def test_confidence_cluster_rule():
  """w = 3, at most 1 unmasked per window, mean confidence of its masked tokens >= 0.8."""
  conf = _f([[0.85, 0.79, 0.78, 0.10, 0.95, 0.20, 0.90, 0.90],  # only window 0 (mean .807)
             [0.85, 1.00, 0.78, 1.00, 0.95, 1.00, 0.90, 0.90],  # 1, 3, 5 unmasked
             [0.50, 0.50, 0.85, 0.85, 0.99, 0.99, 0.99, 0.99]])  # block 0 active only
  masked = _b([[T] * 8, [T, F, T, F, T, F, T, T], [T] * 8])
  segment = jnp.array([[0] * 8, [0] * 8, [0, 0, 0, 0, 1, 1, 1, 1]])
  cand = masked & (segment == 0)
  out = r2.confidence_cluster_rule(conf, cand, masked, segment, window=3, max_unmasked=1,
                                   tau=0.8)
  # row 1: windows {0,1,2} (M = 0, 2: .815), {2,3,4} (.865), {4,5,6}, {5,6,7}; the windows
  # with two unmasked tokens are skipped. Row 2: the only confident window, {2,3,4}
  # (mean over 2,3 = .85), crosses the block boundary, so nothing.
  np.testing.assert_array_equal(out, [[T, T, T, F, F, F, F, F],
                                      [T, F, T, F, T, F, T, T],
                                      [F] * 8])
  strict = r2.confidence_cluster_rule(conf, cand, masked, segment, window=3, max_unmasked=0,
                                      tau=0.8)
  np.testing.assert_array_equal(strict[:2], [[T, T, T, F, F, F, F, F], [F] * 8])


@pytest.mark.parametrize("select,expected", [
    ("confidence", [[T, F, F, T, F, F, F, F], [F, F, F, T, F, F, F, F]]),
    ("mid", [[F, T, F, T, F, F, F, F], [F, F, F, T, F, F, F, F]]),
    ("random", [[F, F, T, T, F, F, F, F], [F, F, F, T, F, F, F, F]])])
def test_token_cluster_commits_one_per_run(select, expected):
  """Runs of adjacent masks with one argmax: {0,1,2} -> 7 (max .85), {3,4} -> 3 (max .81, a
  tie: the first), {5} too short, {6,7} max .75 <= .8. Row 2: position 1 is unmasked, so run
  {0,1,2} splits into two singletons. Exactly one member of an eligible run is committed."""
  argmax = jnp.array([[7, 7, 7, 3, 3, 5, 9, 9]] * 2, jnp.int32)
  conf = _f([[0.85, 0.5, 0.6, 0.81, 0.81, 0.99, 0.7, 0.75]] * 2)
  cand = _b([[T] * 8, [T, F, T, T, T, T, T, T]])
  priority = _f([[0.1, 0.2, 0.9, 0.6, 0.3, 0.5, 0.5, 0.5]] * 2)
  out = r2.token_cluster_rule(conf, argmax, cand, jnp.zeros((2, 8), jnp.int32), min_size=2,
                              tau=0.8, select=select, priority=priority)
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("aggregate,commit_call", [("last", 3), ("mean", None), ("max", 3)])
def test_temporal_rule(aggregate, commit_call):
  """Position 0: argmax 2,2,2,2 with confidence .9,.5,.85,.85 (mean over the first three .75,
  over four .775: never >= .8). Position 1: argmax 1,1,4,4,4 at .95: the streak restarts at
  call 3 and reaches K = 3 at call 5. Position 2 is unmasked at call 2: its streak resets."""
  argmaxes = [[2, 1, 0], [2, 1, 0], [2, 4, 0], [2, 4, 0], [2, 4, 0]]
  confs = [[0.9, 0.95, 0.99], [0.5, 0.95, 0.99], [0.85, 0.95, 0.99], [0.85, 0.95, 0.99],
           [0.85, 0.95, 0.99]]
  alive = [[T, T, T], [T, T, F], [T, T, F], [T, T, F], [T, T, F]]
  streak = r2.empty_streak((1, 3))
  committed = {}
  for call, (a, c, m) in enumerate(zip(argmaxes, confs, alive), start=1):
    m = [mi and not committed.get(i) for i, mi in enumerate(m)]
    streak, commit = r2.temporal_rule(streak, _f([c]), jnp.array([a], jnp.int32), _b([m]),
                                      steps=3, tau=0.8, aggregate=aggregate)
    for i in np.flatnonzero(np.asarray(commit)[0]):
      committed[int(i)] = call
    assert int(streak.count[0, 2]) == (1 if call == 1 else 0)
  assert committed.get(0) == commit_call
  assert committed.get(1) == 5 and 2 not in committed


# ------------------------------------------------------------------ samplers on a tiny model
V, MASK, L, B = 5, 5, 12, 8
W = jax.random.normal(jax.random.key(3), (V + 1, V + 1)) * 2.0


def log_probs_fn(x, t):
  """A fixed, context-dependent, time-agnostic denoiser (SUBS)."""
  del t
  h = jax.nn.one_hot(x, V + 1) @ W
  h = 2.0 * (h + 0.5 * jnp.roll(h, 1, axis=1) + jnp.roll(h, -1, axis=1))
  return mdlm.subs_log_probs(h, x, MASK)


PREFIX = jnp.array([[0, 1, 2]] * (B // 2) + [[3, -1, -1]] * (B // 2), jnp.int32)


def _clamped(tokens, prefix=PREFIX):
  head = np.asarray(tokens)[:, :prefix.shape[1]]
  keep = np.asarray(prefix) >= 0
  return np.array_equal(head[keep], np.asarray(prefix)[keep])


@pytest.mark.parametrize("options", [
    r2_samplers.R2Options(rules=("threshold", *r2.RULES[1:]), clock="masked"),
    r2_samplers.R2Options(rules=r2.RULES, floor="top1", commit="sampled", block_length=4,
                          token_cluster_select="random", spatial_threshold=0.5,
                          temporal_threshold=0.3, threshold=0.6)])
def test_commits_are_final_and_nfe_counts_calls(options):
  """Every network input is recorded on the host: a position, once unmasked, keeps its token
  in every later call and in the output; NFE equals the number of calls."""
  calls = []

  def recording_fn(x, t):
    jax.debug.callback(lambda v: calls.append(np.asarray(v)), x, ordered=True)
    return log_probs_fn(x, t)

  with categorical.x64_scope("float64"):
    out = jax.jit(lambda k: r2_samplers.mdlm_r2(
        recording_fn, k, batch_size=B, seq_len=L, mask_id=MASK, schedule=LogLinear(1e-3),
        num_steps=6, options=options, prefix=PREFIX))(jax.random.key(0))
    out = jax.device_get(out)
  assert len(calls) == int(out.nfe) >= 1
  seen = np.stack(calls + [out.tokens])  # [calls + 1, B, L]
  for j in range(1, len(seen)):
    was = seen[j - 1] != MASK
    np.testing.assert_array_equal(seen[j][was], seen[j - 1][was])
  assert not np.any(out.tokens == MASK) and _clamped(out.tokens)
  assert np.all(out.row_nfe <= out.nfe)
  free = int(np.sum(np.asarray(PREFIX) < 0)) + B * (L - PREFIX.shape[1])
  assert int(out.commits.sum()) == free  # every generated token attributed to one rule
  assert int(out.commits[1:5].sum()) > 0  # the rules fired on this confident toy model


def test_floor_alone_is_the_ancestral_sampler(noise_removal="ancestral"):
  """rules = () with the ancestral floor draws exactly mdlm_ancestral's tokens (same keys);
  it stops once nothing is masked, so it saves at most the ancestral sampler's last call."""
  kw = dict(batch_size=B, seq_len=L, mask_id=MASK, schedule=LogLinear(1e-3), num_steps=5,
            noise_removal=noise_removal, prefix=PREFIX)
  with categorical.x64_scope("float64"):
    anc = jax.jit(lambda k: samplers.mdlm_ancestral(log_probs_fn, k, **kw))(jax.random.key(1))
    fast = jax.jit(lambda k: r2_samplers.mdlm_r2(
        log_probs_fn, k, options=r2_samplers.R2Options(rules=()), **kw))(jax.random.key(1))
  np.testing.assert_array_equal(anc.tokens, fast.tokens)
  assert 0 <= int(anc.nfe) - int(fast.nfe) <= 1
  assert int(fast.commits[1:5].sum()) == 0 and _clamped(anc.tokens)


def test_prefix_is_clamped_by_duo_and_score_samplers():
  """Uniform-state samplers move every token; the clamp keeps the prompt."""
  k = 4
  table = jax.random.normal(jax.random.key(5), (k, k))

  def duo_fn(z, t):
    return jax.nn.log_softmax(jax.nn.one_hot(z, k) @ table * (1.0 + t[:, None, None]), -1)

  def score_fn(x, t):
    return jnp.where(jnp.arange(k) == x[..., None], 0.0, duo_fn(x, t))

  prefix = jnp.array([[2, 0, -1]] * B, jnp.int32)
  schedule = LogLinear(1e-3)
  with categorical.x64_scope("float64"):
    duo = jax.jit(lambda key: uniform_samplers.duo_ancestral(
        duo_fn, key, batch_size=B, seq_len=6, vocab_size=k, alpha_fn=schedule.alpha,
        num_steps=3, prefix=prefix))(jax.random.key(2))
    score = jax.jit(lambda key: score_samplers.score_sampler(
        score_fn, key, kind="euler", graph="uniform", batch_size=B, seq_len=6, vocab_size=k,
        mask_id=k - 1, schedule=schedule, num_steps=3, prefix=prefix))(jax.random.key(3))
  assert _clamped(duo.tokens, prefix) and _clamped(score.tokens, prefix)
  # (an MDLM model through the absorbing-graph score sampler: tests/evals/test_samples.py)


def test_apply_prefix_and_no_prefix_path():
  x = jnp.full((2, 5), 9, jnp.int32)
  assert samplers.apply_prefix(x, None) is x
  out = samplers.apply_prefix(x, jnp.array([[1, 2], [3, -1]], jnp.int32))
  np.testing.assert_array_equal(out, [[1, 2, 9, 9, 9], [3, 9, 9, 9, 9]])
  with pytest.raises(ValueError, match="does not fit"):
    samplers.apply_prefix(x, jnp.zeros((2, 6), jnp.int32))
