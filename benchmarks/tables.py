"""Every results table in the docs, generated from the committed raw files.

  python -m benchmarks.tables          # rewrite the tables in README.md, docs/*.md and
                                       # benchmarks/results/README.md from their raw files
  python -m benchmarks.tables --check  # exit 1 when a table no longer matches its raw file

A table lives in a Markdown file between `<!-- table: NAME -->` and `<!-- /table -->`, where
NAME is a key of TABLES; the lines in between are generated (a caption line naming the raw
files, seed and sample count, then the table). tests/benchmarks/test_tables.py runs the check,
so a number in the docs can only change together with its raw file.
"""

import argparse
import json
import pathlib
import re
import sys

import numpy as np

from idlm_jax import config
from idlm_jax.evals import distill_report

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), RESULTS / "README.md"]
MARKER = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)",
                    re.S)


def _load(name: str):
  path = RESULTS / name
  if path.suffix == ".jsonl":
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return json.loads(path.read_text())


COUNTS = ("steps", "nfe", "row_nfe", "disc_forwards", "disc_grads", "L", "B")


def _fmt(v, digits: int = 3, key: str = "") -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    if key in COUNTS:  # call counts: integers, or one decimal for means over batches
      return str(int(v)) if v.is_integer() else f"{v:.1f}"
    if abs(v) >= 100:
      return f"{v:.1f}"
    return f"{v:.{digits}f}"
  return str(v)


# ------------------------------------------------------------------ renderers


def _teacher_at(frontier: tuple, metric: str):
  """row -> {str(steps): the teacher's `metric` at the row's entropy}, interpolated along the
  temperature sweeps of frontier = (results files, step counts) (distill_report.matched_entropy;
  None outside a sweep)."""
  fnames, steps = frontier
  sweep = [dict(r, sampler="teacher") for f in fnames for r in _load(f)["rows"]
           if r.get("steps") in steps]  # the sampled rows (not the data row)

  def at(row: dict) -> dict:
    probe = [dict(row, sampler="row")]
    distill_report.matched_entropy(sweep + probe, "teacher", metric)
    return probe[0]["teacher_at_entropy"]

  return at


def quality(*sources, frontier: tuple | None = None) -> str:
  """Sample-quality rows of eval_samplers / distillation-report results files.

  sources: (file, label) or (file, label, keep) tuples; label is a format string over the
  row's fields ({sampler}, {variant}) or None (the row's variant, else its sampler); keep(row)
  selects rows (default: all). Columns: quality (Gen PPL or the
  exact NLL per token on the synthetic language), unigram entropy, distinct-4, NFE (and the
  per-row NFE of R2 rows, RGAS's discriminator calls, the synthetic language's 4-gram KL to
  the source) — whatever the rows carry; a value with a
  standard error in the row (`<key>_se`) is shown as value ± SE.
  frontier: (files, steps) adds, for each step count, a column "teacher N @ H": the teacher's
  quality at the row's entropy, interpolated along its temperature sweep at N steps in those
  results files (the distillation report's `matched_entropy`; "–" outside the sweep)."""
  rows, headers, files = [], [], []
  for name, label, *keep in sources:
    d = _load(name)
    files.append(name)
    headers.append(d.get("header", {}))
    for r in d["rows"]:
      if keep and not keep[0](r):
        continue
      text = label.format(sampler=r.get("sampler", ""), variant=r.get("variant", "")) \
          if label else (r.get("variant") or r.get("sampler"))
      rows.append((text, r))
  metric = "gen_ppl" if any("gen_ppl" in r for _, r in rows) else "exact_nll"
  cols = [("steps", "steps"), ("nfe", "NFE")]
  if any("row_nfe" in r for _, r in rows):
    cols.append(("row_nfe", "row NFE"))
  if any("disc_forwards" in r for _, r in rows):
    cols.append(("disc_forwards", "disc. calls"))
  cols += [(metric, "Gen PPL" if metric == "gen_ppl" else "exact NLL/token"),
           ("entropy", "entropy"), ("distinct_4", "distinct-4")]
  if any("ngram_kl_4" in r for _, r in rows):
    cols.append(("ngram_kl_4", "4-gram KL"))
  if frontier:
    fnames, steps = frontier
    files.extend(fnames)
    teacher_at = _teacher_at(frontier, metric)
    for text, r in rows:
      if r.get("steps") is not None and not (text.startswith("teacher")
                                             or r["sampler"].startswith("teacher")):
        at = teacher_at(r)
        for n in steps:
          r[f"teacher_{n}_at_h"] = at.get(str(n))
    cols += [(f"teacher_{n}_at_h", f"teacher {n} @ H") for n in steps]
  out = ["| model | " + " | ".join(c[1] for c in cols) + " |",
         "|---|" + "---|" * len(cols)]
  def cell(r, k):  # value ± its standard error, both at the value's precision
    v, se = r.get(k), r.get(k + "_se")
    if se is None or not isinstance(v, float):
      return _fmt(v, key=k)
    return f"{_fmt(v, key=k)} ± " + (f"{se:.1f}" if abs(v) >= 100 else _fmt(float(se), key=k))
  for text, r in rows:
    out.append(f"| {text} | " + " | ".join(cell(r, k) for k, _ in cols) + " |")
  seeds = sorted({h.get("seed") for h in headers if "seed" in h})
  samples = sorted({h.get("num_samples") for h in headers if "num_samples" in h})
  precision = sorted({h.get("precision") for h in headers if "precision" in h})
  raw = ", ".join(f"`benchmarks/results/{f}`" for f in dict.fromkeys(files))  # each file once
  caption = (f"Raw: {raw}; "
             f"seed {'/'.join(map(str, seeds)) or '?'}, {'/'.join(map(str, samples)) or '?'} "
             f"samples per row, {'/'.join(precision) or '?'} draws.")
  return caption + "\n\n" + "\n".join(out) + "\n"


