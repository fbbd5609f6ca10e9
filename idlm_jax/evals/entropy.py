"""Sample-diversity and cost metrics (pure NumPy): unigram entropy, distinct-n, throughput.

Unigram entropy follows Duo/MDLM (reference/teachers.md §5.3): for each generated sequence, in
the *diffusion model's* token ids (special tokens included), the Shannon entropy in nats of the
token count distribution (`torch.unique` counts -> `special.entr`), averaged over samples.
"""

from typing import Sequence

import numpy as np


def sample_entropy(ids: Sequence[int]) -> float:
  """Entropy (nats) of the unigram distribution of one sequence of token ids."""
  _, counts = np.unique(np.asarray(ids), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


def unigram_entropy(tokens) -> dict:
  """Per-sample unigram entropies of token ids [N, L]: mean (the reported number), std, all."""
  per = np.array([sample_entropy(row) for row in np.asarray(tokens)])
  return {"entropy": float(per.mean()), "entropy_std": float(per.std()), "per_sample": per}


def _ngrams(row: np.ndarray, n: int) -> list[tuple]:
  return [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]


def distinct_n(tokens, n: int) -> dict:
  """distinct-n: unique n-grams / n-grams, per sample (averaged) and over the whole corpus.

  1 - distinct-n is the repetition rate. Samples shorter than n contribute nothing.
  """
  per, all_grams = [], []
  for row in np.asarray(tokens):
    grams = _ngrams(row, n)
    if grams:
      per.append(len(set(grams)) / len(grams))
      all_grams.extend(grams)
  return {"per_sample": float(np.mean(per)) if per else float("nan"),
          "corpus": len(set(all_grams)) / len(all_grams) if all_grams else float("nan")}


def repetition(tokens, max_n: int = 4) -> dict:
  """{"distinct_1": ..., ..., "distinct_{max_n}": per-sample means, "corpus_distinct_n": ...}."""
  out = {}
  for n in range(1, max_n + 1):
    d = distinct_n(tokens, n)
    out[f"distinct_{n}"] = d["per_sample"]
    out[f"corpus_distinct_{n}"] = d["corpus"]
  return out


def throughput(num_samples: int, seq_len: int, seconds: float, num_batches: int) -> dict:
  """Wall-clock cost of sampling: seconds per batch (latency), samples/s and tokens/s."""
  seconds = max(float(seconds), 1e-12)
  return {"seconds": seconds, "latency_s_per_batch": seconds / max(num_batches, 1),
          "samples_per_s": num_samples / seconds, "tokens_per_s": num_samples * seq_len / seconds}
