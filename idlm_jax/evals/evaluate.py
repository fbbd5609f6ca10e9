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
from idlm_jax.data import synthetic
from idlm_jax.diffusion import categorical
from idlm_jax.evals import entropy as entropy_lib
from idlm_jax.evals import genppl, progress, report
from idlm_jax.fields import Field
from idlm_jax.train import loop, parallel

log = logging.getLogger("idlm_jax")

FIELDS = {
    "eval.samplers": Field("", 'mode "eval_samplers": comma-separated samplers to compare ("" = '
                           "the configured sample.sampler only)."),
    "eval.sampling_steps": Field("8,16,32,64,128", "step counts of the eval_samplers table (and "
                                 "the student rows of a distillation report).",
                                 check=F.step_list),
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
    "eval.evaluator_max_length": Field(1024, "retokenized samples are truncated to this (Duo: "
                                       "1024).", check=F.at_least(2)),
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


def evaluate_cell(tokens, texts, *, evaluator=None, hmm=None, tokenizer=None,
                  evaluator_batch_size: int = 8) -> dict:
  """All sample metrics of one cell (pure apart from the evaluator forward)."""
  row = {}
  ent = entropy_lib.unigram_entropy(tokens)
  row.update(entropy=ent["entropy"], entropy_std=ent["entropy_std"])
  row.update(entropy_lib.repetition(tokens, 4))
  if evaluator is not None:
    g = genppl.gen_ppl(evaluator, texts, evaluator_batch_size)
    row.update(gen_ppl=g["gen_ppl"], gen_nll=g["nll"], gen_tokens=g["tokens"],
               median_sample_ppl=float(np.median(g["per_sample_ppl"])))
  if hmm is not None:
    s = synthetic.score_samples(hmm, tokens, tokenizer.bos_id, tokenizer.eos_id)
    row.update(exact_nll=s["nll_per_token"], exact_nll_std=s["nll_per_token_std"],
               tracked_error_rate=s["tracked_error_rate"],
               clean_nll=s["clean_nll_per_token"], valid_fraction=s["valid_fraction"],
               source_entropy=s["source_entropy_per_token"])
  return row


def run_header(run, step: int, evaluator, hmm, **extra) -> dict:
  """The setup every sample-quality report states (and the synthetic source's entropies)."""
  c, e = run.config, run.config.eval
  header = {"step": int(step), "workdir": str(run.workdir), "data_source": c.data.source,
            "tokenizer": run.tokenizer.name, "seq_len": int(c.data.seq_len),
            "num_samples": int(e.num_samples), "seed": int(e.seed),
            "sample_batch_size": int(c.sample.batch_size), "precision": c.sample.precision,
            "use_ema": bool(e.use_ema), "device": jax.devices()[0].platform,
            "evaluator": evaluator.describe() if evaluator else "none", **extra}
  if hmm is not None:
    n = int(c.data.seq_len) - 2
    header.update(source_entropy_per_token=synthetic.sequence_entropy(hmm, n) / n,
                  source_entropy_rate=synthetic.entropy_rate(hmm),
                  hmm={k: c.data.synthetic[k] for k in ("seed", "num_states", "vocab_size",
                                                        "branching", "concentration")})
  return header


def run_eval(run, step: int) -> dict:
  """The eval mode on a built, restored `loop.Run`; returns the results dict."""
  c = run.config
  e = c.eval
  out_dir = run.workdir / "eval_samplers"
  out_dir.mkdir(parents=True, exist_ok=True)
  evaluator = genppl.load_evaluator(e.evaluator, e.evaluator_max_length) if e.evaluator else None
  hmm = synthetic.from_config(c.data.synthetic) if c.data.source == "synthetic_hmm" else None
  params = loop.eval_params(run)
  header = run_header(run, step, evaluator, hmm)
  rows = []
  n_batches = -(-int(e.num_samples) // int(c.sample.batch_size))
  phase = progress.Phase("eval_samplers", len(sampler_names(c)) * n_batches *
                         sum(parse_steps(e.sampling_steps)))
  for name in sampler_names(c):
    cfg = with_sampler(c, name)
    for steps in parse_steps(e.sampling_steps):
      d = draw(cfg, run.process, run.graphdef, params, run.mesh, num_steps=steps,
               num_samples=int(e.num_samples), seed=int(e.seed),
               aux=decoding.sampler_aux(cfg, run.state), phase=phase)
      texts = run.tokenizer.decode_batch(d["tokens"].tolist())
      row = {"sampler": name, "steps": steps, **{k: d[k] for k in decoding.COUNTS if k in d},
             "compile_seconds": d["compile_seconds"]}
      row.update(entropy_lib.throughput(len(d["tokens"]), int(c.data.seq_len), d["seconds"],
                                        d["num_batches"]))
      row.update(evaluate_cell(d["tokens"], texts, evaluator=evaluator, hmm=hmm,
                               tokenizer=run.tokenizer,
                               evaluator_batch_size=int(e.evaluator_batch_size)))
      row["example"] = texts[0][:200]
      rows.append(row)
      log.info("eval_samplers %s steps=%d NFE %.1f  %s", name, steps, d["nfe"],
               "  ".join(f"{k} {row[k]:.4g}" for k in ("gen_ppl", "exact_nll", "entropy",
                                                       "tokens_per_s") if row.get(k) is not None))
  phase.done()
  results = {"header": header, "rows": rows,
             "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
  if jax.process_index() == 0:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(report.markdown(results))
    results["plots"] = report.plots(results, out_dir)
    log.info("eval_samplers: wrote %s", out_dir)
  return results
