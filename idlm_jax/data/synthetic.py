"""A synthetic language with a known distribution: a seeded random unifilar HMM.

The source is a probabilistic deterministic automaton (a "unifilar" HMM): in hidden state s it
emits symbol x with probability E[s, x] (each state can emit only `branching` of the symbols,
Dirichlet weights), then moves deterministically to T[s, x]. Sequences start in state 0. With a
few hundred states the next symbol depends on a long, variable stretch of the past, yet:

* the exact log-likelihood of any sequence is the forward algorithm (`log_likelihood`, written
  for a general HMM with transition-emission matrices M[x][s, s'] = P(x, s' | s));
* because the state is a function of the prefix, H(X_t | X_<t) = sum_s P(S_t = s) H(E[s]), so
  the exact entropy of length-n sequences (`sequence_entropy`) and the entropy rate
  (`entropy_rate`) follow from propagating the state marginal (the forward recursion on
  marginals): no sampling, no learned evaluator.

As a data source (`data.source = "synthetic_hmm"`, `data.synthetic.*`), documents are
`seq_len - 2` symbols written as words "s0 s1 ..." and tokenized by a word-level tokenizer whose
ids 0..V-1 are the symbols (then [PAD] [BOS] [EOS] [MASK]); with `data.wrap = False` each row is
[BOS] + symbols + [EOS], so a model sample's positions 1..L-2 are scored exactly by the source.
"""

import dataclasses
from typing import Optional

import numpy as np

from idlm_jax import fields as F
from idlm_jax.data.sources import DocSource
from idlm_jax.fields import ConfigError, Field

FIELDS = {
    "data.synthetic.seed": Field(0, 'data.source "synthetic_hmm": a seeded random unifilar HMM '
                                 "over `vocab_size` symbols with exact likelihoods and "
                                 "entropies; its seed."),
    "data.synthetic.num_states": Field(256, "hidden states (with `order` k > 0: must be "
                                       "vocab_size ** k)", check=F.at_least(1)),
    "data.synthetic.order": Field(0, "0: random next-state table (the state depends on a long, "
                                  "variable stretch of the past); k > 0: a k-th order Markov "
                                  "chain (the state is the last k symbols, sparse emissions), "
                                  "learnable from a local window", check=F.at_least(0)),
    "data.synthetic.vocab_size": Field(32, "emitted symbols", check=F.at_least(2)),
    "data.synthetic.branching": Field(3, "symbols each state can emit (sparse emissions)",
                                      check=F.at_least(1)),
    "data.synthetic.concentration": Field(0.5, "Dirichlet concentration of the emission "
                                          "probabilities", check=F.positive),
    "data.synthetic.num_train_docs": Field(20_000, "sequences of data.seq_len - 2 symbols each",
                                           check=F.positive),
    "data.synthetic.num_val_docs": Field(1_000, "validation sequences", check=F.positive),
}


def validate(config) -> None:
  """The synthetic source needs its word-level symbol tokenizer (and, as a k-th order chain,
  V^k states)."""
  if config.data.source == "synthetic_hmm":
    y = config.data.synthetic
    if y.order > 0 and y.num_states != y.vocab_size ** y.order:
      raise ConfigError(f"config.data.synthetic.num_states: an order-{y.order} chain over "
                        f"{y.vocab_size} symbols has {y.vocab_size ** y.order} states, got "
                        f"{y.num_states}")
    want = tokenizer_name(config.data.synthetic.vocab_size)
    if config.data.tokenizer != want:
      raise ConfigError(f"config.data.tokenizer: the synthetic source over "
                        f"{config.data.synthetic.vocab_size} symbols needs {want!r}, got "
                        f"{config.data.tokenizer!r}")



@dataclasses.dataclass(frozen=True)
class UnifilarHMM:
  """E [K, V] emission probabilities, T [K, V] next states (int), start state 0."""
  emit: np.ndarray
  next_state: np.ndarray
  start: int = 0

  @property
  def num_states(self) -> int:
    return self.emit.shape[0]

  @property
  def vocab_size(self) -> int:
    return self.emit.shape[1]

  def matrices(self) -> np.ndarray:
    """M [V, K, K] float64 with M[x, s, s'] = E[s, x] 1[T[s, x] = s'] (general-HMM form)."""
    k, v = self.emit.shape
    m = np.zeros((v, k, k))
    s = np.arange(k)
    for x in range(v):
      m[x, s, self.next_state[:, x]] = self.emit[:, x]
    return m

  def initial(self) -> np.ndarray:
    p = np.zeros(self.num_states)
    p[self.start] = 1.0
    return p


