"""SEDD analytic/Euler and Duo ancestral samplers against the exact reverse process they
implement, on a tiny case: enumerate all states, propagate the transition kernel (written here
from matrix exponentials / Bayes' rule, independently of the library), compare by chi-square."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.linalg import expm

from idlm_jax.decoding import score as score_samplers, uniform as uniform_samplers
from idlm_jax.diffusion import categorical, uniform
from idlm_jax.diffusion.schedules import LogLinear
from tests.diffusion.test_sedd import rate_matrix

V, MASK, L, N = 4, 3, 2, 3
STATES = list(itertools.product(range(V), repeat=L))
TABLE = jax.random.normal(jax.random.key(7), (V ** L, L, V))


def _index(x):
  return (x * V ** jnp.arange(L)[::-1]).sum(-1)


def log_score_fn(x, t):
  """A fixed context- and time-dependent log-score, 0 at the current token."""
  ls = TABLE[_index(x)] * (1.0 + 0.5 * t[:, None, None])
  return jnp.where(jnp.arange(V) == x[..., None], 0.0, ls)


def _propagate(dist, kernel):
  """dist over states -> dist after one factorised step; kernel(state, i) -> probs over V."""
  new = {}
  for state, p in dist.items():
    rows = [kernel(state, i) for i in range(L)]
    for nxt in itertools.product(range(V), repeat=L):
      q = p * np.prod([rows[i][nxt[i]] for i in range(L)])
      if q > 0:
        new[nxt] = new.get(nxt, 0.0) + q
  return new


def _chi2(tokens, exact):
  keys = sorted(exact)
  n = len(tokens)
  observed = np.array([np.sum(np.all(tokens == np.array(k), axis=1)) for k in keys])
  expected = np.array([exact[k] for k in keys]) * n
  assert observed.sum() == n  # nothing outside the support
  keep = expected > 5
  assert observed[~keep].sum() <= max(10, 3 * expected[~keep].sum())
  chi2 = stats.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum())
  assert chi2.pvalue > 1e-3, (observed, expected)


def exact_score_sampler(kind, graph, schedule, eps):
  q = rate_matrix(graph)  # same V=4, [MASK]=3 as test_sedd
  sigma = lambda t: -np.log1p(-(1 - schedule.eps) * t)
  grid = np.linspace(1.0, eps, N + 1)
  if graph == "absorbing":
    dist = {tuple([MASK] * L): 1.0}
  else:
    dist = {s: 1.0 / len(STATES) for s in STATES}

  def score(state, t):
    return np.exp(np.asarray(log_score_fn(jnp.array([state]), jnp.array([t])))[0])

  def analytic_row(state, i, t, dsig, drop_mask=False):
    s = score(state, t)[i]
    probs = np.maximum((expm(-dsig * q) @ s) * expm(dsig * q)[state[i]], 0.0)
    if drop_mask:
      probs[MASK] = 0.0
    return probs / probs.sum()

  for t, s in zip(grid[:-1], grid[1:]):
    if kind == "analytic":
      kernel = lambda st, i: analytic_row(st, i, t, sigma(t) - sigma(s))
    else:
      def kernel(st, i):
        sc = score(st, t)[i]
        rate = q[st[i]] * sc
        rate[st[i]] = 0.0
        rate[st[i]] = -rate.sum()
        rate_sigma = (1 - schedule.eps) / (1 - (1 - schedule.eps) * t)
        probs = np.maximum(np.eye(V)[st[i]] + (t - s) * rate_sigma * rate, 0.0)
        return probs / probs.sum()
    dist = _propagate(dist, kernel)
  return _propagate(dist, lambda st, i: analytic_row(st, i, eps, sigma(eps),
                                                     drop_mask=graph == "absorbing"))


@pytest.mark.parametrize("kind,graph,precision", [("analytic", "absorbing", "float64"),
                                                  ("analytic", "uniform", "exact32"),
                                                  ("euler", "absorbing", "exact32"),
                                                  ("euler", "uniform", "float64")])
def test_score_samplers_match_exact_reverse_process(kind, graph, precision):
  schedule, eps, n = LogLinear(1e-3), 1e-5, 40_000
  with categorical.x64_scope(precision):
    out = jax.jit(lambda k: score_samplers.score_sampler(
        log_score_fn, k, kind=kind, graph=graph, batch_size=n, seq_len=L, vocab_size=V,
        mask_id=MASK, schedule=schedule, num_steps=N, eps=eps, precision=precision))(
            jax.random.key(0))
  tokens = np.asarray(out.tokens)
  assert int(out.nfe) == N + 1
  if graph == "absorbing":
    assert tokens.max() < MASK
  _chi2(tokens, exact_score_sampler(kind, graph, schedule, eps))


# ------------------------------------------------------------------ Duo / UDLM

K = 3
DUO_STATES = list(itertools.product(range(K), repeat=L))
DUO_TABLE = jax.random.normal(jax.random.key(8), (K ** L, L, K)) * 1.5


def duo_log_probs_fn(z, t):
  code = (z * K ** jnp.arange(L)[::-1]).sum(-1)
  return jax.nn.log_softmax(DUO_TABLE[code] * (1.0 + t[:, None, None]), -1)


def _bayes_posterior(x_theta, zt, a_t, a_s):
  a_ts = a_t / a_s
  p = (a_ts * (np.arange(K) == zt) + (1 - a_ts) / K) * (a_s * x_theta + (1 - a_s) / K)
  return p / p.sum()


def _top_p(p, top_p):
  order = np.argsort(-p)
  keep = np.zeros_like(p, bool)
  mass = 0.0
  for j in order:
    keep[j] = True
    mass += p[j]
    if mass >= top_p:
      break
  out = np.where(keep, p, 0.0)
  return out / out.sum()


def exact_duo(schedule, eps, noise_removal, top_p):
  grid = np.linspace(1.0, eps, N + 1)
  dist = {s: 1.0 / len(DUO_STATES) for s in DUO_STATES}

  def x_theta(state, t):
    x = np.exp(np.asarray(duo_log_probs_fn(jnp.array([state]), jnp.array([t])), np.float64)[0])
    return [_top_p(r / r.sum(), top_p) for r in x]

  def step(dist, kernel):
    new = {}
    for state, p in dist.items():
      rows = kernel(state)
      for nxt in DUO_STATES:
        q = p * np.prod([rows[i][nxt[i]] for i in range(L)])
        if q > 0:
          new[nxt] = new.get(nxt, 0.0) + q
    return new

  for t, s in zip(grid[:-1], grid[1:]):
    a_t, a_s = float(schedule.alpha(t)), float(schedule.alpha(s))
    dist = step(dist, lambda st: [_bayes_posterior(x, st[i], a_t, a_s)
                                  for i, x in enumerate(x_theta(st, t))])
  a_end = float(schedule.alpha(eps))
  if noise_removal == "argmax":
    return step(dist, lambda st: [np.eye(K)[np.argmax(x)] for x in x_theta(st, eps)])
  return step(dist, lambda st: [_bayes_posterior(x, st[i], a_end, 1.0)
                                for i, x in enumerate(x_theta(st, eps))])


@pytest.mark.parametrize("noise_removal,precision,top_p", [("ancestral", "float64", 1.0),
                                                           ("argmax", "exact32", 1.0),
                                                           ("ancestral", "float64", 0.8)])
def test_duo_ancestral_matches_exact_reverse_process(noise_removal, precision, top_p):
  schedule, eps, n = LogLinear(1e-3), 1e-5, 40_000
  with categorical.x64_scope(precision):
    out = jax.jit(lambda k: uniform_samplers.duo_ancestral(
        duo_log_probs_fn, k, batch_size=n, seq_len=L, vocab_size=K, alpha_fn=schedule.alpha,
        num_steps=N, eps=eps, precision=precision, noise_removal=noise_removal,
        top_p=top_p))(jax.random.key(1))
  assert int(out.nfe) == N + 1
  _chi2(np.asarray(out.tokens), exact_duo(schedule, eps, noise_removal, top_p))


def test_duo_posterior_formula_is_bayes():
  rng = np.random.default_rng(0)
  for _ in range(10):
    x = rng.dirichlet(np.ones(K))
    zt = rng.integers(K)
    a_t, a_s = sorted(rng.uniform(0.05, 0.95, 2))
    got = uniform.posterior_probs(jnp.asarray(x, jnp.float32)[None, None], jnp.array([[zt]]),
                                  a_t, a_s)[0, 0]
    np.testing.assert_allclose(got, _bayes_posterior(x, zt, a_t, a_s), rtol=1e-5)
