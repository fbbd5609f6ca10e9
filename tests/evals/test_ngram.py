"""n-gram distribution metrics on the synthetic source (evals/ngram.py)."""

import collections
import itertools
import math

import numpy as np
import pytest

from idlm_jax.data import synthetic
from idlm_jax.evals import ngram


def brute_force_marginals(hmm, length, max_n):
  """Pooled n-gram marginals by enumerating all V^length sequences, each weighted by its
  probability from the forward algorithm (synthetic.hmm_log_likelihood)."""
  v = hmm.vocab_size
  seqs = np.array(list(itertools.product(range(v), repeat=length)))
  p = np.exp(synthetic.hmm_log_likelihood(hmm, seqs))
  assert abs(p.sum() - 1) < 1e-12
  out = []
  for n in range(1, max_n + 1):
    acc = collections.defaultdict(float)
    for s, ps in zip(seqs, p):
      if ps == 0:
        continue
      for t in range(length - n + 1):
        acc[tuple(s[t:t + n])] += ps / (length - n + 1)
    out.append(acc)
  return out


@pytest.mark.parametrize("states,vocab,branching,length,seed",
                         [(3, 3, 2, 5, 1), (3, 3, 3, 5, 2), (4, 3, 2, 6, 3)])
def test_exact_marginals_equal_brute_force(states, vocab, branching, length, seed):
  hmm = synthetic.random_hmm(states, vocab, branching, 0.5, seed)
  exact = ngram.exact_marginals(hmm, length, 4)
  brute = brute_force_marginals(hmm, length, 4)
  for m, ref in zip(exact, brute):
    got = {tuple(g): q for g, q in zip(ngram.decode(m.codes, m.n, m.base), m.probs)}
    ref = {g: q for g, q in ref.items() if q > 0}
    assert set(got) == set(ref)
    np.testing.assert_allclose([got[g] for g in ref], list(ref.values()), rtol=1e-12, atol=0)
    assert abs(m.probs.sum() - 1) < 1e-12 and (np.diff(m.codes) > 0).all()


def test_default_source_marginals_are_sparse_and_normalised():
  hmm = synthetic.random_hmm(256, 32, 3, 0.5, 0)
  exact = ngram.exact_marginals(hmm, 62, 4)
  for m in exact:
    assert abs(m.probs.sum() - 1) < 1e-12 and (m.probs > 0).all()
    assert len(m.codes) <= 256 * 3 ** m.n  # at most one n-gram per (state, path)
  # unigrams: the pooled marginal is the mean of the exact per-position symbol marginals
  p = ngram.state_marginals(hmm, 62)
  np.testing.assert_allclose(exact[0].probs, (p @ hmm.emit).mean(0)[exact[0].codes], rtol=1e-12)


def test_encode_decode_roundtrip_and_bodies():
  x = np.array([[0, 5, 32, 7], [31, 0, 0, 1]])
  np.testing.assert_array_equal(ngram.decode(ngram.encode(x, 33), 4, 33), x)
  rows = np.array([[33, 1, 2, 40, 34], [33, 0, -1, 5, 34]])
  np.testing.assert_array_equal(ngram.bodies(rows, 33, 34, 32), [[1, 2, 32], [0, 32, 5]])
  np.testing.assert_array_equal(ngram.bodies(rows[:, 1:-1], None, None, 32),
                                [[1, 2, 32], [0, 32, 5]])


def test_compare_by_hand():
  m = ngram.Marginal(n=1, base=4, codes=np.array([0, 1]), probs=np.array([0.5, 0.5]))
  # 3 counts of symbol 0, none of 1, 1 of the impossible symbol 3; beta = 1
  out = ngram.compare(m, np.array([0, 3]), np.array([3, 1]), beta=1.0)
  m0, m1 = (3 + 0.5) / 5, 0.5 / 5
  assert out["kl"] == pytest.approx(0.5 * math.log(0.5 / m0) + 0.5 * math.log(0.5 / m1), 1e-12)
  assert out["tv"] == pytest.approx(0.5 * (abs(0.75 - 0.5) + 0.5 + 0.25), 1e-12)
  assert out["outside"] == 0.25 and out["distinct"] == 0.5
  # a perfect sample of the marginal: KL -> 0 (exactly 0 here, m = q), TV = 0
  out = ngram.compare(m, np.array([0, 1]), np.array([5, 5]))
  assert out["kl"] == pytest.approx(0.0, abs=1e-15) and out["tv"] == 0.0


def test_dup_rate():
  rows = np.array([[1, 2], [1, 2], [3, 4], [5, 6], [5, 6], [5, 6], [7, 8]])
  assert ngram.dup_rate(rows) == pytest.approx(5 / 7)
  assert ngram.dup_rate(rows[[0, 2, 3]]) == 0.0


