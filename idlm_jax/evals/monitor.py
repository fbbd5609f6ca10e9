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
from idlm_jax.evals import distill_report, evaluate, genppl
from idlm_jax.fields import Field
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
        0.0, "> 0: an explicit entropy floor for the best checkpoint (monitors below it are not "
        "considered, and warned about); 0: the band around the teacher's entropy below.",
        check=F.non_negative_or_off("0: the band of distill.entropy_band")),
    "distill.entropy_band": Field(
        0.05, "the best checkpoint only considers monitors whose entropy is within this many "
        "nats of the teacher's entropy at distill.entropy_reference_steps (matched "
        "entropy, not a relative drop).", check=F.positive),
    "distill.entropy_reference_steps": Field(
        1024, "sampling steps of the teacher's reference entropy (sampled once, at step 0, "
        "with distill.monitor_samples samples, kept in monitor.jsonl).", check=F.positive),
    "distill.best_metric": Field(
        "gen_ppl", "the best checkpoint (<workdir>/best) minimises this at the largest monitor "
        'step among monitors whose entropy is above the floor: "gen_ppl", "exact_nll" '
        '(synthetic_hmm) or "none" (no best checkpoint).',
        choices=("gen_ppl", "exact_nll", "none")),
}


MONITOR_STREAM = 1  # the monitor's keys: fold_in(key(eval.seed), 1) (reports: key(eval.seed))


def entropy_band(config, history: list) -> tuple[float, float]:
  """(lo, hi): the entropies a monitor row may have to be the best checkpoint.
  distill.entropy_floor > 0: [floor, inf); else the teacher's reference entropy (monitor row
  0's "reference_entropy") +- distill.entropy_band; no reference yet: any entropy."""
  d = config.distill
  if d.entropy_floor > 0:
    return float(d.entropy_floor), math.inf
  ref = [h["reference_entropy"] for h in history if "reference_entropy" in h]
  if not ref:
    return -math.inf, math.inf
  return ref[0] - d.entropy_band, ref[0] + d.entropy_band


def is_better(row: dict, best: dict | None, metric: str, band: tuple) -> bool:
  """The best rule: lowest `metric` among rows with entropy in `band` (step 0 excluded)."""
  if metric == "none" or row["step"] == 0 or not band[0] <= row["entropy"] <= band[1]:
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
      self.evaluator = genppl.load_evaluator(c.eval.evaluator,
                                             c.eval.evaluator_max_length or c.data.seq_len)
    self.metric = c.distill.best_metric
    if self.metric == "gen_ppl" and self.evaluator is None:
      self.metric = "exact_nll" if self.hmm is not None else "none"
    self.path = run.workdir / "monitor.jsonl"
    self.history = [json.loads(l) for l in self.path.read_text().splitlines()] \
        if self.path.is_file() else []
    band = entropy_band(c, self.history)
    self.best = None
    for row in self.history:
      if is_better(row, self.best, self.metric, band):
        self.best = row
    self._samplers = {}
    self.scorer = evaluate.Scorer(c, run.tokenizer, self.evaluator, self.hmm)

  def _sampler(self, steps: int, config):
    key = (steps, config.sample.sampler)
    if key not in self._samplers:
      self._samplers[key] = decoding.make_sampler(
          config, self.run.process, self.run.graphdef, num_steps=steps,
          batch_size=self.config.sample.batch_size)
    return self._samplers[key]

  def cell(self, params, steps: int, aux=None, config=None) -> dict:
    """Metrics of monitor_samples samples at `steps` (fixed keys of the monitor's own stream,
    disjoint from the reported evaluation's: checkpoint selection never sees the reported
    samples); aux: see decoding.sampler_aux."""
    c = self.config
    n, batch = c.distill.monitor_samples, c.sample.batch_size
    key = jax.random.fold_in(jax.random.key(c.eval.seed), MONITOR_STREAM)
    with categorical.x64_scope(c.sample.precision), parallel.mesh_context(self.run.mesh):
      outs = [self._sampler(steps, config or c)(params, jax.random.fold_in(key, i), None, aux)
              for i in range(-(-n // batch))]
      outs = parallel.to_host(outs)  # also when sharded over hosts
    tokens = np.concatenate([o.tokens for o in outs])[:n]
    row = self.scorer.score(tokens)
    row.update(decoding.call_counts(outs))  # NFE (and RGAS's discriminator calls)
    row["tokens"] = tokens
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
    if not any("reference_entropy" in h for h in self.history) and \
        self.config.distill.entropy_floor <= 0:
      # the teacher's entropy (the step-0 student is the teacher's copy at step 0; later, the
      # frozen teacher when the run has one) at entropy_reference_steps
      ref_params = self.run.frozen["teacher"] if step > 0 and self.run.frozen else params
      ref = self.cell(ref_params, int(self.config.distill.entropy_reference_steps),
                      config=distill_report.teacher_config(self.config))
      row["reference_entropy"] = ref["entropy"]
      log.info("monitor: the teacher's entropy at %d steps is %.4f (the best checkpoint's "
               "band: +-%.2f)", self.config.distill.entropy_reference_steps, ref["entropy"],
               self.config.distill.entropy_band)
    self.history.append(row)
    band = entropy_band(self.config, self.history)
    scalars = {f"monitor/{s}/{k}": v for s, r in row["cells"].items() for k, v in r.items()
               if k in ("gen_ppl", "exact_nll", "entropy")}
    self.run.writer.scalars(step, scalars)
    log.info("monitor step %d: %s", step, "  ".join(
        f"[{s} steps] " + " ".join(f"{k} {v:.4g}" for k, v in r.items()
                                   if k in ("gen_ppl", "exact_nll", "entropy"))
        for s, r in row["cells"].items()))
    if step > 0 and not band[0] <= row["entropy"] <= band[1]:
      log.warning("monitor step %d: entropy %.3f at %d steps is outside the band [%.3f, %.3f] "
                  "around the teacher's (IDLM's reverse KL lowers entropy late in training; "
                  "the best checkpoint only considers monitors inside the band)", step,
                  row["entropy"], max(self.steps), band[0], band[1])
    row["best"] = is_better(row, self.best, self.metric, band)
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

