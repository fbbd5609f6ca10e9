"""Generative perplexity exactly as the Duo/MDLM code (reference/teachers.md §5.3).

Two protocols (`PROTOCOLS`); `sample_gen_ppl(evaluator, tokens, tokenizer, protocol=...)` decodes
and scores diffusion samples in one call:

* "duo" (for new tables): Duo's pipeline end to end (s-sahoo/duo `main._generate_samples` ->
  `metrics.Metrics.record_generative_perplexity`, transformers 4.38.2):
  - decode with `batch_decode` defaults: `clean_up_tokenization_spaces=True` (spaces before
    . , ! ? and contractions removed, for GPT-2 too) and, for bert-base-uncased, the slow
    BertTokenizer's join (`Tokenizer.decode_batch(..., clean_up_tokenization_spaces=True)`);
  - per sampling batch (`sample_batch_size` = Duo's `loader.eval_batch_size` = the project's
    `sample.batch_size`): retokenize that batch alone with `padding=True, truncation=True,
    max_length` = the diffusion model's length (Duo: `model.length`: 128 for LM1B, 1024 for
    OWT), so a text without EOS gains its "predict EOS" target only when it is shorter than the
    longest text of *its* sampling batch;
  - split the batch into `min(batch_size, n)`-row evaluator batches, `n // that` of them: rows
    of a sampling batch that is not a multiple are dropped, as Duo does (`scored` says how many
    samples count);
  - split each row into evaluator-context chunks (Duo: 1024, the GPT-2 context; here the
    evaluator's `n_positions`); in each chunk NLL = CE(logits[:, :-1], ids[:, 1:]) and the
    first-EOS rule of step 4 restarts;
  - Duo passes the attention mask of the right padding to the HF model; with right padding and
    causal attention no scored target depends on a padded position (a pad is only ever scored
    as the first EOS, from the logits of the real token before it), so the model here runs
    without a mask. Duo sums in float32 (torchmetrics default dtype), here in float64.
* "project" (`gen_ppl(evaluator, texts)`, the earlier behaviour, kept): the caller's texts (the
  project decodes GPT-2 without the clean-up), padded once over all texts, truncated to
  `evaluator.max_length`, every sample scored (no remainder dropped), one chunk.

tests/evals/test_genppl_duo.py checks "duo" against outputs recorded from Duo's own metrics
code (tests/evals/data/duo_genppl/README.md).

The common steps:

1. Decode samples with the diffusion tokenizer, special tokens kept as text.
2. Retokenize with the evaluator tokenizer (no special tokens added), truncation to
   `max_length`, padding (pad = the evaluator's EOS) to the longest retokenized sample.
3. Score with the causal LM: token NLL = CE(logits[:, :-1], ids[:, 1:]).
4. Valid targets: `(cumsum(ids == eos) == 1) | (ids != eos)`, shifted by one ([1:]): every
   non-EOS token, plus the first EOS and (as the cumsum == 1 run) everything up to the second
   EOS. Later EOS tokens (padding included) do not count.
5. Gen PPL = exp(sum NLL * valid / sum valid), pooled over *all* samples (not a mean of
   per-sample perplexities).

Duo scores `n // batch_size` full evaluator batches of each sampling batch and so drops a
remainder; "duo" does the same, "project" scores every sample (the last batch is padded with
dummy rows of weight 0). Either way the model runs on fixed shapes (rows padded to batch_size,
widths to a multiple of 64): causal attention keeps the scored positions unchanged.

Evaluators (`load_evaluator`): "embedded" is the GPT-2-architecture LM shipped in
`evals/assets/ar_embedded` (trained by configs/ar_embedded.py on the embedded corpus, demo BPE);
a HF name (`gpt2` .. `gpt2-large`, online) or a local folder with config.json and
model.safetensors (HF GPT-2 layout) and optionally card.json naming its tokenizer (default the
shipped GPT-2 BPE).

A trained "ar" checkpoint becomes an evaluator folder with `python -m idlm_jax.export
evaluator --config=configs/ar_embedded.py --workdir=DIR [--out=idlm_jax/evals/assets/ar_embedded]`.
"""

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from idlm_jax.data import tokenizers
from idlm_jax.models import gpt2
from idlm_jax.fields import ConfigError
from idlm_jax.train import teacher as teacher_lib

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
EMBEDDED = teacher_lib.EVALUATOR  # ASSETS / "ar_embedded" (eval.model="embedded" loads it too)


