"""The MDLM ancestral sampler against the exact reverse process on a tiny case."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from idlm_jax.decoding import ancestral as samplers
from idlm_jax.diffusion import categorical, mdlm
from idlm_jax.diffusion.schedules import LogLinear

V, MASK, L, N = 3, 3, 2, 3  # tokens {0,1,2}, [MASK]=3, length 2, 3 reverse steps
STATES = list(itertools.product(range(V + 1), repeat=L))
TABLE = jax.random.normal(jax.random.key(7), (len(STATES), L, V + 1)) * 1.5


def _index(x):
  return (x * (V + 1) ** jnp.arange(L)[::-1]).sum(-1)


def log_probs_fn(x, t):
  """A fixed context-dependent denoiser (ignores t): SUBS of a random table over states."""
  del t
  return mdlm.subs_log_probs(TABLE[_index(x)], x, MASK)


def exact_distribution(schedule, eps, noise_removal):
  """Brute-force reverse process: propagate the distribution over all (V+1)^L states."""
  grid = np.linspace(1.0, eps, N + 1)
  dist = {tuple([MASK] * L): 1.0}
  for t, s in zip(grid[:-1], grid[1:]):
    a_t, a_s = float(schedule.alpha(t)), float(schedule.alpha(s))
    new = {}
    for state, p in dist.items():
      px0 = np.exp(np.asarray(log_probs_fn(jnp.array([state]), None))[0])
      per_pos = []
      for i, tok in enumerate(state):
        if tok != MASK:
          per_pos.append({tok: 1.0})
        else:
          q = {v: (a_s - a_t) / (1 - a_t) * px0[i, v] for v in range(V)}
          q[MASK] = (1 - a_s) / (1 - a_t)
          per_pos.append(q)
      for combo in itertools.product(*[list(d.items()) for d in per_pos]):
        nxt = tuple(c[0] for c in combo)
        new[nxt] = new.get(nxt, 0.0) + p * np.prod([c[1] for c in combo])
    dist = new
  final = {}
  for state, p in dist.items():
    px0 = np.exp(np.asarray(log_probs_fn(jnp.array([state]), None))[0])
    options = []
    for i, tok in enumerate(state):
      if tok != MASK:
        options.append({tok: 1.0})
      elif noise_removal == "argmax":
        options.append({int(np.argmax(px0[i])): 1.0})
      else:
        options.append({v: px0[i, v] for v in range(V)})
    for combo in itertools.product(*[list(d.items()) for d in options]):
      out = tuple(c[0] for c in combo)
      final[out] = final.get(out, 0.0) + p * np.prod([c[1] for c in combo])
  return final


@pytest.mark.parametrize("noise_removal,precision", [("argmax", "float64"),
                                                     ("ancestral", "exact32")])
def test_ancestral_matches_exact_reverse_process(noise_removal, precision):
  schedule, eps, n = LogLinear(1e-3), 1e-5, 40_000
  with categorical.x64_scope(precision):
    out = jax.jit(lambda k: samplers.mdlm_ancestral(
        log_probs_fn, k, batch_size=n, seq_len=L, mask_id=MASK, schedule=schedule,
        num_steps=N, eps=eps, precision=precision, noise_removal=noise_removal))(
            jax.random.key(0))
  tokens = np.asarray(out.tokens)
  assert tokens.max() < V  # no [MASK] left
  exact = exact_distribution(schedule, eps, noise_removal)
  keys = sorted(exact)
  observed = np.array([np.sum(np.all(tokens == np.array(k), axis=1)) for k in keys])
  expected = np.array([exact[k] for k in keys]) * n
  keep = expected > 5
  assert observed[~keep].sum() <= max(10, 3 * expected[~keep].sum())
  chi2 = stats.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum())
  assert chi2.pvalue > 1e-3, (observed, expected)


def test_cache_skips_calls_and_nfe_counts_calls():
  calls = []
  schedule = LogLinear(1e-3)

  def counting_fn(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return log_probs_fn(x, t)

  with categorical.x64_scope("float64"):
    out = samplers.mdlm_ancestral(counting_fn, jax.random.key(3), batch_size=1, seq_len=L,
                                  mask_id=MASK, schedule=schedule, num_steps=64, eps=1e-5)
  jax.effects_barrier()
  assert int(out.nfe) == len(calls)
  assert 1 <= int(out.nfe) <= L + 1 < 64  # at most one call per change, plus the first
  with categorical.x64_scope("float64"):
    nocache = samplers.mdlm_ancestral(log_probs_fn, jax.random.key(3), batch_size=1, seq_len=L,
                                      mask_id=MASK, schedule=schedule, num_steps=64, eps=1e-5,
                                      cache=False)
  assert int(nocache.nfe) == 65
  # caching never changes the draw: same key, same tokens
  np.testing.assert_array_equal(out.tokens, nocache.tokens)