def random_hmm(num_states: int, vocab_size: int, branching: int, concentration: float = 0.5,
               seed: int = 0, order: int = 0) -> UnifilarHMM:
  """Seeded random unifilar HMM: each state emits `branching` distinct symbols. order = 0: a
  random next-state table over `num_states` states; order = k > 0: a k-th order Markov chain,
  state = the last k symbols in base V (num_states = V^k; the start state 0 reads as a prefix
  of k symbols "s0"), so T[s, x] = (s V + x) mod V^k."""
  if order > 0 and num_states != vocab_size ** order:
    raise ValueError(f"an order-{order} chain over {vocab_size} symbols has "
                     f"{vocab_size ** order} states, not {num_states}")
  rng = np.random.default_rng(seed)
  branching = min(branching, vocab_size)
  emit = np.zeros((num_states, vocab_size))
  for s in range(num_states):
    xs = rng.choice(vocab_size, branching, replace=False)
    emit[s, xs] = rng.dirichlet(np.full(branching, concentration))
  emit = np.maximum(emit, 0.0)
  emit /= emit.sum(1, keepdims=True)
  if order > 0:
    s = np.arange(num_states)[:, None]
    next_state = (s * vocab_size + np.arange(vocab_size)[None, :]) % num_states
  else:
    next_state = rng.integers(0, num_states, (num_states, vocab_size))
  return UnifilarHMM(emit=emit, next_state=next_state.astype(np.int64))


def from_config(syn_cfg) -> UnifilarHMM:
  return random_hmm(int(syn_cfg.num_states), int(syn_cfg.vocab_size), int(syn_cfg.branching),
                    float(syn_cfg.concentration), int(syn_cfg.seed), int(syn_cfg.get("order", 0)))


def sample(hmm: UnifilarHMM, num: int, length: int, seed: int) -> np.ndarray:
  """int64 [num, length] sequences drawn from the source."""
  rng = np.random.default_rng(seed)
  cdf = np.cumsum(hmm.emit, axis=1)
  cdf[:, -1] = 1.0
  state = np.full(num, hmm.start, np.int64)
  out = np.empty((num, length), np.int64)
  for t in range(length):
    u = rng.random(num)
    x = (u[:, None] >= cdf[state]).sum(1)
    x = np.minimum(x, hmm.vocab_size - 1)
    out[:, t] = x
    state = hmm.next_state[state, x]
  return out


def log_likelihood(matrices: np.ndarray, initial: np.ndarray, seqs: np.ndarray) -> np.ndarray:
  """Exact log p(x_1..x_n) [B] by the (scaled) forward algorithm for a general HMM.

  matrices [V, K, K]: M[x, s, s'] = P(emit x, move to s' | s); initial [K]; seqs int [B, n].
  Symbols outside 0..V-1 (e.g. special tokens in a model sample) have probability 0 (-inf).
  """
  seqs = np.asarray(seqs, np.int64)
  b, n = seqs.shape
  v = matrices.shape[0]
  alpha = np.broadcast_to(initial, (b, len(initial))).astype(np.float64).copy()
  logp = np.zeros(b)
  dead = np.zeros(b, bool)
  for t in range(n):
    x = seqs[:, t]
    bad = (x < 0) | (x >= v)
    dead |= bad
    m = matrices[np.clip(x, 0, v - 1)]  # [B, K, K]
    alpha = np.einsum("bs,bst->bt", alpha, m)
    z = alpha.sum(1)
    dead |= z <= 0
    z = np.where(z > 0, z, 1.0)
    logp += np.log(z)
    alpha /= z[:, None]
  return np.where(dead, -np.inf, logp)


def hmm_log_likelihood(hmm: UnifilarHMM, seqs: np.ndarray) -> np.ndarray:
  return log_likelihood(hmm.matrices(), hmm.initial(), seqs)


