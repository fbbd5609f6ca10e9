"""The synthetic HMM source: exact likelihood and entropy vs brute-force enumeration."""

import itertools

import numpy as np
import pytest

from idlm_jax.data import synthetic




def _brute_force(m, init, seq):
  k = len(init)
  total = 0.0
  for path in itertools.product(range(k), repeat=len(seq)):
    p = init @ m[seq[0]][:, path[0]]
    for t in range(1, len(seq)):
      p *= m[seq[t]][path[t - 1], path[t]]
    total += p
  return total


def test_forward_matches_brute_force_on_a_general_tiny_hmm():
  rng = np.random.default_rng(0)
  k, v, n = 3, 2, 4
  m = rng.random((v, k, k))
  m /= m.sum(axis=(0, 2), keepdims=True)  # sum over (x, s') of P(x, s' | s) = 1
  init = rng.dirichlet(np.ones(k))
  seqs = np.array(list(itertools.product(range(v), repeat=n)))
  ll = synthetic.log_likelihood(m, init, seqs)
  brute = np.array([_brute_force(m, init, s) for s in seqs])
  np.testing.assert_allclose(np.exp(ll), brute, rtol=1e-12)
  assert np.exp(ll).sum() == pytest.approx(1.0, abs=1e-12)


def test_unifilar_likelihood_and_entropy_vs_enumeration():
  hmm = synthetic.random_hmm(num_states=5, vocab_size=3, branching=2, seed=3)
  n = 5
  seqs = np.array(list(itertools.product(range(3), repeat=n)))
  ll = synthetic.hmm_log_likelihood(hmm, seqs)
  p = np.exp(ll)
  assert p.sum() == pytest.approx(1.0, abs=1e-12)
  brute = np.array([_brute_force(hmm.matrices(), hmm.initial(), s) for s in seqs[:40]])
  np.testing.assert_allclose(p[:40], brute, rtol=1e-12)
  nz = p > 0
  h_brute = -(p[nz] * np.log(p[nz])).sum()
  assert synthetic.sequence_entropy(hmm, n) == pytest.approx(h_brute, rel=1e-10)


def test_order_k_chain_state_is_the_last_k_symbols_and_entropy_vs_enumeration():
  """order=2: the next symbol depends only on the previous two (start: a virtual "s0 s0")."""
  v, n = 3, 6
  hmm = synthetic.random_hmm(num_states=v ** 2, vocab_size=v, branching=2, seed=4, order=2)
  seqs = np.array(list(itertools.product(range(v), repeat=n)))
  p = np.exp(synthetic.hmm_log_likelihood(hmm, seqs))
  assert p.sum() == pytest.approx(1.0, abs=1e-12)
  for seq, prob in zip(seqs[::37], p[::37]):  # brute force: a product of trigram emissions
    hist, want = [0, 0], 1.0
    for x in seq:
      want *= hmm.emit[hist[0] * v + hist[1], x]
      hist = [hist[1], x]
    assert prob == pytest.approx(want, rel=1e-12, abs=1e-300)
  nz = p > 0
  assert synthetic.sequence_entropy(hmm, n) == pytest.approx(-(p[nz] * np.log(p[nz])).sum(),
                                                             rel=1e-10)
  with pytest.raises(ValueError, match="9 states"):
    synthetic.random_hmm(num_states=8, vocab_size=3, branching=2, order=2)


def test_entropy_rate_vs_brute_force_block_entropies():
  hmm = synthetic.random_hmm(num_states=4, vocab_size=3, branching=2, seed=1)
  # H(X_n | X_<n) = H_n - H_{n-1} by enumeration converges to the entropy rate
  def h_block(n):
    seqs = np.array(list(itertools.product(range(3), repeat=n)))
    p = np.exp(synthetic.hmm_log_likelihood(hmm, seqs))
    p = p[p > 0]
    return -(p * np.log(p)).sum()
  cond = synthetic.conditional_entropies(hmm, 9)
  assert h_block(9) - h_block(8) == pytest.approx(cond[-1], rel=1e-9)
  rate = synthetic.entropy_rate(hmm)
  assert cond[-1] == pytest.approx(rate, abs=2e-2)
  assert synthetic.conditional_entropies(hmm, 400)[-1] == pytest.approx(rate, abs=1e-3)


def test_samples_follow_the_source_and_score():
  hmm = synthetic.random_hmm(64, 16, 3, seed=0)
  x = synthetic.sample(hmm, 400, 30, seed=0)
  ll = synthetic.hmm_log_likelihood(hmm, x)
  assert np.isfinite(ll).all()
  h = synthetic.sequence_entropy(hmm, 30)
  assert -ll.mean() == pytest.approx(h, rel=0.05)  # Monte Carlo of H = E[-log p]
  rows = np.concatenate([np.full((400, 1), 100), x, np.full((400, 1), 101)], 1)
  rows[0, 5] = 102  # a special token inside the body: probability 0
  s = synthetic.score_samples(hmm, rows, bos_id=100, eos_id=101)
  assert s["valid_fraction"] == pytest.approx(399 / 400)
  assert 1 / (400 * 30) <= s["tracked_error_rate"] < 0.01  # later symbols: a lost state
  assert s["nll_per_token"] > s["clean_nll_per_token"] > 0
  assert s["source_entropy_per_token"] == pytest.approx(h / 30)


def test_tokenizer_maps_symbols_to_ids():
  from idlm_jax.data import tokenizers
  tok = tokenizers.get_tokenizer(synthetic.tokenizer_name(8))
  assert tok.encode(synthetic.to_text([3, 0, 7])) == [3, 0, 7]
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (8, 9, 10, 11)
  assert tok.model_vocab_size == 12


def test_conditional_nll_is_the_exact_smoothed_source_likelihood():
  hmm = synthetic.random_hmm(6, 4, 2, seed=5)
  seqs = np.array(list(itertools.product(range(4), repeat=4)))
  nll, bad = synthetic.conditional_nll(hmm, seqs, noise=0.1)
  ll = synthetic.hmm_log_likelihood(synthetic.smoothed(hmm, 0.1), seqs)
  np.testing.assert_allclose(-nll.sum(1), ll, rtol=1e-12)
  assert np.exp(ll).sum() == pytest.approx(1.0)
  clean, _ = synthetic.conditional_nll(hmm, seqs, noise=0.0)
  exact = synthetic.hmm_log_likelihood(hmm, seqs)
  np.testing.assert_array_equal(bad.any(1), ~np.isfinite(exact))
  np.testing.assert_allclose(-clean.sum(1)[np.isfinite(exact)], exact[np.isfinite(exact)])


def test_noisy_forward_is_exact_and_resynchronises():
  hmm = synthetic.random_hmm(5, 3, 2, seed=2)
  seqs = np.array(list(itertools.product(range(3), repeat=4)))
  ll = synthetic.noisy_log_likelihood(hmm, seqs, noise=0.05)
  ref = synthetic.log_likelihood(synthetic.noisy_matrices(hmm, 0.05), hmm.initial(), seqs)
  np.testing.assert_allclose(ll, ref, rtol=1e-12)
  assert np.exp(ll).sum() == pytest.approx(1.0)
  # one wrong symbol early costs a bounded amount: the rest of the sequence still scores well
  big = synthetic.random_hmm(32, 12, 3, seed=0)
  x = synthetic.sample(big, 200, 40, seed=1)
  clean = synthetic.noisy_log_likelihood(big, x, 1e-3)
  y = x.copy()
  y[:, 3] = 99  # out-of-vocabulary symbol
  assert np.median(clean - synthetic.noisy_log_likelihood(big, y, 1e-3)) < 25
