"""Markdown tables and PNG plots (matplotlib, Agg) of `eval_samplers` results."""

import math
import io

from etils import epath


def _fmt(v, spec=".2f"):
  if v is None:
    return "-"
  if isinstance(v, float) and v != v:
    return "nan"
  return format(v, spec) if isinstance(v, (int, float)) else str(v)


def markdown(results: dict) -> str:
  """A Markdown report: the setup, then one row per (sampler, steps)."""
  h, rows = results["header"], results["rows"]
  lines = [f"Checkpoint step {h['step']} ({h['workdir']}), data `{h['data_source']}`, "
           f"tokenizer `{h['tokenizer']}`, L = {h['seq_len']}, {h['num_samples']} samples per "
           f"cell, seed {h['seed']}, sampling precision {h['precision']}, device {h['device']}.",
           f"Gen PPL evaluator: {h['evaluator']}."]
  if "source_entropy_per_token" in h:
    lines.append(f"Synthetic source: HMM {h['hmm']}; exact source entropy "
                 f"{h['source_entropy_per_token']:.4f} nats/token for {h['seq_len'] - 2}-symbol "
                 f"sequences (entropy rate {h['source_entropy_rate']:.4f}). \"exact NLL\" is "
                 "the exact per-token NLL of the samples under the source with resynchronising "
                 "noise 1e-3 (forward algorithm; a source-impossible symbol costs "
                 "log(V K / 1e-3) nats, then the state belief recovers); \"valid samples\" "
                 "have nonzero probability under the noise-free source.")
  lines.append("Values are means over samples with their standard error (± SE: Gen PPL by a "
               "bootstrap over samples); a gap smaller than about two SEs is within noise.")
  if "ngram_floor" in h:
    f = h["ngram_floor"]
    lines.append(f"n-gram metrics against the source's exact marginals; floor of "
                 f"{h['num_samples']} source samples: 4-gram KL {f['ngram_kl_4']['mean']:.4f} "
                 f"± {f['ngram_kl_4']['std']:.4f}, 4-gram TV {f['ngram_tv_4']['mean']:.4f} ± "
                 f"{f['ngram_tv_4']['std']:.4f}.")
  lines.append("")
  cols = [("sampler", "sampler", "s"), ("steps", "steps", "d"), ("NFE", "nfe", ".1f")]
  if any(r.get("temperature", 1.0) != 1.0 for r in rows):
    cols.append(("T", "temperature", ".2f"))
  if any("disc_forwards" in r for r in rows):  # RGAS: discriminator calls, apart from the NFE
    cols += [("disc. forwards", "disc_forwards", ".1f"), ("of which with grad", "disc_grads",
                                                          ".1f")]
  if any("gen_ppl" in r for r in rows):
    cols.append(("Gen PPL", "gen_ppl", ".2f"))
  if any("exact_nll" in r for r in rows):
    cols += [("exact NLL/token", "exact_nll", ".4f"), ("source H/token", "source_entropy", ".4f"),
             ("valid samples", "valid_fraction", ".3f")]
  cols.append(("entropy", "entropy", ".3f"))
  if any("ngram_kl_4" in r for r in rows):
    cols += [("4-gram KL", "ngram_kl_4", ".4f"), ("4-gram TV", "ngram_tv_4", ".4f"),
             ("dup. rate", "dup_rate", ".3f")]
  cols += [("distinct-1", "distinct_1", ".3f"), ("distinct-4", "distinct_4", ".3f"),
           ("s/batch", "latency_s_per_batch", ".3f"), ("tokens/s", "tokens_per_s", ".0f")]
  matched = any(r.get("teacher_at_entropy") for r in rows)
  head = [c[0] for c in cols] + (["teacher at this entropy"] if matched else [])
  lines.append("| " + " | ".join(head) + " |")
  lines.append("|" + "|".join("---" for _ in head) + "|")
  for r in rows:
    cells = [_cell(r, k, f) for _, k, f in cols]
    if matched:
      cells.append(", ".join(f"{_fmt(v)} ({s} steps)" for s, v in
                             (r.get("teacher_at_entropy") or {}).items()) or "-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


SE_KEYS = {"gen_ppl": "gen_ppl_se", "entropy": "entropy_se", "exact_nll": "exact_nll_se"}


def _cell(row, key, spec) -> str:
  """`value ± se` where the row has the metric's standard error."""
  text = _fmt(row.get(key), spec)
  se = row.get(SE_KEYS.get(key, ""))
  if isinstance(se, float) and se == se and row.get(key) is not None:
    text += f" ± {_fmt(se, spec)}"
  return text


def _ok(r, key) -> bool:
  v = r.get(key)
  return isinstance(v, (int, float)) and math.isfinite(v)


def plots(results: dict, out_dir) -> list[str]:
  """quality_vs_nfe.png (Gen PPL or exact NLL vs NFE, entropy annotated) and frontier.png
  (quality vs entropy). Returns the written paths."""
  import matplotlib  # here, not at import: Agg is set only when plots are written
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out_dir = epath.Path(out_dir)  # local or gs://
  rows, h = results["rows"], results["header"]
  key = "gen_ppl" if any("gen_ppl" in r for r in rows) else "exact_nll"
  label = "Gen PPL" if key == "gen_ppl" else "exact source NLL (nats/token)"
  written = []
  data = [r for r in rows if r.get("nfe") is None and _ok(r, key)]  # reference rows: no NFE
  rows = [r for r in rows if r.get("nfe") is not None]
  samplers = sorted({r["sampler"] for r in rows}, key=[r["sampler"] for r in rows].index)

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for r in data:
    ax.axhline(r[key], color="gray", ls=":", lw=1, label=f"{r['sampler']} (H={r['entropy']:.2f})")
  for name in samplers:
    rs = [r for r in rows if r["sampler"] == name and _ok(r, key)]
    ax.plot([r["nfe"] for r in rs], [r[key] for r in rs], "o-", label=name)
    for r in rs:
      ax.annotate(f"H={r['entropy']:.2f}", (r["nfe"], r[key]), fontsize=7,
                  textcoords="offset points", xytext=(3, 4))
  if key == "exact_nll" and "source_entropy_per_token" in h:
    ax.axhline(h["source_entropy_per_token"], color="k", ls="--", lw=1, label="source entropy")
  if any(_ok(r, key) for r in rows):
    ax.set_xscale("log", base=2)
  ax.set_xlabel("NFE per sample")
  ax.set_ylabel(label)
  written.append(_finish(fig, ax, rows, key, label, f"{label} vs NFE (H = unigram entropy)",
                         out_dir / "quality_vs_nfe.png"))

  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name in samplers:  # a temperature sweep: one curve per step count, labelled by T
    rs = [r for r in rows if r["sampler"] == name and _ok(r, key)]
    swept = len({r.get("temperature", 1.0) for r in rs}) > 1
    groups = sorted({r["steps"] for r in rs}, reverse=True) if swept else [None]
    for steps in groups:
      g = sorted((r for r in rs if steps is None or r["steps"] == steps),
                 key=lambda r: r["entropy"] if swept else 0)
      ax.plot([r["entropy"] for r in g], [r[key] for r in g], "o-" if swept else "s--",
              label=f"{name} {steps} steps" if swept else name)
      for r in g:
        text = f"T={r.get('temperature', 1.0):g}" if swept else str(r["steps"])
        ax.annotate(text, (r["entropy"], r[key]), fontsize=7, textcoords="offset points",
                    xytext=(3, 4))
  for r in data:
    ax.plot([r["entropy"]], [r[key]], "k*", ms=10, label=r["sampler"])
  ax.set_xlabel("unigram entropy (nats, per sample)")
  ax.set_ylabel(label)
  written.append(_finish(fig, ax, rows, key, label, f"{label}-entropy frontier (labels: steps, or T of a sweep)",
                         out_dir / "frontier.png"))
  return written


def _finish(fig, ax, rows, key, label, title, path) -> str:
  """Shared axis styling (log scale for Gen PPL), legend, save as PNG, close; the path."""
  import matplotlib.pyplot as plt
  if key == "gen_ppl" and any(_ok(r, key) for r in rows):
    ax.set_yscale("log")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()  # through epath: works for gs:// workdirs too
  fig.savefig(buf, format="png", dpi=110)
  epath.Path(path).write_bytes(buf.getvalue())
  plt.close(fig)
  return str(path)
