"""The Colab notebooks run headless (nbclient, a fresh IPython kernel) in their TINY mode:
quickstart (teacher, IDLM, Gen PPL vs steps plot) and published_teacher (conversion of a
random checkpoint in the published layout, sampling, evaluation), offline on a CPU."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


def _execute(name: str, tmp_path, monkeypatch):
  """Run notebooks/<name>.ipynb in TINY mode; returns its text outputs and output types."""
  monkeypatch.setenv("IDLM_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("IDLM_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  # one CPU device in the kernel, XLA's default code generation: the notebooks sample and
  # train more than they compile (the suite's compile-time flags made them ~1.6x slower);
  # the compilation cache: conftest
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()
  texts, kinds = [], set()
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      kinds.update(out.get("data", {}).keys())
      texts.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
  return "\n".join(texts), kinds


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
  text, kinds = _execute("quickstart", tmp_path, monkeypatch)
  assert "TINY=True" in text and "teacher: validation NELBO" in text
  assert "student trained to step 2" in text
  for steps in (4, 16, 64):
    assert f"{steps:5d} steps" in text
  assert "image/png" in kinds  # the Gen PPL vs steps plot
  assert (tmp_path / "work" / "idlm" / "distill_report" / "results.json").is_file()


@pytest.mark.slow
def test_published_teacher(tmp_path, monkeypatch):
  text, _ = _execute("published_teacher", tmp_path, monkeypatch)
  assert '"format": "hf_safetensors"' in text and '"prefix": "backbone."' in text
  assert "8 samples" in text and "Gen PPL" in text
  assert (tmp_path / "work" / "converted" / "checkpoints" / "0").is_dir()
