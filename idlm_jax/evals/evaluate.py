"""Eval mode "eval_samplers": sample quality vs number of steps for a list of samplers.

python -m idlm_jax.main --config=<cfg> --workdir=<with checkpoint> --config.mode=eval_samplers \
    [--config.eval.samplers=ancestral,analytic] [--config.eval.sampling_steps=8,16,32,64,128]

For every (sampler, steps) cell: `eval.num_samples` samples from fixed keys
fold_in(key(eval.seed), batch), then Gen PPL under the evaluator named by `eval.evaluator`
(evals/genppl.py), unigram entropy and distinct-1..4 (evals/entropy.py), NFE per sample,
wall-clock latency and tokens/s (compilation excluded: one warm-up batch is drawn and discarded
first), and, on the synthetic source, exact source NLL/token vs the source entropy
(data/synthetic.py). Writes <workdir>/eval_samplers/{results.json, results.md, *.png}.
"""

import json
import logging
import time

import jax
import ml_collections
import numpy as np

from idlm_jax import decoding
from idlm_jax import fields as F
from idlm_jax.data import pipeline, synthetic
from idlm_jax.diffusion import categorical
from idlm_jax.evals import entropy as entropy_lib
from idlm_jax.evals import genppl, ngram, progress, report
from idlm_jax.fields import Field
from idlm_jax.train import loop, parallel

log = logging.getLogger("idlm_jax")

def _positive_floats(text) -> bool:
  try:
    return all(float(x) > 0 for x in str(text).split(",") if x.strip())
  except ValueError:
    return False


FIELDS = {
    "eval.samplers": Field("", 'mode "eval_samplers": comma-separated samplers to compare ("" = '
                           "the configured sample.sampler only)."),
    "eval.sampling_steps": Field("8,16,32,64,128", "step counts of the eval_samplers table (and "
                                 "the student rows of a distillation report).",
                                 check=F.step_list),
    "eval.temperatures": Field("1.0", "comma-separated sampling temperatures of the ancestral "
                               "rows (eval_samplers; a distillation report's teacher rows): a "
                               "sweep traces the quality-entropy frontier.",
                               check=F.Check(lambda v: _positive_floats(v),
                                             "comma-separated positive numbers")),
    "eval.num_samples": Field(64, "samples per (sampler, steps) cell; fixed seed eval.seed.",
                              check=F.positive),
    "eval.seed": Field(1234, "seed of the reported samples (cell keys fold_in(key(seed), batch))."),
    "eval.evaluator": Field(
        "embedded", 'Gen PPL evaluator: "embedded" (the GPT-2-architecture LM shipped in '
        "evals/assets, trained by configs/ar_embedded.py), a HF GPT-2 name (\"gpt2-large\", "
        "needs internet) or a local folder with config.json + model.safetensors (+ tokenizer, "
        'see evals/genppl.py), or "" (no Gen PPL, e.g. on the synthetic source where exact '
        "likelihoods are used)."),
    "eval.evaluator_batch_size": Field(8, "Duo/MDLM eval.perplexity_batch_size.",
                                       check=F.positive),
    "eval.evaluator_max_length": Field(
        0, "retokenized samples are truncated to this many evaluator tokens; 0 = data.seq_len "
        "(Duo: the model's length, 1024 for OWT, 128 for LM1B).",
        check=F.Check(lambda v: v == 0 or v >= 2, "0 or >= 2")),
    "eval.genppl_protocol": Field(
        "duo", 'Gen PPL protocol: "duo" (Duo\'s pipeline end to end: decode with the '
        "clean-up of tokenization spaces of its pinned transformers, retokenize and pad per "
        "sampling batch, truncate to eval.evaluator_max_length, drop the last partial "
        'evaluator batch) or "project" (the earlier behaviour: special tokens and spaces '
        "kept, one padded cell, every sample scored).", choices=genppl.PROTOCOLS),
    "eval.reference_row": Field(True, "quality tables start with a data row: held-out "
                                "validation rows (synthetic: source samples) scored alike."),
}