def speed_rows(name: str, keys, title: dict, derived=None) -> str:
  """A JSONL benchmark file as a table of the listed keys (`derived`: {key: row -> value})."""
  rows = _load(name)
  derived = derived or {}
  value = lambda r, k: derived[k](r) if k in derived else r.get(k)  # noqa: E731
  out = ["| " + " | ".join(title.get(k, k) for k in keys) + " |", "|" + "---|" * len(keys)]
  for r in rows:
    out.append("| " + " | ".join(_fmt(value(r, k), 2, k) for k in keys) + " |")
  first = rows[0]
  caption = (f"Raw: `benchmarks/results/{name}` ({first.get('device', '?')}, "
             f"jax {first.get('jax', first.get('version', '?'))}).")
  return caption + "\n\n" + "\n".join(out) + "\n"


def input_rows(name: str) -> str:
  """benchmarks/input_throughput.py rows: input tokens/s of one host per shape and reader, and
  how many DiT-small train steps (the committed accelerator measurement) that rate feeds."""
  rows = _load(name)
  out = ["| shape | L | B | vocab | workers | prefetch | threads | M tokens/s | ms / batch | "
         "steps fed | wait per paced step (ms) |", "|" + "---|" * 11]
  for r in rows:
    out.append(f"| {r['shape']} | {r['L']} | {r['B']} | {r['vocab']} | {r['workers']} | "
               f"{r['prefetch']} | {r['read_threads']} | {r['tokens_per_s'] / 1e6:.1f} | "
               f"{r['ms_per_batch']:.3f} | {r['steps_fed']:.0f} | "
               f"{_fmt(r.get('paced_wait_ms'), 3)} |")
  first = rows[0]
  caption = (f"Raw: `benchmarks/results/{name}` ({first['machine']}, grain {first['grain']}, "
             f"{first['date']}, page cache {first['page_cache']}); steps fed = input tokens/s / "
             f"{first['step_tokens_per_s'] / 1e3:.0f}k tokens/s of the DiT-small teacher step "
             f"(L=1024, B=32, {first['step_device']}); paced: one batch every "
             f"{_fmt(first.get('paced_step_ms'), 0)} ms, median wait in next().")
  return caption + "\n\n" + "\n".join(out) + "\n"


def dllm_r2(name: str) -> str:
  """Accuracy vs NFE of block decoding (benchmarks/dllm_r2.py rows): per model and variant,
  exact-match accuracy +- SE, NFE per sample +- SE, the NFE change against the same model's
  uncached threshold decoding, tokens/s and the commits per sample of each rule."""
  rows = _load(name)
  base = {r["model"]: r["nfe"] for r in rows if r["variant"] == "threshold"}
  out = ["| model | decoding | accuracy | NFE | NFE vs threshold | tokens/s | floor | "
         "threshold | conf. cluster | token cluster | temporal |", "|" + "---|" * 11]
  for r in rows:
    ref = base.get(r["model"])
    change = "–" if ref is None else f"{100.0 * (r['nfe'] / ref - 1.0):+.0f}%"
    commits = [_fmt(r.get(f"per_sample_{k}"), 1) for k in
               ("floor", "threshold", "confidence_cluster", "token_cluster", "temporal")]
    out.append(f"| {r['model']} | {r['variant']} | {r['accuracy']:.3f} ± {r['stderr']:.3f} | "
               f"{r['nfe']:.2f} ± {r['nfe_se']:.2f} | {change} | {r['tokens_per_s']:.1f} | "
               + " | ".join(commits) + " |")
  first = rows[0]
  caption = (f"Raw: `benchmarks/results/{name}` (n = {first['n']} test problems, greedy, "
             f"gen_length {first['options']['gen_length']}, block_length "
             f"{first['options']['block_length']}; {first['device']}, jax {first['jax']}; "
             "tokens/s on a shared CPU).")
  return caption + "\n\n" + "\n".join(out) + "\n"


