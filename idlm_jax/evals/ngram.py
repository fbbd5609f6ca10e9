"""Distribution-level metrics on the synthetic language: exact n-gram marginals vs samples.

Per-sample NLL under the source (data/synthetic.py `score_samples`) rewards a sampler that
always emits the likeliest sequences: a collapsed sampler scores *below* the source entropy. The
metrics here compare the distribution of the samples with the source's and so go the other way.

* Exact marginals (`exact_marginals`): the n-grams of a source row are pooled over every body
  position, `pooled_n(g) = mean_{t=0..L-n} P(X_t .. X_{t+n-1} = g)` for bodies of L symbols,
  which is exactly the expected frequency of g among the L-n+1 n-grams of one body. The source
  is unifilar, so `P(X_t.. = g) = sum_s P(S_t = s) P(g | s)` with the state marginal P(S_t) from
  the forward recursion on marginals (`synthetic._state_flow`) and `P(g | s)` the product of the
  emissions along the one path g takes from s. Only the positions' *state marginals* are
  averaged, then the (at most K * branching^n) paths are enumerated once: sparse arrays of
  n-gram codes (sorted int64, base V + 1) and probabilities, no V^n table.
* BOS/EOS: rows are [BOS] + L symbols + [EOS]; the frame is removed (`bodies`) and n-grams are
  taken inside the body only, as the source defines it; the frame's correctness is
  `score_samples`' valid_fraction. Any id outside 0..V-1 inside a body (a special token, a
  mask) becomes the extra symbol V, which the source never emits, so every n-gram containing it
  lies outside the source's support.
* Empirical frequencies: counts of the N (L-n+1) pooled n-grams of the samples, c(g) / M.
* `ngram_tv_n` = 1/2 sum_g |c(g)/M - pooled(g)|, over the union of the supports: mass on
  impossible n-grams counts fully, missed mass too.
* `ngram_kl_n` = KL(source || smoothed samples) = sum_{g in supp} pooled(g) log(pooled(g) /
  m(g)), m(g) = (c(g) + beta pooled(g)) / (M + beta): the posterior mean of the n-gram
  distribution under a Dirichlet prior of `beta` pseudo-counts (default 1) spread as the source
  marginal. Why this direction and smoothing:
  - KL(source || samples) is the mass-covering direction: every source n-gram the samples miss
    or under-produce costs about pooled(g) log(pooled(g) (M + beta) / (beta pooled(g))) =
    pooled(g) log(1 + M / beta) when missed, so mode collapse (few distinct n-grams, rare ones
    never produced) raises it sharply, while the reverse KL(samples || source) barely moves
    under sharpening (it is mode seeking) and is infinite for an impossible n-gram;
  - without smoothing it is infinite as soon as one source n-gram is unseen, which any finite
    sample does for n >= 3; add-alpha smoothing over the V^n codes would spread most of the
    mass on impossible codes (alpha 32^4 pseudo-counts >> M). The source-shaped prior is finite,
    independent of the code space, and vanishes as M grows (m -> c / M);
  - impossible n-grams (fraction `ngram_outside_n` of the sample's n-grams) take their mass
    away from the support: m sums to 1 - outside M / (M + beta) there, which raises the KL by
    at least about -log(1 - outside).
  Both metrics are biased upwards at finite N even for the source itself, so each row is read
  against `floor(hmm, n_samples, length, seed, repeats)`: the same metrics on N source samples
  (mean and std over `repeats` independent draws). A sampler matches the source's n-gram
  statistics when it sits within the floor's spread.
* `dup_rate`: fraction of samples identical to another sample (whole rows); `ngram_distinct_n`:
  distinct n-grams / M.

`distribution_metrics(hmm, tokens, bos_id, eos_id)` returns them as one flat dict of floats.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from idlm_jax.data import synthetic


@dataclasses.dataclass(frozen=True)
class Marginal:
  """A sparse n-gram distribution: sorted int64 codes (base `base`) and their probabilities."""
  n: int
  base: int
  codes: np.ndarray
  probs: np.ndarray


def encode(ngrams: np.ndarray, base: int) -> np.ndarray:
  """int64 codes of [..., n] symbol arrays, most significant symbol first."""
  codes = np.zeros(ngrams.shape[:-1], np.int64)
  for j in range(ngrams.shape[-1]):
    codes = codes * base + ngrams[..., j]
  return codes


def decode(codes: np.ndarray, n: int, base: int) -> np.ndarray:
  """[..., n] symbols of codes (inverse of `encode`)."""
  codes = np.asarray(codes, np.int64)
  out = np.empty(codes.shape + (n,), np.int64)
  for j in range(n - 1, -1, -1):
    out[..., j] = codes % base
    codes = codes // base
  return out


def state_marginals(hmm: synthetic.UnifilarHMM, length: int) -> np.ndarray:
  """[length, K] P(S_t = s) for t = 0..length-1 (the forward recursion on marginals)."""
  out = np.empty((length, hmm.num_states))
  p = hmm.initial()
  for t in range(length):
    out[t] = p
    p = synthetic._state_flow(hmm, p)
  return out


def _paths(hmm: synthetic.UnifilarHMM, n: int, base: int):
  """Every positive-probability n-symbol path: origin state, code, probability (flat arrays)."""
  k = hmm.num_states
  origin = np.arange(k)
  state = np.arange(k)
  code = np.zeros(k, np.int64)
  prob = np.ones(k)
  support = hmm.emit > 0
  for _ in range(n):
    f, x = np.nonzero(support[state])  # frontier entry, emitted symbol
    origin, code = origin[f], code[f] * base + x
    prob = prob[f] * hmm.emit[state[f], x]
    state = hmm.next_state[state[f], x]
  return origin, code, prob


def exact_marginals(hmm: synthetic.UnifilarHMM, length: int, max_n: int = 4) -> list[Marginal]:
  """[Marginal for n = 1..max_n]: n-grams pooled over the body positions of length-`length`
  source sequences (module docstring). Each sums to 1."""
  if length < max_n:
    raise ValueError(f"bodies of {length} symbols have no {max_n}-grams")
  base = hmm.vocab_size + 1
  p = state_marginals(hmm, length)
  out = []
  for n in range(1, max_n + 1):
    weight = p[:length - n + 1].mean(0)  # pooled state marginal of the n-gram's first symbol
    origin, code, prob = _paths(hmm, n, base)
    codes, inv = np.unique(code, return_inverse=True)
    probs = np.bincount(inv, weights=weight[origin] * prob, minlength=len(codes))
    keep = probs > 0
    out.append(Marginal(n=n, base=base, codes=codes[keep], probs=probs[keep]))
  return out


def bodies(tokens: np.ndarray, bos_id: Optional[int], eos_id: Optional[int],
           vocab_size: int) -> np.ndarray:
  """Symbol bodies [N, L] of rows: the first column is dropped when bos_id is given, the last
  when eos_id is given (rows [BOS] + body + [EOS], as trained); ids outside 0..V-1 -> V."""
  x = np.asarray(tokens, np.int64)
  if x.ndim != 2:
    raise ValueError(f"tokens must be [N, L], got shape {x.shape}")
  x = x[:, (1 if bos_id is not None else 0):(x.shape[1] - 1 if eos_id is not None else None)]
  return np.where((x >= 0) & (x < vocab_size), x, vocab_size)


def ngram_counts(body: np.ndarray, n: int, base: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted distinct codes and counts of the n-grams of every row, pooled over positions."""
  body = np.asarray(body, np.int64)
  num, length = body.shape
  if length < n:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  windows = np.lib.stride_tricks.sliding_window_view(body, n, axis=1)  # [N, L-n+1, n]
  return np.unique(encode(windows, base).ravel(), return_counts=True)


