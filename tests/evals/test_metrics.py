"""Gen PPL (first-EOS rule, pooled averaging), unigram entropy, distinct-n: hand-computed cases."""

import math

import numpy as np
import pytest

from idlm_jax.evals import entropy, genppl

EOS = 9


def test_valid_targets_first_eos_rule():
  # targets are ids[1:]; cumsum(eos)==1 covers the first EOS up to (not including) the second
  ids = np.array([[5, 1, EOS, 2, 3, EOS, 4, EOS, EOS],
                  [EOS, 1, 2, EOS, 3, EOS, EOS, EOS, EOS],
                  [1, 2, 3, 4, 5, 6, 7, 8, 1]])
  w = genppl.valid_targets(ids, EOS)
  np.testing.assert_array_equal(w[0], [1, 1, 1, 1, 0, 1, 0, 0])
  # row 1: EOS at position 0 is the first; the second EOS (pos 3) and later are invalid
  np.testing.assert_array_equal(w[1], [1, 1, 0, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(w[2], np.ones(8))


def test_valid_targets_padding_counts_only_first_pad_eos():
  ids = np.array([[1, 2, 3, EOS, EOS, EOS]])  # a sample without EOS, right-padded with EOS
  np.testing.assert_array_equal(genppl.valid_targets(ids, EOS)[0], [1, 1, 1, 0, 0])


def test_pooled_vs_per_sample_averaging():
  nll = np.array([[1.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
  w = np.array([[1, 1, 0], [1, 0, 0]])
  out = genppl.pooled_ppl(nll, w)
  # pooled: (1 + 1 + 3) / 3 tokens, not mean(exp(1), exp(3))
  assert out["gen_ppl"] == pytest.approx(math.exp(5.0 / 3.0))
  assert out["tokens"] == 3
  np.testing.assert_allclose(out["per_sample_ppl"], [math.e, math.exp(3.0)])
  assert out["gen_ppl"] != pytest.approx(np.mean(out["per_sample_ppl"]))


def test_token_nll_is_shifted_cross_entropy():
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 6)).astype(np.float32)
  ids = rng.integers(0, 6, (2, 4))
  nll = np.asarray(genppl.token_nll(jnp.asarray(logits), jnp.asarray(ids)))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ref = -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(nll, ref, rtol=1e-5)


def test_retokenize_truncates_and_pads_with_eos():
  from idlm_jax.data import tokenizers
  tok = tokenizers.get_tokenizer("gpt2")
  ids = genppl.retokenize(["Hello world<|endoftext|>", "a b c d e f g h"], tok, max_length=5)
  assert ids.shape == (2, 5)
  assert list(ids[0, :3]) == tok.encode("Hello world") + [tok.eos_id]  # special kept as EOS
  assert ids[0, 3] == ids[0, 4] == tok.eos_id  # padding
  assert list(ids[1]) == tok.encode("a b c d e f g h")[:5]


def test_unigram_entropy_hand_computed():
  out = entropy.unigram_entropy(np.array([[1, 1, 2, 2], [3, 3, 3, 3], [1, 2, 3, 4]]))
  np.testing.assert_allclose(out["per_sample"], [math.log(2), 0.0, math.log(4)])
  assert out["entropy"] == pytest.approx((math.log(2) + math.log(4)) / 3)


def test_distinct_n_hand_computed():
  toks = np.array([[1, 2, 1, 2, 1], [3, 4, 5, 6, 7]])
  d1 = entropy.distinct_n(toks, 1)
  assert d1["per_sample"] == pytest.approx((2 / 5 + 5 / 5) / 2)
  assert d1["corpus"] == pytest.approx(7 / 10)
  d2 = entropy.distinct_n(toks, 2)  # row 0 bigrams: 12 21 12 21 -> 2 unique of 4
  assert d2["per_sample"] == pytest.approx((2 / 4 + 4 / 4) / 2)
  rep = entropy.repetition(toks, 4)
  assert rep["distinct_4"] == pytest.approx((2 / 2 + 2 / 2) / 2)
  assert set(rep) >= {"distinct_1", "distinct_2", "distinct_3", "distinct_4"}


def test_throughput():
  t = entropy.throughput(num_samples=8, seq_len=10, seconds=2.0, num_batches=4)
  assert t["tokens_per_s"] == 40 and t["latency_s_per_batch"] == 0.5 and t["samples_per_s"] == 4