def accuracy_vs_steps(name: str) -> str:
  """benchmarks/dllm_r2.py rows of several models (e.g. a teacher and its distilled students):
  one line per model, one column per decoding variant (its NFE per sample, the first model's,
  in the header), cells exact-match accuracy +- SE (with the model's own NFE where it differs)."""
  rows = _load(name)
  models = list(dict.fromkeys(r["model"] for r in rows))
  variants = list(dict.fromkeys(r["variant"] for r in rows))
  cell = {(r["model"], r["variant"]): r for r in rows}
  nfe = {v: next(r["nfe"] for r in rows if r["variant"] == v) for v in variants}
  n = lambda x: str(int(x)) if float(x).is_integer() else f"{x:.2f}"  # noqa: E731
  out = ["| model | " + " | ".join(f"{v} (NFE {n(nfe[v])})" for v in variants)
         + " |", "|---|" + "---|" * len(variants)]
  for m in models:
    parts = []
    for v in variants:
      r = cell.get((m, v))
      if r is None:
        parts.append("–")
        continue
      own = "" if r["nfe"] == nfe[v] else f" (NFE {n(r['nfe'])})"
      parts.append(f"{r['accuracy']:.3f} ± {r['stderr']:.3f}{own}")
    out.append(f"| {m} | " + " | ".join(parts) + " |")
  first = rows[0]
  caption = (f"Raw: `benchmarks/results/{name}` (exact-match accuracy ± SE on n = {first['n']} "
             f"test problems, greedy, gen_length {first['options']['gen_length']}, block_length "
             f"{first['options']['block_length']}; stepsK: K forwards per block with LLaDA's "
             f"low-confidence remasking; vanilla: one token per forward; threshold: Fast-dLLM "
             f"at 0.9; {first['device']}, jax {first['jax']}).")
  return caption + "\n\n" + "\n".join(out) + "\n"


def across_seeds(files, keep, frontier: tuple) -> str:
  """Rows that several training seeds share (same sampler and steps, e.g. a distillation
  config run with --config.seed=s --config.data.seed=s): each seed's Gen PPL / entropy, their
  mean +- standard error over seeds, and the teacher's Gen PPL at the mean entropy along its
  temperature frontier (frontier: (files, steps) as in `quality`)."""
  runs = [[r for r in _load(f)["rows"] if keep(r)] for f in files]
  fnames, steps = frontier
  teacher_at = _teacher_at(frontier, "gen_ppl")
  out = ["| model | steps | " + " | ".join(f"seed {i}: Gen PPL / entropy"
                                          for i in range(len(files)))
         + " | Gen PPL, mean ± SE | entropy, mean ± SE | "
         + " | ".join(f"teacher {n} @ mean H" for n in steps) + " |",
         "|---|---|" + "---|" * (len(files) + 2 + len(steps))]
  for group in zip(*runs):
    key = {(r["sampler"], r["steps"]) for r in group}
    if len(key) != 1:
      raise ValueError(f"seed files disagree on their rows: {sorted(key)}")
    ppl = np.array([r["gen_ppl"] for r in group])
    ent = np.array([r["entropy"] for r in group])
    se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x)))
    at = teacher_at({"steps": group[0]["steps"], "entropy": float(ent.mean()),
                     "gen_ppl": float(ppl.mean())})
    out.append(f"| {group[0]['sampler']} | {group[0]['steps']} | "
               + " | ".join(f"{r['gen_ppl']:.1f} / {r['entropy']:.3f}" for r in group)
               + f" | {ppl.mean():.1f} ± {se(ppl):.1f} | {ent.mean():.3f} ± {se(ent):.3f} | "
               + " | ".join(_fmt(at.get(str(n))) for n in steps) + " |")
  raw = ", ".join(f"`benchmarks/results/{f}`" for f in [*files, *fnames])
  header = _load(files[0]).get("header", {})
  caption = (f"Raw: {raw}; {len(files)} training seeds, sampling seed "
             f"{header.get('seed', '?')}, {header.get('num_samples', '?')} samples per row, "
             "SE over seeds (ddof 1).")
  return caption + "\n\n" + "\n".join(out) + "\n"


