"""The docs' results tables are generated from the committed raw files (benchmarks/tables.py):
a table that no longer matches its raw file, or names an unknown table, fails here."""

from benchmarks import tables


def test_every_docs_table_matches_its_raw_file():
  assert not tables.stale(), "stale tables: run python -m benchmarks.tables"


def test_every_table_marker_names_a_known_table_and_is_used():
  used = set()
  for path in tables.DOCS:
    if path.is_file():
      used |= {m.group("name") for m in tables.MARKER.finditer(path.read_text())}
  assert used <= set(tables.TABLES)
  assert set(tables.TABLES) <= used, f"tables never shown: {set(tables.TABLES) - used}"


def test_an_edited_number_in_a_table_is_stale(tmp_path):
  doc = tmp_path / "doc.md"
  doc.write_text("<!-- table: idlm_synthetic -->\n<!-- /table -->\n")
  rendered = tables.render(doc.read_text(), doc)
  doc.write_text(rendered)
  assert tables.stale([doc]) == []
  assert "0.979 ± 0.019" in rendered  # the student at 16 steps, exact NLL ± SE
  doc.write_text(rendered.replace("0.979 ± 0.019", "0.969 ± 0.019"))
  assert tables.stale([doc]) == [str(doc)]


def test_plot_frontier_merges_sources(tmp_path):
  """The frontier figure's rows: the first data row as the reference, then each source's sampled
  rows (filtered by prefix, renamed by label); the PNG is written."""
  from benchmarks import plot_frontier
  d = plot_frontier.merged(["demo_teacher_frontier_low.json:teacher",
                            "demo_genppl.json:seed 0:idlm"])
  assert d["rows"][0]["nfe"] is None and d["rows"][0]["sampler"].startswith("data")
  names = [r["sampler"] for r in d["rows"][1:]]
  assert names == ["teacher"] * 12 + ["seed 0"] * 3
  assert [r["steps"] for r in d["rows"][-3:]] == [16, 8, 4]
  assert plot_frontier.main([str(tmp_path / "f.png"), "demo_teacher_frontier_low.json"]) == 0
  assert (tmp_path / "f.png").stat().st_size > 1000