def _state_flow(hmm: UnifilarHMM, p: np.ndarray) -> np.ndarray:
  """P(S_{t+1}) from P(S_t) (unifilar: sum over the emitted symbol)."""
  out = np.zeros_like(p)
  np.add.at(out, hmm.next_state.ravel(), (p[:, None] * hmm.emit).ravel())
  return out


def _state_entropies(hmm: UnifilarHMM) -> np.ndarray:
  e = hmm.emit
  return -(np.where(e > 0, e * np.log(np.where(e > 0, e, 1.0)), 0.0)).sum(1)


def conditional_entropies(hmm: UnifilarHMM, length: int) -> np.ndarray:
  """H(X_t | X_<t) in nats for t = 1..length (exact: the state is a function of the prefix)."""
  h = _state_entropies(hmm)
  p = hmm.initial()
  out = np.empty(length)
  for t in range(length):
    out[t] = p @ h
    p = _state_flow(hmm, p)
  return out


def sequence_entropy(hmm: UnifilarHMM, length: int) -> float:
  """Exact H(X_1..X_length) in nats."""
  return float(conditional_entropies(hmm, length).sum())


def entropy_rate(hmm: UnifilarHMM, burn_in: int = 2000, average: int = 2000) -> float:
  """lim H(X_t | X_<t): the Cesaro average of the exact conditional entropies after burn-in
  (exact up to the mixing of the state chain; robust to periodic chains)."""
  h = _state_entropies(hmm)
  p = hmm.initial()
  for _ in range(burn_in):
    p = _state_flow(hmm, p)
  acc = 0.0
  for _ in range(average):
    acc += p @ h
    p = _state_flow(hmm, p)
  return float(acc / average)


# ------------------------------------------------------------------ data source


def tokenizer_name(vocab_size: int) -> str:
  """The data.tokenizer of a synthetic source over `vocab_size` symbols."""
  return f"symbols-{vocab_size}"


def to_text(seq) -> str:
  return " ".join(f"s{int(x)}" for x in seq)


def doc_source(data_cfg, split: str):
  """DocSource of `split`: seeded source sequences of seq_len - 2 symbols as text."""
  if split not in ("train", "validation"):
    raise ValueError(f"unknown split {split!r}")
  y = data_cfg.synthetic
  length = int(data_cfg.seq_len) - 2
  num = int(y.num_train_docs if split == "train" else y.num_val_docs)
  if split == "train" and int(data_cfg.max_train_docs) > 0:
    num = min(num, int(data_cfg.max_train_docs))
  seed = int(y.seed) * 1000 + (1 if split == "train" else 2)
  identity = {"source": "synthetic_hmm", "split": split, "length": length, "num": num,
              "hmm": {k: y[k] for k in ("seed", "num_states", "vocab_size", "branching",
                                        "concentration")}, "version": 1}
  if int(y.get("order", 0)):  # (absent for order 0: existing caches keep their identity)
    identity["hmm"]["order"] = int(y.order)

  def docs():
    seqs = sample(from_config(y), num, length, seed)
    return (to_text(s) for s in seqs)

  return DocSource(identity=identity, iter_docs=docs)


# ------------------------------------------------------------------ scoring model samples


def smoothed(hmm: UnifilarHMM, noise: float) -> UnifilarHMM:
  """The source with symbol noise: emissions (1 - noise) E + noise / V, same automaton."""
  return UnifilarHMM(emit=(1.0 - noise) * hmm.emit + noise / hmm.vocab_size,
                     next_state=hmm.next_state, start=hmm.start)


def conditional_nll(hmm: UnifilarHMM, seqs: np.ndarray, noise: float = 1e-3):
  """Per-position exact -log p(x_t | x_<t) [B, n] under `smoothed(hmm, noise)`, tracking the
  automaton state through every symbol, and the [B, n] mask of source-impossible symbols.

  Symbols outside 0..V-1 (special tokens in a model sample) cost -log(noise / V) and leave the
  state unchanged. With noise = 0 impossible symbols cost +inf.
  """
  seqs = np.asarray(seqs, np.int64)
  b, n = seqs.shape
  v = hmm.vocab_size
  state = np.full(b, hmm.start, np.int64)
  nll = np.empty((b, n))
  bad = np.empty((b, n), bool)
  with np.errstate(divide="ignore"):
    for t in range(n):
      x = seqs[:, t]
      inside = (x >= 0) & (x < v)
      xc = np.clip(x, 0, v - 1)
      p = np.where(inside, hmm.emit[state, xc], 0.0)
      nll[:, t] = -np.log((1.0 - noise) * p + noise / v)
      bad[:, t] = p <= 0
      state = np.where(inside, hmm.next_state[state, xc], state)
  return nll, bad