def monitor_runs(files, cell: str, band: float = 0.05) -> str:
  """Distillation monitors (monitor.jsonl) of several runs side by side: per monitored step,
  each run's Gen PPL / entropy of its `cell` (sampling steps); "*" marks entries inside the
  entropy band (the first row's reference_entropy +- band) that the best-checkpoint rule
  considers, "best" the ones it kept."""
  runs = [_load(f) for f in files]
  ref = runs[0][0]["reference_entropy"]
  out = ["| step | " + " | ".join(f"run {i}: Gen PPL / entropy" for i in range(len(files)))
         + " |", "|---|" + "---|" * len(files)]
  for rows in zip(*runs):
    parts = []
    for r in rows:
      c = r["cells"][cell]
      mark = (" *" if abs(c["entropy"] - ref) <= band else "") + (" best" if r["best"] else "")
      parts.append(f"{c['gen_ppl']:.1f} / {c['entropy']:.3f}{mark}")
    out.append(f"| {rows[0]['step']} | " + " | ".join(parts) + " |")
  raw = ", ".join(f"`benchmarks/results/{f}`" for f in files)
  caption = (f"Raw: {raw} (runs in this order); the EMA student at {cell} sampling steps, "
             f"{runs[0][0]['cells'][cell]['gen_scored']} monitor samples per entry; band: "
             f"{ref:.3f} ± {band} (the teacher at the monitor's reference steps).")
  return caption + "\n\n" + "\n".join(out) + "\n"


def monitor_summary(runs, cell: str, band: float = 0.05) -> str:
  """One line per distillation run (runs: (monitor.jsonl, label) pairs): how many monitors fell
  in the entropy band at `cell` sampling steps, the range the entropy swept, the kept best and
  the last monitor (Gen PPL / entropy on the monitor's own samples)."""
  out = [f"| run | monitors in band | {cell}-step entropy range | best kept (step: Gen PPL / "
         "entropy) | last (step: Gen PPL / entropy) |", "|---|---|---|---|---|"]
  for name, label in runs:
    rows = _load(name)
    ref = rows[0]["reference_entropy"]
    cells = [(r["step"], r["cells"][cell], r["best"]) for r in rows]
    inband = [c for c in cells[1:] if abs(c[1]["entropy"] - ref) <= band]
    ents = [c[1]["entropy"] for c in cells[1:]]
    best = [c for c in cells if c[2]]
    show = lambda c: f"{c[0]}: {c[1]['gen_ppl']:.1f} / {c[1]['entropy']:.3f}"  # noqa: E731
    out.append(f"| {label} | {len(inband)} of {len(cells) - 1} | {min(ents):.3f} – "
               f"{max(ents):.3f} | {show(best[-1]) if best else 'none'} | {show(cells[-1])} |")
  raw = ", ".join(f"`benchmarks/results/{n}`" for n, _ in runs)
  first = _load(runs[0][0])[0]
  caption = (f"Raw: {raw}; {first['cells'][cell]['gen_scored']} monitor samples per entry, "
             f"band {first['reference_entropy']:.3f} ± {band}; step 0 (the teacher) excluded.")
  return caption + "\n\n" + "\n".join(out) + "\n"


def shipped_evals(runs) -> str:
  """mode "eval" results of shipped models (runs: (results file, config) pairs): a diffusion
  model's NELBO as a bound, a causal model's NLL as exact."""
  out = ["| model | config | tokens | result |", "|---|---|---|---|"]
  for name, cfg in runs:
    d = _load(name)
    result = (f"NELBO {d['val_nelbo']:.4f} nats/token, PPL <= {d['val_ppl_bound']:.2f}"
              if "val_nelbo" in d else f"NLL {d['val_nll']:.4f} nats/token, "
              f"PPL = {d['val_ppl']:.2f}")
    out.append(f"| `{d['model']}` (step {d['step']}) | `{cfg}` | {d['val_tokens']:.0f} | "
               f"{result} |")
  raw = ", ".join(f"`benchmarks/results/{n}`" for n, _ in runs)
  return f"Raw: {raw} ({_load(runs[0][0])['eval_data']}).\n\n" + "\n".join(out) + "\n"


def plans(names) -> str:
  """Memory plans (benchmarks/plan.py JSON) of DiT train steps: the chosen setting per plan,
  its calibrated fixed and per-row GiB per device (the 1-2 block probes' extrapolation), rows
  per device and microbatches, the extrapolated GiB there and the full-depth compile's."""
  out = ["| plan | objective, L, global batch | devices | chosen setting | fixed + per row "
         "(GiB) | rows per device | microbatches | GiB per device, extrapolated | GiB per "
         "device, full-depth compile |", "|" + "---|" * 9]
  for name in names:
    p = _load(f"plans/{name}.json")
    c = p["chosen"]
    s = next(s for s in p["settings"] if (s["remat"], s["mesh"]) == (c["remat"], c["mesh"]))
    rows = c["rows_per_device"]
    check = f"{c['check']['calibrated_gib']:.1f}" if c.get("check") else "–"
    out.append(f"| {name} | {p['objective']}, {p['seq_len']}, {p['global_batch']} | "
               f"{p['devices']} x {p['memory_gib']:g} GiB | remat {c['remat']}, {c['mesh']} | "
               f"{s['gib_fixed']:.2f} + {s['gib_per_row']:.3f} | {rows or 'none fits'} | "
               f"{c['microbatches'] or '-'} | "
               f"{s['gib_fixed'] + s['gib_per_row'] * rows:.1f} | {check} |")
  first = _load(f"plans/{names[0]}.json")
  caption = (f"Raw: `benchmarks/results/plans/<plan>.json` (`{first['command'].split(' --name')[0]}`"
             f" and the other `--paper` entries; XLA:CPU compiles, jax {first['jax']}, "
             f"temporaries x {first['temp_scale']:.3f} from the H100 calibration).")
  return caption + "\n\n" + "\n".join(out) + "\n"