def test_source_samples_converge_and_sit_on_the_floor():
  hmm = synthetic.random_hmm(4, 3, 2, 0.5, 3)
  length = 8
  exact = ngram.exact_marginals(hmm, length, 4)
  # frequencies are unbiased: TV of N rows <= E bound 1/2 sum_g sqrt(q_g / N) (Var of a pooled
  # frequency <= q_g / N even with fully correlated positions; Cauchy-Schwarz)
  n = 20000
  row = ngram.distribution_metrics(hmm, synthetic.sample(hmm, n, length, 5), marginals=exact)
  for m in exact:
    assert row[f"ngram_tv_{m.n}"] <= 0.5 * np.sqrt(m.probs / n).sum()
    assert row[f"ngram_outside_{m.n}"] == 0.0
  # the floor shrinks toward 0 as N grows ...
  floors = [ngram.floor(hmm, n, length, seed=1, repeats=8) for n in (32, 256, 2048)]
  for key in ("ngram_kl_4", "ngram_tv_4", "ngram_kl_2", "ngram_tv_2"):
    means = [f[key]["mean"] for f in floors]
    assert means[0] > means[1] > means[2] > 0
  # ... and a fresh draw of source samples reads within it
  big = synthetic.random_hmm(256, 32, 3, 0.5, 0)
  f = ngram.floor(big, 128, 62, seed=0, repeats=12)
  row = ngram.distribution_metrics(big, synthetic.sample(big, 128, 62, 999))
  for k in range(1, 5):
    for key in (f"ngram_kl_{k}", f"ngram_tv_{k}"):
      assert abs(row[key] - f[key]["mean"]) <= 5 * f[key]["std"] + 1e-12, key


def _sharpened(hmm, temperature):
  e = hmm.emit ** (1.0 / temperature)
  return synthetic.UnifilarHMM(emit=e / e.sum(1, keepdims=True), next_state=hmm.next_state,
                               start=hmm.start)


def test_collapse_raises_kl_tv_while_nll_falls():
  hmm = synthetic.random_hmm(256, 32, 3, 0.5, 0)
  n, length, bos, eos = 256, 62, 33, 34
  marginals = ngram.exact_marginals(hmm, length, 4)
  frame = lambda body: np.concatenate([np.full((len(body), 1), bos), body,
                                       np.full((len(body), 1), eos)], 1)
  source = synthetic.sample(hmm, n, length, 11)
  sharp = synthetic.sample(_sharpened(hmm, 0.5), n, length, 11)
  greedy = synthetic.sample(_sharpened(hmm, 0.01), 1, length, 0)  # the likeliest path
  collapsed = np.repeat(greedy, n, 0)
  # exact per-token NLL under the source (unifilar: tracking the state is the forward
  # algorithm; noise 0, so an impossible symbol would be +inf)
  nll = lambda body: synthetic.conditional_nll(hmm, body, 0.0)[0].mean()
  rows = {name: ngram.distribution_metrics(hmm, frame(body), bos, eos, marginals=marginals)
          for name, body in (("source", source), ("sharp", sharp), ("collapsed", collapsed))}
  # per-sample NLL prefers the collapsed samplers ...
  assert nll(collapsed) < nll(sharp) < nll(source)
  assert np.isfinite(nll(sharp)) and np.isfinite(nll(collapsed))  # all samples valid
  # ... the distribution metrics do not
  for k in range(1, 5):
    for key in (f"ngram_kl_{k}", f"ngram_tv_{k}"):
      assert rows["source"][key] < rows["sharp"][key] < rows["collapsed"][key], key
  assert rows["collapsed"]["dup_rate"] == 1.0 and rows["source"]["dup_rate"] == 0.0
  assert rows["collapsed"]["ngram_distinct_4"] < rows["sharp"]["ngram_distinct_4"] \
      < rows["source"]["ngram_distinct_4"]


def test_impossible_ngrams_count_as_outside_support():
  hmm = synthetic.random_hmm(256, 32, 3, 0.5, 0)
  body = synthetic.sample(hmm, 128, 62, 3)
  clean = ngram.distribution_metrics(hmm, body)
  bad = body.copy()
  rng = np.random.default_rng(0)
  rows, cols = rng.integers(0, 128, 40), rng.integers(0, 62, 40)
  bad[rows, cols] = 40  # an id outside the symbols (a special token inside the body)
  worse = ngram.distribution_metrics(hmm, bad)
  assert clean["ngram_outside_1"] == 0.0 and worse["ngram_outside_1"] > 0.0
  for k in range(1, 5):
    assert worse[f"ngram_tv_{k}"] > clean[f"ngram_tv_{k}"]
    assert worse[f"ngram_kl_{k}"] > clean[f"ngram_kl_{k}"]
    # the KL rises at least by about -log(1 - outside): m sums to 1 - outside M / (M + 1)
    o = worse[f"ngram_outside_{k}"]
    assert worse[f"ngram_kl_{k}"] >= -math.log(1 - o * (1 - 1 / (128 * (63 - k) + 1)))


def test_distribution_metrics_flat_floats_and_frame():
  hmm = synthetic.random_hmm(16, 8, 3, 0.5, 2)
  body = synthetic.sample(hmm, 32, 10, 1)
  framed = np.concatenate([np.full((32, 1), 9), body, np.full((32, 1), 10)], 1)
  a = ngram.distribution_metrics(hmm, framed, 9, 10)
  b = ngram.distribution_metrics(hmm, body)
  assert set(a) == {f"ngram_{m}_{k}" for m in ("kl", "tv", "outside", "distinct")
                    for k in range(1, 5)} | {"dup_rate"}
  assert all(isinstance(v, float) for v in a.values())
  for key in a:
    if key != "dup_rate":
      assert a[key] == b[key]
  with pytest.raises(ValueError):
    ngram.exact_marginals(hmm, 3, 4)
