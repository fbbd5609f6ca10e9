"""One quality-entropy frontier figure from several committed results files (e.g. a teacher's
temperature sweep and the students of several training seeds), drawn by the reports' own
plotting code (evals/report.plots: one curve per teacher step count over the sweep, labelled
by T; one point per student row, labelled by its steps).

  python -m benchmarks.plot_frontier benchmarks/results/demo_frontier.png \
      demo_teacher_frontier.json:teacher demo_teacher_frontier_low.json:teacher \
      demo_genppl.json:"seed 0":idlm ...

Each source is FILE[:LABEL[:PREFIX]] (FILE under benchmarks/results unless a path): the rows
whose sampler starts with PREFIX (default: every sampled row), renamed "LABEL" (default: their
own sampler name); the held-out data row of the first file that has one is kept as the
reference star.
"""

import json
import pathlib
import shutil
import sys
import tempfile

from idlm_jax.evals import report

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def merged(sources) -> dict:
  """{"header", "rows"} of the sources' selected rows (see the module docstring)."""
  rows, header, data = [], None, None
  for spec in sources:
    name, label, prefix = (spec.split(":") + [None, None])[:3]
    path = pathlib.Path(name) if pathlib.Path(name).exists() else RESULTS / name
    d = json.loads(path.read_text())
    header = header or d.get("header", {})
    for r in d["rows"]:
      if r.get("nfe") is None:
        data = data or r
      elif prefix is None or r["sampler"].startswith(prefix):
        rows.append(dict(r, sampler=label or r["sampler"]))
  return {"header": header, "rows": ([data] if data else []) + rows}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) < 2:
    print(__doc__)
    return 2
  out = pathlib.Path(argv[0])
  with tempfile.TemporaryDirectory() as tmp:
    report.plots(merged(argv[1:]), tmp)
    shutil.copy(pathlib.Path(tmp) / "frontier.png", out)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
