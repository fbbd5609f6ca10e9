"""Sample-quality monitoring of a distillation run, entropy-collapse warnings and the best
checkpoint (idlm.md §1.3: "the entropy decreases during training and may eventually collapse"
so the checkpoint is chosen by Gen PPL *and* entropy).

Every `distill.monitor_every` steps: `distill.monitor_samples` samples of the EMA student at
each of `distill.monitor_steps` (same keys every time), scored as in mode eval_samplers
(evals/evaluate.py: Gen PPL under eval.evaluator, exact NLL on the synthetic language, unigram
entropy). Rows go to <workdir>/monitor.jsonl and the metric writer as monitor/<steps>/<name>.
"""

import json
import logging
import math

import jax
import numpy as np

from idlm_jax import decoding
from idlm_jax import fields as F
from idlm_jax.data import synthetic
from idlm_jax.diffusion import categorical
from idlm_jax.evals import evaluate, genppl
from idlm_jax.fields import Check, Field
from idlm_jax.train import loop, parallel

log = logging.getLogger("idlm_jax")

FIELDS = {
    "distill.monitor_every": Field(
        0, "every monitor_every train steps of a distillation run: distill.monitor_samples "
        "samples of the EMA student at each of monitor_steps, scored by eval.evaluator (Gen "
        "PPL) or exactly on the synthetic language, plus unigram entropy, into "
        "<workdir>/monitor.jsonl (0: off).", check=F.non_negative_or_off("0: off")),
    "distill.monitor_steps": Field("4,16", "sampling step counts of each monitor.",
                                   check=F.step_list),
    "distill.monitor_samples": Field(32, "samples per monitored step count.", check=F.positive),
    "distill.entropy_floor": Field(
        0.0, "a warning when the monitored entropy falls below this (0: (1 - entropy_drop) x "
        "the step-0 student's = the teacher's few-step entropy).",
        check=F.non_negative_or_off("0: relative to step 0")),
    "distill.entropy_drop": Field(0.05, "relative entropy drop of the default floor.",
                                  check=Check(lambda v: 0 <= v < 1, "in [0, 1)")),
    "distill.best_metric": Field(
        "gen_ppl", "the best checkpoint (<workdir>/best) minimises this at the largest monitor "
        'step among monitors whose entropy is above the floor: "gen_ppl", "exact_nll" '
        '(synthetic_hmm) or "none" (no best checkpoint).',
        choices=("gen_ppl", "exact_nll", "none")),
}


def entropy_floor(config, history: list) -> float:
  """distill.entropy_floor, or (1 - entropy_drop) x the step-0 entropy at the top step count."""
  d = config.distill
  if d.entropy_floor > 0:
    return float(d.entropy_floor)
  first = [h for h in history if h["step"] == 0]
  return (1.0 - d.entropy_drop) * first[0]["entropy"] if first else 0.0


def is_better(row: dict, best: dict | None, metric: str, floor: float) -> bool:
  """The best rule: lowest `metric` among rows with entropy >= floor (step 0 excluded)."""
  if metric == "none" or row["step"] == 0 or row["entropy"] < floor:
    return False
  value = row.get(metric)
  if value is None or not math.isfinite(value):
    return False
  return best is None or value < best[metric]