def noisy_matrices(hmm: UnifilarHMM, noise: float) -> np.ndarray:
  """M [V, K, K] of the source with resynchronising noise: with probability 1 - noise a
  source step, with probability `noise` a uniform symbol and a uniform next state."""
  k, v = hmm.num_states, hmm.vocab_size
  return (1.0 - noise) * hmm.matrices() + noise / (v * k)


def noisy_log_likelihood(hmm: UnifilarHMM, seqs: np.ndarray, noise: float = 1e-3) -> np.ndarray:
  """Exact log-likelihood [B] under the source with resynchronising noise (`noisy_matrices`),
  by the forward algorithm: every sequence has a finite score, and after a source-impossible
  symbol the belief over states recovers from the following symbols. A symbol outside
  0..V-1 (a special token inside a model sample) costs log(noise / V) and resets the belief
  to uniform."""
  seqs = np.asarray(seqs, np.int64)
  b, n = seqs.shape
  k, v = hmm.num_states, hmm.vocab_size
  a = hmm.matrices()
  alpha = np.broadcast_to(hmm.initial(), (b, k)).copy()
  logp = np.zeros(b)
  for t in range(n):
    x = seqs[:, t]
    inside = (x >= 0) & (x < v)
    step = (1.0 - noise) * np.einsum("bs,bst->bt", alpha, a[np.clip(x, 0, v - 1)])
    step += noise / (v * k)  # alpha sums to 1
    step = np.where(inside[:, None], step, noise / (v * k))
    z = step.sum(1)
    logp += np.log(z)
    alpha = step / z[:, None]
  return logp


def score_samples(hmm: UnifilarHMM, tokens: np.ndarray, bos_id: Optional[int] = None,
                  eos_id: Optional[int] = None, noise: float = 1e-3) -> dict:
  """Exact source scores of model samples (rows [BOS] + n symbols + [EOS], as trained).

  * nll_per_token: mean over samples of -log p(body) / n under the source with
    resynchronising noise `noise` (`noisy_log_likelihood`: exact for that distribution, finite
    for every sample, a source-impossible symbol costs about log(V K / noise) nats and the
    state belief then recovers), the number to compare with the source entropy;
  * tracked_error_rate: fraction of symbols impossible given the automaton state tracked
    through every symbol (after a first error the tracked state is usually lost, so this
    over-counts; it is 0 exactly when the samples are valid);
  * clean_nll_per_token: mean -log p_source over those possible symbols only;
  * valid_fraction: samples with nonzero source probability and the [BOS]/[EOS] frame;
  * source_entropy_per_token: exact H(X_1..X_n)/n of the (noise-free) source, what a perfect
    sampler attains in expectation.
  """
  tokens = np.asarray(tokens)
  body = tokens[:, 1:-1]
  n = body.shape[1]
  nll = -noisy_log_likelihood(hmm, body, noise)
  clean, bad = conditional_nll(hmm, body, 0.0)
  frame = np.ones(len(tokens), bool)
  if bos_id is not None:
    frame &= tokens[:, 0] == bos_id
  if eos_id is not None:
    frame &= tokens[:, -1] == eos_id
  valid = ~bad.any(1) & frame
  return {"nll_per_token": float(nll.mean() / n),
          "nll_per_token_std": float((nll / n).std()),
          "tracked_error_rate": float(bad.mean()),
          "clean_nll_per_token": float(clean[~bad].mean()) if (~bad).any() else None,
          "valid_fraction": float(valid.mean()),
          "source_entropy_per_token": sequence_entropy(hmm, n) / n,
          "noise": noise, "num_samples": int(len(tokens)), "length": int(n)}