def compare(marginal: Marginal, codes: np.ndarray, counts: np.ndarray,
            beta: float = 1.0) -> dict:
  """KL(source || smoothed empirical), TV, outside-support and distinct fractions."""
  q = marginal.probs
  total = float(counts.sum())
  if total == 0:
    raise ValueError("no n-grams in the samples")
  pos = np.searchsorted(marginal.codes, codes)
  inside = pos < len(marginal.codes)
  inside[inside] = marginal.codes[pos[inside]] == codes[inside]
  c = np.zeros(len(q))
  c[pos[inside]] = counts[inside]  # counts of the source's n-grams
  outside = float(counts[~inside].sum()) / total
  m = (c + beta * q) / (total + beta)
  kl = float(np.sum(q * (np.log(q) - np.log(m))))
  tv = 0.5 * (float(np.abs(c / total - q).sum()) + outside)
  return {"kl": kl, "tv": tv, "outside": outside, "distinct": len(codes) / total}


def dup_rate(tokens: np.ndarray) -> float:
  """Fraction of rows identical to at least one other row."""
  x = np.ascontiguousarray(np.asarray(tokens, np.int64))
  if len(x) == 0:
    return 0.0
  _, inv, cnt = np.unique(x, axis=0, return_inverse=True, return_counts=True)
  return float((cnt[inv.ravel()] > 1).mean())


def distribution_metrics(hmm: synthetic.UnifilarHMM, tokens: np.ndarray,
                         bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                         max_n: int = 4, beta: float = 1.0,
                         marginals: Optional[Sequence[Marginal]] = None) -> dict:
  """Flat float metrics of samples [N, L] (rows [BOS] + body + [EOS] when bos_id/eos_id are
  given): ngram_kl_n, ngram_tv_n, ngram_outside_n, ngram_distinct_n for n = 1..max_n, dup_rate.
  `marginals`: `exact_marginals(hmm, body length, max_n)`, to reuse across calls."""
  body = bodies(tokens, bos_id, eos_id, hmm.vocab_size)
  if marginals is None:
    marginals = exact_marginals(hmm, body.shape[1], max_n)
  row = {}
  for marginal in marginals[:max_n]:
    codes, counts = ngram_counts(body, marginal.n, marginal.base)
    for key, value in compare(marginal, codes, counts, beta).items():
      row[f"ngram_{key}_{marginal.n}"] = value
  row["dup_rate"] = dup_rate(tokens)
  return row


def floor(hmm: synthetic.UnifilarHMM, n_samples: int, length: int, seed: int = 0,
          repeats: int = 10, max_n: int = 4, beta: float = 1.0) -> dict:
  """The finite-sample floor: `distribution_metrics` of `n_samples` bodies of `length` symbols
  drawn from the source itself, `repeats` independent times (seeds seed * 1000 + r).
  Returns {metric: {"mean": ..., "std": ...}} (std over the repeats, ddof 1 when repeats > 1)."""
  marginals = exact_marginals(hmm, length, max_n)
  rows = [distribution_metrics(hmm, synthetic.sample(hmm, n_samples, length, seed * 1000 + r),
                               max_n=max_n, beta=beta, marginals=marginals)
          for r in range(repeats)]
  out = {}
  for key in rows[0]:
    v = np.array([r[key] for r in rows])
    out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
  return out