def _target(p: dict) -> str:
  """A plan's compiler and devices: "XLA:CPU, 1 x 80 GiB", "deviceless TPU v5e 4x4, 16 x 16 GiB"."""
  t = p["target"]
  where = "XLA:CPU" if t == "cpu" else "deviceless " + t.replace("tpu:", "TPU ").replace(":", " ")
  return f"{where}, {p['devices']} x {p['memory_gib']:g} GiB"


def llada_plans(names, checks: str) -> str:
  """LLaDA-8B memory plans (benchmarks/plan.py --llada JSON): the inference forward per batch,
  the fine-tuning settings (persistent bytes, one row, the per-row slope, rows that fit), and
  the full-depth compiles that check the extrapolation."""
  infer = ["| plan | compiler, devices | bf16 forward, GiB per device at batch b |",
           "|---|---|---|"]
  sft = ["| plan | compiler, devices | params + moments | remat | persistent GiB | GiB at 1 "
         "row | + GiB per row | rows per device that fit |", "|" + "---|" * 8]
  for name in names:
    p = _load(f"plans/{name}.json")
    if p["mode"] == "forward_batches":
      bs = p["batches"]
      gib = " / ".join(f"{b['calibrated_gib']:.1f}" for b in bs)
      if p["temp_scale"] != 1.0:
        gib += " (raw " + " / ".join(f"{b['total_gib']:.1f}" for b in bs) + ")"
      infer.append(f"| {name} | {_target(p)} | b = {' / '.join(str(b['batch']) for b in bs)}: "
                   f"{gib} |")
      continue
    for st in p["settings"]:
      sft.append(f"| {name} | {_target(p)} | {st['param_dtype']} | {st['remat']} | "
                 f"{st['persistent_gib']:.1f} | {st['gib_1row']:.1f} | "
                 f"{st['gib_per_row']:+.2f} | {st['max_rows'] or 'none'} |")
  full = ["| full-depth check | layers | rows per device | global batch | GiB per device | "
          "compile (s) |", "|---|---|---|---|---|---|"]
  for name, c in _load(f"plans/{checks}").items():
    full.append(f"| {name} | {c['n_layers']} | {c['rows']} | {c['global_batch']} | "
                f"{c['total_gib']:.1f} | {c['compile_s']:.0f} |")
  first = _load(f"plans/{names[0]}.json")
  caption = (f"Raw: `benchmarks/results/plans/<plan>.json` and `{checks}` "
             f"(`python -m benchmarks.plan --paper=llada8b`, jax {first['jax']}; XLA:CPU GiB "
             f"have their temporaries x {first['temp_scale']:.3f} from the H100 calibration, "
             f"raw in brackets; a fine-tuning plan fits rows within {1 - first.get('headroom', 0.1):.0%} "
             f"of the memory).")
  return "\n\n".join([caption, "\n".join(infer), "\n".join(sft), "\n".join(full)]) + "\n"


def authors_parity(name: str) -> str:
  """benchmarks/parity/authors_parity_errors.py: each converted output's largest absolute
  difference from the official code's."""
  data = _load(name)
  out = ["| family | output | max abs. error | official values up to |", "|---|---|---|---|"]
  for r in data["rows"]:
    out.append(f"| {r['family']} | {r['output']} | {r['max_abs_error']:.1e} | "
               f"{r['max_abs_value']:.2f} |")
  return (f"Raw: `benchmarks/results/{name}` ({data['device']}, jax {data['jax']}, float32)."
          "\n\n" + "\n".join(out) + "\n")


def config_fields() -> str:
  """Every config field (path, default, allowed values, meaning) from the declarations."""
  out = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
  cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
  for path, f in config.schema().items():
    allowed = ", ".join(map(repr, f.allowed())) if f.allowed() is not None else \
        (f.check.what if f.check else "")
    out.append(f"| `{path}` | `{f.default!r}` | {cell(allowed)} | {cell(f.doc)} |")
  return ("Generated from the `FIELDS` declarations (`python -m benchmarks.tables`).\n\n"
          + "\n".join(out) + "\n")


