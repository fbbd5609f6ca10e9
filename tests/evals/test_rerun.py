"""A finished workdir answers at once: the same command prints the stored final table without
building a run (no data, no model, no evaluator); another config or eval.recompute=True
runs again."""

import contextlib
import io
import json

import jax
import pytest

from idlm_jax import config as config_lib
from idlm_jax import main
from idlm_jax.evals import modes
from idlm_jax.train import loop

COMMON = ["ckpt.async_save=False", "log.tensorboard=False", "train.steps=2", "ckpt.every=2",
          "data.max_train_docs=200", "data.max_val_rows=8", "sample.num_samples=8",
          "sample.batch_size=8", "sample.steps=2"]


class Built(Exception):
  """Raised by the patched loop.build: the rerun built a run."""


def _cfg(tmp_path, *extra):
  return config_lib.load_config("configs/demo_teacher.py:smoke",
                                [f"data.cache_dir='{tmp_path / 'cache'}'", *COMMON, *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(tmp folder, workdir, what it printed) of a finished 2-step smoke teacher run."""
  tmp = tmp_path_factory.mktemp("rerun")
  work = tmp / "run"
  with contextlib.redirect_stdout(io.StringIO()) as out:  # (capsys is function-scoped)
    main.run(_cfg(tmp), work, devices=jax.devices()[:1])
  return tmp, work, out.getvalue()


def _no_build(monkeypatch):
  def build(*args, **kwargs):
    raise Built()
  monkeypatch.setattr(loop, "build", build)


def test_same_command_prints_the_stored_table_without_building(finished, monkeypatch, capsys):
  tmp, work, table = finished
  summary = json.loads((work / "results.json").read_text())
  assert summary["step"] == 2 and summary["val_nelbo"] > 0 and summary["num_samples"] == 8
  assert f"| NELBO on the embedded validation split, a bound on the NLL (nats/token) | " \
         f"{summary['val_nelbo']:.4f} |" in table
  _no_build(monkeypatch)  # nothing is built: no data, model, checkpoint or evaluator
  again = main.run(_cfg(tmp), work, devices=jax.devices()[:1])
  assert isinstance(again, modes.StoredRun) and again.results["stored"] == summary
  assert capsys.readouterr().out == table  # what the finished run printed last
  assert main.stopped_by(again) == ""


def test_another_config_or_recompute_runs_again(finished, monkeypatch, caplog):
  tmp, work, _ = finished
  _no_build(monkeypatch)
  with caplog.at_level("INFO", logger="idlm_jax"), pytest.raises(Built):
    main.run(_cfg(tmp, "sample.steps=4"), work, devices=jax.devices()[:1])
  assert "written by another config (sample.steps: 2 then, 4 now)" in caplog.text
  with pytest.raises(Built):
    main.run(_cfg(tmp, "eval.recompute=True"), work, devices=jax.devices()[:1])
  with pytest.raises(Built):  # more steps: the run resumes training
    main.run(_cfg(tmp, "train.steps=3"), work, devices=jax.devices()[:1])


def test_an_unfinished_or_older_summary_is_not_taken_as_final(tmp_path):
  cfg = _cfg(tmp_path)
  assert modes.stored_summary(cfg, tmp_path) is None  # none written
  record = {"step": 2, "config": json.loads(cfg.to_json_best_effort())}
  (tmp_path / "results.json").write_text(json.dumps(record))
  assert modes.stored_summary(cfg, tmp_path) == record
  (tmp_path / "results.json").write_text(json.dumps({**record, "step": 1}))  # max_minutes stop
  assert modes.stored_summary(cfg, tmp_path) is None
  (tmp_path / "results.json").write_text(json.dumps({"step": 2}))  # before summaries held one
  assert modes.stored_summary(cfg, tmp_path) is None
  (tmp_path / "results.json").write_text("{")
  assert modes.stored_summary(cfg, tmp_path) is None