# ---------------------------------------------------------------------------- pure metric


def valid_targets(ids: np.ndarray, eos_id: int) -> np.ndarray:
  """[B, T-1] 0/1 weights of the targets ids[:, 1:] (the first-EOS rule of Duo/MDLM)."""
  ids = np.asarray(ids)
  is_eos = ids == eos_id
  first_eos = np.cumsum(is_eos, axis=-1) == 1
  return (first_eos | ~is_eos)[:, 1:].astype(np.float64)


def pooled_ppl(nll: np.ndarray, weights: np.ndarray) -> dict:
  """exp(sum nll*w / sum w) over every sample (corpus-level), plus the per-sample perplexities
  (for reference only: their mean is NOT Gen PPL)."""
  nll = np.asarray(nll, np.float64)
  w = np.asarray(weights, np.float64)
  total, count = float((nll * w).sum()), float(w.sum())
  per = (nll * w).sum(-1) / np.maximum(w.sum(-1), 1.0)
  mean_nll = total / max(count, 1.0)
  return {"gen_ppl": math.exp(min(mean_nll, 700.0)), "nll": mean_nll, "tokens": count,
          "per_sample_ppl": np.exp(np.minimum(per, 700.0))}


def token_nll(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """[B, T-1] CE(logits[:, :-1], ids[:, 1:]) in float32."""
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def retokenize(texts: Sequence[str], tokenizer, max_length: int,
               min_width: int = 2) -> np.ndarray:
  """int32 [N, T] ids: encode without added special tokens, truncate to max_length, right-pad
  with EOS to the longest (HF `padding=True, truncation=True`, pad = EOS), at least
  `min_width` wide (HF: 1)."""
  ids = [x[:max_length] for x in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
  width = max(min_width, max(len(x) for x in ids))
  out = np.full((len(ids), width), tokenizer.eos_id, np.int32)
  for i, x in enumerate(ids):
    out[i, :len(x)] = x
  return out


# ---------------------------------------------------------------------------- evaluator


@dataclasses.dataclass
class Evaluator:
  name: str
  model: Any  # models.gpt2.GPT2
  tokenizer: Any  # data.tokenizers.Tokenizer
  max_length: int
  card: dict

  def describe(self) -> str:
    c = self.card
    extra = f", val PPL {c['val_ppl']:.2f}" if "val_ppl" in c else ""
    return (f"{self.name} (GPT-2 arch, {c.get('n_layer', '?')} layers, d={c.get('n_embd', '?')}, "
            f"tokenizer {self.tokenizer.name}, context {self.max_length}{extra})")


def resolve(name: str) -> pathlib.Path:
  """The folder of evaluator `name` ("embedded", a local folder, or a HF GPT-2 name fetched
  when online); FileNotFoundError saying what to do otherwise. Loads no weights."""
  folder = EMBEDDED if name == "embedded" else gpt2.resolve_local(name)
  if name == "embedded" and not (folder / "model.safetensors").is_file():
    raise FileNotFoundError(f"the shipped evaluator is missing from {folder}; train it with "
                            "configs/ar_embedded.py and export it (python -m idlm_jax.export evaluator)")
  return folder


def preflight(config) -> None:
  """Fail before any work when the run will score Gen PPL (eval_samplers, or a distillation
  run, whose monitor selects checkpoints by it) and `eval.evaluator` cannot be found: a paper
  config's "gpt2-large" offline, say. ConfigError naming the field."""
  if not config.eval.evaluator or config.data.source == "synthetic_hmm":
    return
  try:
    resolve(config.eval.evaluator)
  except FileNotFoundError as e:
    raise ConfigError(f"config.eval.evaluator={config.eval.evaluator!r}: {e} (or "
                      "--config.eval.evaluator=embedded for the shipped 0.9M evaluator, whose "
                      "numbers are not comparable with the papers')") from None


def load_evaluator(name: str, max_length: int = 1024) -> Evaluator:
  """"embedded", a HF GPT-2 name (online) or a local folder (see the module docstring)."""
  folder = resolve(name)
  model = gpt2.load_pretrained(str(folder))
  card = json.loads((folder / "config.json").read_text())
  if (folder / "card.json").is_file():
    card.update(json.loads((folder / "card.json").read_text()))
  tok = tokenizers.get_tokenizer(card.get("tokenizer", "gpt2"))
  return Evaluator(name=name, model=model, tokenizer=tok,
                   max_length=min(max_length, model.n_positions), card=card)


PROTOCOLS = ("duo", "project")


def _check_protocol(protocol: str) -> None:
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown Gen PPL protocol {protocol!r}: expected one of {PROTOCOLS}")


def decode_samples(tokenizer, tokens, protocol: str = "duo") -> list[str]:
  """Texts of diffusion samples [N, L] as `protocol` decodes them (special tokens kept)."""
  _check_protocol(protocol)
  tokens = np.asarray(tokens).tolist()
  if protocol == "duo":
    return tokenizer.decode_batch(tokens, clean_up_tokenization_spaces=True)
  return tokenizer.decode_batch(tokens)


def _nll_runner(evaluator: Evaluator, batch_size: int):
  """f(ids [b <= batch_size, w]) -> float32 [b, w-1] token NLLs. Rows are padded to batch_size
  and widths up to a multiple of 64 (at most n_positions) with EOS, so few shapes compile: the
  model is causal (positions 0..w-1 do not see the padding), so the NLLs of the first w
  positions are those of the unpadded input."""
  graphdef, params = nnx.split(evaluator.model)
  eos = evaluator.tokenizer.eos_id
  n_pos = int(evaluator.model.n_positions)

  @jax.jit
  def nll_fn(params, x):
    return token_nll(nnx.merge(graphdef, params)(x), x)

  def run(ids: np.ndarray) -> np.ndarray:
    b, w = ids.shape
    width = min(max(-(-w // 64) * 64, w), max(n_pos, w))
    x = np.full((batch_size, width), eos, np.int32)
    x[:b, :w] = ids
    return np.asarray(nll_fn(params, jnp.asarray(x)))[:b, :w - 1]

  return run


def _score_project(evaluator: Evaluator, texts: Sequence[str], batch_size: int,
                   max_length: int) -> dict:
  ids = retokenize(texts, evaluator.tokenizer, max_length)
  run = _nll_runner(evaluator, batch_size)
  nll = np.concatenate([run(ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)])
  w = valid_targets(ids, evaluator.tokenizer.eos_id)
  out = pooled_ppl(nll, w)
  out.update(per_sample_nll_sum=(nll.astype(np.float64) * w).sum(-1),
             per_sample_tokens=w.sum(-1), scored=len(texts),
             retokenized_length=int(ids.shape[1]),
             batches=[{"ids": ids, "token_nll": nll, "weights": w}])
  return out


def _score_duo(evaluator: Evaluator, texts: Sequence[str], batch_size: int,
               sample_batch_size: int, max_length: int) -> dict:
  eos = evaluator.tokenizer.eos_id
  context = int(evaluator.model.n_positions)
  run = _nll_runner(evaluator, batch_size)
  n = len(texts)
  sums, counts = np.full(n, np.nan), np.zeros(n)
  batches, widths = [], []
  for s0 in range(0, n, sample_batch_size):
    ids = retokenize(texts[s0:s0 + sample_batch_size], evaluator.tokenizer, max_length,
                     min_width=1)
    m, width = ids.shape
    widths.append(width)
    bs = min(batch_size, m)
    nll = np.zeros((m, max(width - 1, 0)), np.float32)
    w = np.zeros((m, max(width - 1, 0)))
    for i in range(m // bs):  # Duo: num_batches = n // batch_size (a remainder is dropped)
      rows = slice(i * bs, (i + 1) * bs)
      total, count = np.zeros(bs), np.zeros(bs)
      for c0 in range(0, width, context):  # torch.split(samples, eval_context_size, dim=-1)
        chunk = ids[rows, c0:c0 + context]
        if chunk.shape[1] < 2:
          continue
        cnll, cw = run(chunk), valid_targets(chunk, eos)
        total += (cnll.astype(np.float64) * cw).sum(-1)
        count += cw.sum(-1)
        nll[rows, c0:c0 + chunk.shape[1] - 1] = cnll
        w[rows, c0:c0 + chunk.shape[1] - 1] = cw
      sums[s0 + i * bs:s0 + (i + 1) * bs] = total
      counts[s0 + i * bs:s0 + (i + 1) * bs] = count
    batches.append({"ids": ids, "token_nll": nll, "weights": w})
  scored = ~np.isnan(sums)
  total, count = float(sums[scored].sum()), float(counts.sum())
  mean_nll = total / max(count, 1.0)
  per = np.where(scored, sums / np.maximum(counts, 1.0), np.nan)
  return {"gen_ppl": math.exp(min(mean_nll, 700.0)), "nll": mean_nll, "tokens": count,
          "per_sample_ppl": np.exp(np.minimum(per, 700.0)), "per_sample_nll_sum": sums,
          "per_sample_tokens": counts, "scored": int(scored.sum()),
          "retokenized_length": int(max(widths, default=0)), "batches": batches}


def gen_ppl(evaluator: Evaluator, texts: Sequence[str], batch_size: int = 8, *,
            protocol: str = "project", sample_batch_size: int | None = None,
            max_length: int | None = None, details: bool = False) -> dict:
  """Gen PPL of decoded texts under `evaluator` (pooled; see the module docstring).

  protocol "project" (default here, for callers that decoded the texts themselves) or "duo"
  (then decode with `decode_samples(..., "duo")`, or call `sample_gen_ppl`).
  sample_batch_size ("duo"): texts per sampling batch, each retokenized and padded on its own
  (None: all texts form one batch). max_length: truncation of the retokenized texts (default
  `evaluator.max_length`; "duo": the diffusion model's sequence length).
  Returns gen_ppl, nll (mean over scored targets), tokens, per_sample_ppl,
  per_sample_nll_sum/per_sample_tokens (NaN/0 for samples "duo" drops), scored, and with
  `details` the per-batch retokenized ids, token NLLs and target weights.
  """
  _check_protocol(protocol)
  texts = list(texts)
  max_length = int(max_length or evaluator.max_length)
  start = time.time()
  if protocol == "duo":
    out = _score_duo(evaluator, texts, batch_size, int(sample_batch_size or len(texts)),
                     max_length)
  else:
    out = _score_project(evaluator, texts, batch_size, min(max_length, evaluator.max_length))
  if not details:
    out.pop("batches")
  out.update(seconds=time.time() - start, protocol=protocol, max_length=max_length,
             evaluator=evaluator.describe())
  return out


def sample_gen_ppl(evaluator: Evaluator, tokens, tokenizer, *, protocol: str = "duo",
                   sample_batch_size: int | None = None, batch_size: int = 8,
                   max_length: int | None = None, details: bool = False) -> dict:
  """Decode diffusion samples [N, L] with `tokenizer` and score them: the one call for tables.

  For "duo" pass sample_batch_size = the sampling batch the samples were drawn in
  (`sample.batch_size`) and max_length = the diffusion model's length (`data.seq_len`).
  """
  texts = decode_samples(tokenizer, tokens, protocol)
  out = gen_ppl(evaluator, texts, batch_size, protocol=protocol,
                sample_batch_size=sample_batch_size, max_length=max_length, details=details)
  out["texts"] = texts
  return out


# ---------------------------------------------------------------------------- export