# the shipped synthetic teacher's temperature sweeps (eval_samplers, eval.model=synthetic)
FRONTIER = ("synthetic_teacher_frontier.json", "synthetic_teacher_frontier_low.json")
DEMO_FRONTIER = ("demo_teacher_frontier.json", "demo_teacher_frontier_low.json")


def _demo_students(files) -> str:
  """The IDLM student rows of the demo's training seeds (one results file per seed) against
  the demo teacher's frontier."""
  return across_seeds(files, lambda r: r["sampler"].startswith("idlm"),
                      (DEMO_FRONTIER, (1024, 64)))


TABLES = {
    "config_fields": config_fields,
    "paper_plans": lambda: plans(["idlm_mdlm_owt_8x80gb", "idlm_mdlm_owt_chunk128_8x80gb",
                                  "idlm_duo_owt_8x80gb", "idlm_duo_owt_chunk128_8x80gb",
                                  "idlm_duo_owt_chunk32_8x80gb", "didi_mdlm_owt_8x80gb",
                                  "duo_lm1b_8x80gb", "idlm_mdlm_owt_v5e16",
                                  "didi_mdlm_owt_v5e16", "duo_lm1b_v5e16"]),
    "authors_parity": lambda: authors_parity("authors_parity.json"),
    # what the chunked losses (model.loss_chunk) cost: benchmarks/chunk_flops.py
    "chunk_flops": lambda: speed_rows(
        "chunk_flops_cpu_2026-12-07.jsonl",
        ["algo", "loss", "unchunked_units", "chunked_units", "extra_units"],
        {"unchunked_units": "unchunked (units of 2 B L d V)", "chunked_units": "chunked",
         "extra_units": "extra"}),
    "llada8b_plans": lambda: llada_plans(
        ["llada8b_infer_L512_1x80gb_cpu", "llada8b_infer_L512_1x80gb_tpuv5p",
         "llada8b_infer_L512_v5e16", "llada8b_sft_L512_1x80gb_cpu",
         "llada8b_sft_L512_1x80gb_tpuv5p", "llada8b_sft_L512_v5e16"],
        "llada8b_sft_L512_fulldepth_checks.json"),
    "campaign_plans": lambda: plans(["campaign_idlm_b32_1gpu", "campaign_idlm_chunk128_b32_1gpu",
                                     "campaign_didi_b32_1gpu",
                                     "campaign_text_teacher_1gpu", "campaign_text_idlm_1gpu",
                                     "campaign_text_ar_1gpu"]),
    "dllm_r2": lambda: dllm_r2("dllm_r2_reasoning.jsonl"),
    "idlm_reasoning_steps": lambda: accuracy_vs_steps("idlm_reasoning_steps.jsonl"),
    # the demo (configs/demo.py, seed 0) with the teacher at 1024 steps from its temperature
    # sweep (an eval_samplers run on the shipped teacher, the same evaluator and sampling seed)
    "demo": lambda: quality(
        (DEMO_FRONTIER[0], "teacher {sampler} (eval run)", lambda r: r.get("temperature") == 1.0),
        ("demo_genppl.json", None), frontier=(DEMO_FRONTIER, (1024, 64))),
    "eval_shipped": lambda: shipped_evals([
        ("eval_shipped_demo.json", "configs/demo_teacher.py"),
        ("eval_shipped_embedded.json", "configs/ar_embedded.py")]),
    "demo_teacher_frontier": lambda: quality(
        (DEMO_FRONTIER[0], None), (DEMO_FRONTIER[1], None, lambda r: r.get("steps") is not None)),
    # the monitor's best-in-band checkpoints (16-step student within distill.entropy_band of
    # the teacher), scored with --config.mode=eval_samplers --config.eval.checkpoint=best
    "demo_best": lambda: quality(
        (DEMO_FRONTIER[0], "teacher {sampler} (eval run)", lambda r: r.get("temperature") == 1.0),
        (DEMO_FRONTIER[1], "teacher {sampler} (eval run)",
         lambda r: r.get("temperature") == 1.0 and r["steps"] == 64),
        *((f"demo_genppl_seed{s}_best.json", f"seed {s}, monitor every 100, best (step {k}), "
           + "{sampler}", lambda r: r["sampler"].startswith("idlm"))
          for s, k in ((0, 100), (1, 200))),
        ("demo_genppl_seed0_best_m25.json", "seed 0, monitor every 25, best (step 250), {sampler}",
         lambda r: r["sampler"].startswith("idlm")),
        frontier=(DEMO_FRONTIER, (1024, 64))),
    "demo_monitor_m25": lambda: monitor_runs(
        [f"demo_monitor_m25_seed{s}.jsonl" for s in range(3)], "16"),
    "demo_monitor_lr": lambda: monitor_summary(
        [(f"demo_monitor_{tag}_seed{s}.jsonl", f"lr {lr}, seed {s}")
         for tag, lr in (("m25", "1e-4"), ("lr3e-5", "3e-5")) for s in range(3)], "16"),
    # lr 3e-5, monitor every 25 steps: the last checkpoints and the kept best-in-band ones
    "demo_seeds_lr3e-5": lambda: _demo_students(
        [f"demo_genppl_lr3e-5_seed{s}.json" for s in range(3)]),
    "demo_best_lr3e-5": lambda: _demo_students(
        [f"demo_genppl_lr3e-5_seed{s}_best.json" for s in range(3)]),
    # seed 0 is the README's demo run
    "demo_seeds": lambda: _demo_students(
        ["demo_genppl.json", "demo_genppl_seed1.json", "demo_genppl_seed2.json"]),
    # the shipped teacher's rows as measured by the IDLM run's report (same checkpoint, EMA)
    "synthetic_mdlm_teacher": lambda: quality((
        "idlm_synthetic.json", None, lambda r: not r["sampler"].startswith("idlm"))),
    "idlm_synthetic": lambda: quality(("idlm_synthetic.json", None)),
    "synthetic_teacher_frontier": lambda: quality(
        (FRONTIER[0], None), (FRONTIER[1], None, lambda r: r.get("steps") is not None)),
    # sweeps of configs/idlm_synthetic.py (one setting changed per run; EMA student, final
    # checkpoint: no monitor fell inside the entropy band) against the teacher's reference rows
    "idlm_synthetic_sweep": lambda: quality(
        ("idlm_synthetic.json", None, lambda r: r["sampler"] == "data (held-out validation "
         "rows)" or (r["sampler"].startswith("teacher") and r["steps"] in (1024, 64))),
        *((f"idlm_synthetic{name}.json", f"student, {label}",
           lambda r: r["sampler"].startswith("idlm") and r["steps"] in (16, 4))
          for name, label in (("", "lr 1e-4, 400 steps (the config)"),
                              ("_sweep_lr3e-5", "lr 3e-5"), ("_sweep_lr1e-5", "lr 1e-5"),
                              ("_sweep_1200", "1200 steps"),
                              ("_sweep_fake2", "fake:student 2:1"),
                              ("_sweep_fakelr3e4", "fake lr 3e-4"),
                              ("_sweep_gumbel", "gumbel relaxation (tau 0.1)"),
                              ("_sweep_ema0999", "EMA 0.999"),
                              ("_sweep_ema00", "no EMA (the raw student)"),
                              ("_sweep_ema0_1200", "no EMA, 1200 steps (last)"),
                              ("_sweep_ema0_1200_best",
                               "no EMA, 1200 steps, best in band (step 550)"),
                              ("_sweep_grid16", "student times on the 16-step grid"))),
        frontier=(FRONTIER, (1024, 64))),
    # every student of the shipped MDLM teacher at 16 and 4 steps, read against the teacher's
    # temperature frontier at 1024 and 64 steps
    "synthetic_comparison": lambda: quality(
        ("idlm_synthetic.json", None, lambda r: r["sampler"].startswith("data") or (
            r["sampler"].startswith("teacher") and r["steps"] in (1024, 64, 16))),
        *((name, label, lambda r: not r["sampler"].startswith(("data", "teacher"))
           and r["steps"] in (16, 4))
          for name, label in (
              ("idlm_synthetic.json", "IDLM (the config: EMA 0.99, 400 steps)"),
              ("idlm_synthetic_sweep_ema0_1200_best.json",
               "IDLM, no EMA, 1200 steps, best in band (step 550)"),
              ("sdtt_synthetic.json", "SDTT, 4 rounds (last, step 400)"),
              ("sdtt_synthetic_best.json", "SDTT, best in band (step 100, round 1)"),
              ("didi_synthetic_lr2e-5.json", "DiDi-Instruct, lr 2e-5 (last = best)"),
              ("didi_synthetic_lr2e-5_1200_best.json",
               "DiDi-Instruct, lr 2e-5, 1200 steps, best in band (step 550)"))),
        frontier=(FRONTIER, (1024, 64))),
    "dcd_synthetic": lambda: quality(
        ("dcd_synthetic.json", None, lambda r: not r["sampler"].startswith("dcd")),
        ("dcd_synthetic.json", "dcd student, last (step 400)",
         lambda r: r["sampler"].startswith("dcd")),
        ("dcd_synthetic_best.json", "dcd student, best in band (step 300)",
         lambda r: r["sampler"].startswith("dcd")),
        ("idlm_dcd_synthetic.json", "IDLM-DCD (lr 1e-4, 400 steps, last)",
         lambda r: r["sampler"].startswith("idlm")),
        ("idlm_dcd_synthetic_best.json", "IDLM-DCD, best in band (step 100)",
         lambda r: r["sampler"].startswith("idlm"))),
    "didi_synthetic": lambda: quality(
        ("didi_synthetic_lr2e-5.json", None, lambda r: not r["sampler"].startswith("didi")),
        ("didi_synthetic_lr1e-4.json", "DiDi student, lr 1e-4, 400 steps",
         lambda r: r["sampler"].startswith("didi")),
        ("didi_synthetic_lr2e-5.json", "DiDi student, lr 2e-5, 400 steps",
         lambda r: r["sampler"].startswith("didi")),
        ("didi_synthetic_lr2e-5_1200.json", "DiDi student, lr 2e-5, 1200 steps (last)",
         lambda r: r["sampler"].startswith("didi")),
        ("didi_synthetic_lr2e-5_1200_best.json",
         "DiDi student, lr 2e-5, 1200 steps, best in band (step 550)",
         lambda r: r["sampler"].startswith("didi"))),
    "didi_demo": lambda: quality(("didi_demo.json", "DiDi student, {sampler}")),
    "r2_synthetic": lambda: quality(("r2_synthetic.json", None)),
    "r2_idlm_student": lambda: quality(("r2_idlm_student_synthetic.json", None)),
    "r2_finetune": lambda: quality(("r2_finetune_synthetic_l1.json", "fine-tuned, {variant}"),
                                   ("r2_finetune_synthetic_rand_l1.json",
                                    "random-mask ablation, {variant}")),
    "generation_speed_cpu": lambda: speed_rows(
        "generation_speed_cpu_2026-11-23.jsonl",
        ["role", "steps", "B", "L", "nfe", "seconds", "tokens_per_s", "speedup_vs_teacher"],
        {"nfe": "NFE", "seconds": "s / batch", "tokens_per_s": "tokens/s",
         "speedup_vs_teacher": "speed-up"}),
    "distill_step_cpu": lambda: speed_rows(
        "distill_step_cpu_2026-12-06.jsonl",
        ["objective", "batches_per_step", "step_ms_median", "x_teacher_step",
         "x_teacher_per_token", "total_gib", "temp_gib"],
        {"objective": "train step", "batches_per_step": "batches/step",
         "step_ms_median": "ms (median)", "x_teacher_step": "x teacher step",
         "x_teacher_per_token": "x teacher per token", "total_gib": "compiled GiB",
         "temp_gib": "temp GiB"},
        {"total_gib": lambda r: r["compiled_mem"]["total_gib"],
         "temp_gib": lambda r: r["compiled_mem"]["temp_gib"]}),
    "step_flops": lambda: speed_rows(
        "step_flops_cpu_2026-12-06.jsonl", ["step", "L", "B", "tflop", "x_teacher"],
        {"step": "train step", "tflop": "TFLOP per step", "x_teacher": "x teacher step"},
        {"tflop": lambda r: r["flops"] / 1e12}),
    "input_throughput": lambda: input_rows("input_throughput_cpu2_2026-12-05.jsonl"),
    "h100_train": lambda: speed_rows(
        "h100_2026-11-22.jsonl",
        ["framework", "kind", "L", "B", "tokens_per_s", "ms", "mfu", "peak_mem_gib"],
        {"tokens_per_s": "tokens/s", "ms": "ms per call", "mfu": "MFU",
         "peak_mem_gib": "peak GiB"},
        {"ms": lambda r: r.get("step_ms", r.get("call_ms")),
         "mfu": lambda r: r.get("mfu", r.get("mfu_brief"))}),
}


# ------------------------------------------------------------------ rewriting the docs


def render(text: str, path: pathlib.Path) -> str:
  def one(m):
    name = m.group("name")
    if name not in TABLES:
      raise KeyError(f"{path}: unknown table {name!r} (known: {sorted(TABLES)})")
    return m.group(1) + TABLES[name]() + m.group(4)
  return MARKER.sub(one, text)


def stale(paths=None) -> list[str]:
  """Files whose generated tables differ from their raw files (empty: all up to date)."""
  out = []
  for path in paths or DOCS:
    if path.is_file():
      text = path.read_text()
      if render(text, path) != text:
        out.append(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--check", action="store_true", help="only report stale tables")
  args = ap.parse_args(argv)
  if args.check:
    bad = stale()
    for name in bad:
      print(f"stale table(s) in {name}: run python -m benchmarks.tables", file=sys.stderr)
    return 1 if bad else 0
  for path in DOCS:
    if path.is_file():
      text = path.read_text()
      new = render(text, path)
      if new != text:
        path.write_text(new)
        print(f"updated {path.relative_to(ROOT)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