def parse_steps(text: str) -> list[int]:
  return [int(s) for s in str(text).split(",") if s.strip()]


def sampler_names(config) -> list[str]:
  names = [s.strip() for s in config.eval.samplers.split(",") if s.strip()]
  if names:
    return names
  return [config.sample.sampler]


def with_sampler(config, name: str):
  c = ml_collections.ConfigDict(config.to_dict())
  c.sample.sampler = name
  return c


def draw(config, process, graphdef, params, mesh, *, num_steps: int, num_samples: int,
         seed: int, aux=None, phase=None) -> dict:
  """Token ids [num_samples, L], mean NFE (and RGAS's discriminator calls: decoding.call_counts),
  timed seconds (after one warm-up batch). aux: see decoding.sampler_aux. phase: a
  progress.Phase advanced by num_steps per batch (each batch is then waited for)."""
  batch = config.sample.batch_size
  sampler = decoding.make_sampler(config, process, graphdef, num_steps=num_steps,
                                  batch_size=batch)
  key = jax.random.key(seed)
  n_batches = -(-num_samples // batch)
  with categorical.x64_scope(config.sample.precision), parallel.mesh_context(mesh):
    t0 = time.time()
    jax.block_until_ready(sampler(params, jax.random.fold_in(key, 10**6), None, aux))  # compile
    compile_s = time.time() - t0
    t0 = time.time()
    outs = []
    for i in range(n_batches):
      outs.append(sampler(params, jax.random.fold_in(key, i), None, aux))
      if phase is not None:
        jax.block_until_ready(outs[-1])
        phase.advance(num_steps, f"{config.sample.sampler} at {num_steps} steps, batch "
                                 f"{i + 1}/{n_batches}")
    outs = jax.block_until_ready(outs)
    seconds = time.time() - t0
    outs = parallel.to_host(outs)  # also when sharded over hosts
  tokens = np.concatenate([o.tokens for o in outs])[:num_samples]
  return {"tokens": tokens, **decoding.call_counts(outs), "seconds": seconds,
          "compile_seconds": compile_s, "num_batches": n_batches}


def bootstrap_se(per_sum: np.ndarray, per_count: np.ndarray, reps: int = 1000,
                 seed: int = 0) -> float:
  """Standard error of the pooled perplexity exp(sum / count) over samples, by resampling the
  samples with replacement (`reps` draws, fixed seed). Samples with NaN sums (not scored)
  are left out."""
  ok = np.isfinite(per_sum)
  per_sum, per_count = np.asarray(per_sum, np.float64)[ok], np.asarray(per_count, np.float64)[ok]
  if len(per_sum) < 2:
    return float("nan")
  idx = np.random.default_rng(seed).integers(0, len(per_sum), (reps, len(per_sum)))
  ppl = np.exp(np.minimum(per_sum[idx].sum(1) / np.maximum(per_count[idx].sum(1), 1.0), 700))
  return float(ppl.std(ddof=1))


class Scorer:
  """Every sample metric of a cell under one run's protocol (`score(tokens) -> row`):
  unigram entropy and distinct-n (with standard errors over samples), Gen PPL under
  `evaluator` with config.eval's protocol (decoding, per-sampling-batch padding, max length;
  a bootstrap standard error), and on the synthetic language the exact NLL and the n-gram
  distribution metrics against the source's exact marginals (evals/ngram.py)."""

  def __init__(self, config, tokenizer, evaluator=None, hmm=None):
    e = config.eval
    self.tokenizer, self.evaluator, self.hmm = tokenizer, evaluator, hmm
    self.protocol = e.genppl_protocol
    self.batch_size = int(e.evaluator_batch_size)
    self.sample_batch_size = int(config.sample.batch_size)
    self.max_length = int(e.evaluator_max_length or config.data.seq_len)
    self.marginals = None
    if hmm is not None:
      self.marginals = ngram.exact_marginals(hmm, int(config.data.seq_len) - 2)

  @classmethod
  def for_run(cls, run, evaluator=None):
    """The run's scorer: its evaluator (eval.evaluator, loaded unless given) and, on the
    synthetic source, the HMM."""
    c = run.config
    hmm = synthetic.from_config(c.data.synthetic) if c.data.source == "synthetic_hmm" else None
    if evaluator is None and c.eval.evaluator and hmm is None:
      evaluator = genppl.load_evaluator(c.eval.evaluator, c.eval.evaluator_max_length or
                                        int(c.data.seq_len))
    return cls(c, run.tokenizer, evaluator, hmm)

  def score(self, tokens) -> dict:
    tokens = np.asarray(tokens)
    n = len(tokens)
    row = {}
    ent = entropy_lib.unigram_entropy(tokens)
    row.update(entropy=ent["entropy"], entropy_std=ent["entropy_std"],
               entropy_se=ent["entropy_std"] / np.sqrt(max(n - 1, 1)))
    row.update(entropy_lib.repetition(tokens, 4))
    if self.evaluator is not None:
      g = genppl.sample_gen_ppl(self.evaluator, tokens, self.tokenizer, protocol=self.protocol,
                                sample_batch_size=self.sample_batch_size,
                                batch_size=self.batch_size, max_length=self.max_length)
      row.update(gen_ppl=g["gen_ppl"], gen_nll=g["nll"], gen_tokens=g["tokens"],
                 gen_ppl_se=bootstrap_se(g["per_sample_nll_sum"], g["per_sample_tokens"]),
                 gen_scored=g["scored"],
                 median_sample_ppl=float(np.nanmedian(g["per_sample_ppl"])))
    if self.hmm is not None:
      bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
      s = synthetic.score_samples(self.hmm, tokens, bos, eos)
      row.update(exact_nll=s["nll_per_token"], exact_nll_std=s["nll_per_token_std"],
                 exact_nll_se=s["nll_per_token_std"] / np.sqrt(max(n - 1, 1)),
                 tracked_error_rate=s["tracked_error_rate"],
                 clean_nll=s["clean_nll_per_token"], valid_fraction=s["valid_fraction"],
                 source_entropy=s["source_entropy_per_token"])
      row.update(ngram.distribution_metrics(self.hmm, tokens, bos, eos,
                                            marginals=self.marginals))
    return row


def reference_row(run, scorer: "Scorer", num_samples: int) -> dict:
  """The data row of a quality table: `num_samples` held-out validation rows (on the
  synthetic language: samples of the source), scored exactly as model samples are."""
  rows = pipeline.load_split(run.config.data, run.tokenizer, "validation")
  n = min(num_samples, rows.num_rows)
  tokens = rows.gather(np.arange(n))["input_ids"]
  row = {"sampler": "data (held-out validation rows)", "steps": None, "nfe": None,
         **scorer.score(tokens)}
  row["example"] = run.tokenizer.decode_batch(tokens[:1].tolist())[0][:200]
  return row


def run_header(run, step: int, scorer: Scorer, **extra) -> dict:
  """The setup every sample-quality report states (and the synthetic source's entropies and
  the n-gram metrics' finite-sample floor at this sample count)."""
  c, e = run.config, run.config.eval
  header = {"step": int(step), "workdir": str(run.workdir), "data_source": c.data.source,
            "tokenizer": run.tokenizer.name, "seq_len": int(c.data.seq_len),
            "num_samples": int(e.num_samples), "seed": int(e.seed),
            "sample_batch_size": int(c.sample.batch_size), "precision": c.sample.precision,
            "use_ema": bool(e.use_ema), "device": jax.devices()[0].platform,
            "evaluator": scorer.evaluator.describe() if scorer.evaluator else "none",
            "genppl_protocol": scorer.protocol, "evaluator_max_length": scorer.max_length,
            **extra}
  hmm = scorer.hmm
  if hmm is not None:
    n = int(c.data.seq_len) - 2
    header.update(source_entropy_per_token=synthetic.sequence_entropy(hmm, n) / n,
                  source_entropy_rate=synthetic.entropy_rate(hmm),
                  hmm={k: c.data.synthetic.get(k, 0) for k in (
                      "seed", "num_states", "vocab_size", "branching", "concentration",
                      "order")},
                  ngram_floor=ngram.floor(hmm, int(e.num_samples), n, seed=int(e.seed),
                                          repeats=10))
  return header


def parse_floats(text: str) -> list[float]:
  return [float(s) for s in str(text).split(",") if s.strip()]


def sample_rows(run, label: str, params, steps_list, scorer: Scorer, *, config=None,
                aux=None, phase=None, temperatures=(1.0,)) -> list[dict]:
  """One scored row per (temperature, step count): `params` sampled with `config` (default:
  the run's) and `aux` (decoding.sampler_aux), `eval.num_samples` samples from the fixed
  keys of `eval.seed`."""
  c = config or run.config
  rows = []
  for temperature in temperatures:
    cfg = c
    if temperature != 1.0:
      cfg = ml_collections.ConfigDict(c.to_dict())
      cfg.sample.temperature = float(temperature)
    for steps in steps_list:
      d = draw(cfg, run.process, run.graphdef, params, run.mesh, num_steps=steps,
               num_samples=int(c.eval.num_samples), seed=int(c.eval.seed), aux=aux,
               phase=phase)
      row = {"sampler": label if temperature == 1.0 else f"{label} T={temperature:g}",
             "steps": steps, "temperature": float(cfg.sample.temperature),
             **{k: d[k] for k in decoding.COUNTS if k in d},
             "compile_seconds": d["compile_seconds"]}
      row.update(entropy_lib.throughput(len(d["tokens"]), int(c.data.seq_len), d["seconds"],
                                        d["num_batches"]))
      row.update(scorer.score(d["tokens"]))
      row["example"] = run.tokenizer.decode_batch(d["tokens"][:1].tolist())[0][:200]
      rows.append(row)
      log.info("%s steps=%d NFE %.1f  %s", row["sampler"], steps, d["nfe"],
               "  ".join(f"{k} {row[k]:.4g}" for k in ("gen_ppl", "exact_nll", "entropy",
                                                       "tokens_per_s") if row.get(k) is not None))
  return rows


def write_results(run, name: str, results: dict) -> dict:
  """<workdir>/<name>/{results.json, results.md, *.png} (process 0)."""
  if jax.process_index() == 0:
    out_dir = run.workdir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(report.markdown(results))
    results["plots"] = report.plots(results, out_dir)
    log.info("%s: wrote %s", name, out_dir)
  return results


def run_eval(run, step: int) -> dict:
  """The eval mode on a built, restored `loop.Run`; returns the results dict."""
  c, e = run.config, run.config.eval
  scorer = Scorer.for_run(run)
  params = loop.eval_params(run)
  steps, temperatures = parse_steps(e.sampling_steps), parse_floats(e.temperatures)
  n_batches = -(-int(e.num_samples) // int(c.sample.batch_size))
  phase = progress.Phase("eval_samplers", len(sampler_names(c)) * len(temperatures) *
                         n_batches * sum(steps))
  rows = [reference_row(run, scorer, int(e.num_samples))] if e.reference_row else []
  for name in sampler_names(c):
    cfg = with_sampler(c, name)
    rows += sample_rows(run, name, params, steps, scorer, config=cfg, phase=phase,
                        aux=decoding.sampler_aux(cfg, run.state),
                        temperatures=temperatures if name == "ancestral" else (1.0,))
  phase.done()
  results = {"header": run_header(run, step, scorer), "rows": rows,
             "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
  return write_results(run, "eval_samplers", results)