class Monitor:
  """Callable monitor(step, state, save_best=None) -> row of the largest monitor step."""

  def __init__(self, run):
    c = run.config
    self.config, self.run = c, run
    self.steps = evaluate.parse_steps(c.distill.monitor_steps)
    self.hmm = synthetic.from_config(c.data.synthetic) if c.data.source == "synthetic_hmm" \
        else None
    self.evaluator = None
    if c.eval.evaluator and self.hmm is None:
      self.evaluator = genppl.load_evaluator(c.eval.evaluator, c.eval.evaluator_max_length)
    self.metric = c.distill.best_metric
    if self.metric == "gen_ppl" and self.evaluator is None:
      self.metric = "exact_nll" if self.hmm is not None else "none"
    self.path = run.workdir / "monitor.jsonl"
    self.history = [json.loads(l) for l in self.path.read_text().splitlines()] \
        if self.path.is_file() else []
    floor = entropy_floor(c, self.history)
    self.best = None
    for row in self.history:
      if is_better(row, self.best, self.metric, floor):
        self.best = row
    self._samplers = {}

  def _sampler(self, steps: int):
    if steps not in self._samplers:
      self._samplers[steps] = decoding.make_sampler(
          self.config, self.run.process, self.run.graphdef, num_steps=steps,
          batch_size=self.config.sample.batch_size)
    return self._samplers[steps]

  def cell(self, params, steps: int, aux=None) -> dict:
    """Metrics of monitor_samples samples at `steps` (fixed keys from eval.seed); aux: see
    decoding.sampler_aux."""
    c = self.config
    n, batch = c.distill.monitor_samples, c.sample.batch_size
    key = jax.random.key(c.eval.seed)
    with categorical.x64_scope(c.sample.precision), parallel.mesh_context(self.run.mesh):
      outs = [self._sampler(steps)(params, jax.random.fold_in(key, i), None, aux)
              for i in range(-(-n // batch))]
      outs = parallel.to_host(outs)  # also when sharded over hosts
    tokens = np.concatenate([o.tokens for o in outs])[:n]
    texts = self.run.tokenizer.decode_batch(tokens.tolist())
    row = evaluate.evaluate_cell(tokens, texts, evaluator=self.evaluator, hmm=self.hmm,
                                 tokenizer=self.run.tokenizer,
                                 evaluator_batch_size=c.eval.evaluator_batch_size)
    row.update(decoding.call_counts(outs))  # NFE (and RGAS's discriminator calls)
    return row

  def __call__(self, step: int, state, save_best=None) -> dict:
    params = state.ema_params if self.config.eval.use_ema else state.params
    aux = decoding.sampler_aux(self.config, state)
    cells = {s: self.cell(params, s, aux) for s in self.steps}
    top = cells[max(self.steps)]
    row = {"step": int(step), **{k: top[k] for k in ("entropy", "gen_ppl", "exact_nll")
                                 if k in top},
           "cells": {str(s): {k: v for k, v in r.items() if isinstance(v, (int, float))}
                     for s, r in cells.items()}}
    self.history.append(row)
    floor = entropy_floor(self.config, self.history)
    scalars = {f"monitor/{s}/{k}": v for s, r in row["cells"].items() for k, v in r.items()
               if k in ("gen_ppl", "exact_nll", "entropy")}
    self.run.writer.scalars(step, scalars)
    log.info("monitor step %d: %s", step, "  ".join(
        f"[{s} steps] " + " ".join(f"{k} {v:.4g}" for k, v in r.items()
                                   if k in ("gen_ppl", "exact_nll", "entropy"))
        for s, r in row["cells"].items()))
    if step > 0 and row["entropy"] < floor:
      log.warning("monitor step %d: entropy %.3f fell below the floor %.3f at %d steps "
                  "(IDLM's reverse KL collapses entropy late in training; the best checkpoint "
                  "only considers monitors above the floor)", step, row["entropy"], floor,
                  max(self.steps))
    row["best"] = is_better(row, self.best, self.metric, floor)
    if row["best"]:
      self.best = row
      if save_best is not None:
        save_best()
      log.info("monitor step %d: new best %s %.4g (entropy %.3f)", step, self.metric,
               row[self.metric], row["entropy"])
    if jax.process_index() == 0:
      # rewritten whole: object stores (gs://) cannot append
      self.path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
    return row


class MonitorHook:
  """The monitor as a trainer hook: at step 0 (the student is the teacher: the entropy
  baseline) and every distill.monitor_every steps, saving <workdir>/best on a new best."""

  def __init__(self, run):
    self.monitor = Monitor(run)
    self.every = run.config.distill.monitor_every

  def start(self, run, step: int) -> None:
    if step == 0:
      self.monitor(0, run.state)

  def due(self, step: int, last: bool) -> bool:
    return step % self.every == 0

  def __call__(self, run, step: int) -> None:
    self.monitor(step, run.state, save_best=lambda: loop.save_best(run, step))

