"""Workdirs given as URLs (gs://bucket/run): paths stay URLs, and the metric writer (JSONL
with append, samples, TensorBoard events) writes through etils.epath. Offline, epath's
gs:// backend is replaced by a local folder (etils.epath.testing.mock_epath); orbax's array
writes (tensorstore) cannot be redirected that way and are not covered here."""

import contextlib
import json
import os
from unittest import mock

from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing

from idlm_jax.train import checkpoint, metrics


@contextlib.contextmanager
def gs_on_disk(root):
  """Every gs://X path of epath is served by the local file <root>/X."""
  local = lambda p: os.fspath(p).replace("gs://", f"{root}/", 1)
  one = lambda orig, path, *a, **k: orig(local(path), *a, **k)
  two = lambda orig, path, dst, *a, **k: orig(local(path), local(dst), *a, **k)
  names = ("exists", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat")
  # (with TensorFlow installed epath sends gs:// to tf.io.gfile whatever the mock says)
  with mock.patch.object(gpath, "_is_tf_installed", lambda: False), \
      epath_testing.mock_epath(**{n: one for n in names}, rename=two, replace=two, copy=two):
    yield


def test_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
  assert str(checkpoint.as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  assert checkpoint.is_url("gs://bucket/run") and not checkpoint.is_url(tmp_path)
  monkeypatch.chdir(tmp_path)
  assert str(checkpoint.as_path("run")) == str(tmp_path / "run")
  assert str(checkpoint.as_path("~/run")) == os.path.expanduser("~/run")


def test_metric_writer_on_a_gs_workdir(tmp_path):
  with gs_on_disk(tmp_path):
    writer = metrics.MetricWriter("gs://bucket/run", tensorboard=True)
    assert str(writer.workdir) == "gs://bucket/run"
    writer.scalars(1, {"train/loss": 2.5})
    out = writer.texts(1, "samples", ["a b", "c"], extra={"steps": 4})
    assert str(out) == "gs://bucket/run/samples/samples_step1.txt"
    writer.close()
    writer = metrics.MetricWriter("gs://bucket/run", tensorboard=False)  # a resumed run appends
    writer.scalars(2, {"train/loss": 2.0})
    writer.close()
    assert epath.Path("gs://bucket/run/samples/samples_step1.jsonl").exists()
  run = tmp_path / "bucket" / "run"
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 2.5), (2, 2.0)]
  assert (run / "samples" / "samples_step1.txt").read_text().startswith("a b\n")
  events = list((run / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1 and b"train/loss" in events[0].read_bytes()
