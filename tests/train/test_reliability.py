"""Reliability of a run (issue #19, docs/reliability.md): one job per workdir, resume past a
damaged checkpoint, a clear error for a changed model, SIGTERM/SIGINT saving the step,
prompt failure of a save, metrics.jsonl without duplicate steps after a resume, evaluation
modes that keep the training record, and validation before any work.

Each failure is reproduced on `configs/demo_teacher.py:smoke` (12 steps, checkpoints at 6
and 12); the subprocess tests run the real CLI."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from idlm_jax import config as config_lib
from idlm_jax import main
from idlm_jax.fields import ConfigError
from idlm_jax.train import checkpoint, loop, metrics, workdir_lock
from tests.train.test_workdir_urls import gs_on_disk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = "configs/demo_teacher.py:smoke"


def _config(cache, *overrides):
  return config_lib.load_config(SMOKE, [f"data.cache_dir='{cache}'", "ckpt.async_save=False",
                                        "log.tensorboard=False", *overrides])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
  """A finished 12-step smoke run with checkpoints at steps 6 and 12."""
  work = tmp_path_factory.mktemp("trained")
  run = loop.build(_config(cache), work)
  loop.train(run)
  run.close()
  assert run.ckpt.all_steps() == [6, 12]
  return work


def _copy(trained, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(trained, work)
  return work


def _steps(workdir, name="metrics.jsonl"):
  return [json.loads(line)["step"] for line in (workdir / name).read_text().splitlines()]


def _pairs(workdir):
  """(step, metric) of every value in metrics.jsonl."""
  return [(r["step"], k) for r in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                       .splitlines()) for k in r if k not in ("step", "time")]


def _cli(workdir, *overrides, cache=None, **kw):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = os.environ["IDLM_JAX_TEST_XLA_FLAGS_1"]  # one device, as a user's run
  args = [sys.executable, "-m", "idlm_jax.main", f"--config={SMOKE}", f"--workdir={workdir}",
          "--config.log.tensorboard=False", *[f"--config.{o}" for o in overrides]]
  if cache is not None:
    args.append(f"--config.data.cache_dir={cache}")
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


# ------------------------------------------------------------------ 1. the workdir lock


HOLDER = ("import sys, time\nfrom idlm_jax.train import workdir_lock\n"
          "workdir_lock.WorkdirLock(sys.argv[1]).acquire()\nprint('held', flush=True)\n"
          "time.sleep(120)\n")


def test_a_second_process_on_a_workdir_stops_naming_the_first(tmp_path, cache):
  work = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=rf"workdir {work} is in use by pid {holder.pid} on .*wait for it"):
      main.run(_config(cache), work)
    assert not (work / "checkpoints").exists()  # stopped before any work
  finally:
    holder.kill()  # SIGKILL: the kernel drops its flock, its record stays in the file
    holder.wait()
    holder.stdout.close()
  lock = workdir_lock.WorkdirLock(work)
  with _capture() as text:
    lock.acquire()  # a crashed holder's lock is stale: taken over, with a warning
  assert f"previous run (pid {holder.pid}" in text() and "ended without releasing" in text()
  assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  lock.release()
  assert lock.path.read_text() == ""  # released cleanly: empty
  with workdir_lock.hold(work):  # in one process too: a second holder is refused
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {os.getpid()}"):
      workdir_lock.WorkdirLock(work).acquire()


def test_stale_lock_records_on_object_stores(tmp_path):
  """The pid/host rule of workdirs without flock (gs://): a dead pid or a reused one is stale,
  a live one busy, another host's unknown."""
  dead = subprocess.Popen(["true"])
  dead.wait()
  me = workdir_lock.owner_record()
  assert workdir_lock.is_alive(me) is True
  assert workdir_lock.is_alive({**me, "pid": dead.pid}) is False
  if me["start_ticks"] is not None:  # a reused pid: same number, a later start time
    assert workdir_lock.is_alive({**me, "start_ticks": me["start_ticks"] - 1}) is False
  assert workdir_lock.is_alive({**me, "host": "another-host"}) is None


def test_lock_and_metrics_truncation_on_an_object_store(tmp_path):
  """gs:// workdirs (served from a local folder): the pid/host lock file, and metrics.jsonl
  truncated at a resume through the whole-file writer object stores need."""
  dead = subprocess.Popen(["true"])
  dead.wait()
  with gs_on_disk(tmp_path):
    lock = workdir_lock.WorkdirLock("gs://bucket/run")
    lock.acquire()
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {os.getpid()} on "):
      workdir_lock.WorkdirLock("gs://bucket/run").acquire()
    lock.release()
    assert not lock.path.exists()
    record = {**workdir_lock.owner_record(), "pid": dead.pid}
    lock.path.write_text(json.dumps(record))
    lock.acquire()  # a dead process's record on this host: stale, taken over
    lock.release()
    lock.path.write_text(json.dumps({**record, "host": "another-host"}))
    with pytest.raises(workdir_lock.WorkdirBusyError, match=r"if it is gone, remove gs://"):
      lock.acquire()
    writer = metrics.MetricWriter("gs://bucket/run", tensorboard=False)
    for step in (1, 2, 3):
      writer.scalars(step, {"train/loss": float(step)})
    assert writer.truncate_after(1) == 2
    writer.scalars(2, {"train/loss": 5.0})
    writer.close()
  assert _steps(tmp_path / "bucket" / "run") == [1, 2]


# ------------------------------------------------------------------ 2. fallback past damage


def _truncate_arrays(step_dir):
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and "ocdbt.process_0/d" in str(f):
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def _zero_files(step_dir):
  for f in step_dir.rglob("*"):
    if f.is_file():
      f.write_bytes(bytes(f.stat().st_size))


def _truncate_json(step_dir):
  for f in step_dir.rglob("*"):
    if f.is_file() and f.name in ("_METADATA", "metadata"):
      f.write_bytes(f.read_bytes()[:40])


CORRUPTIONS = {"truncated_arrays": _truncate_arrays, "zeroed_files": _zero_files,
               "truncated_metadata": _truncate_json,
               "deleted_state": lambda d: shutil.rmtree(d / "state")}


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_resume_skips_a_damaged_newest_checkpoint(trained, tmp_path, cache, damage, caplog):
  work = _copy(trained, tmp_path)
  CORRUPTIONS[damage](work / "checkpoints" / "12")
  run = loop.build(_config(cache), work)
  with caplog.at_level(logging.WARNING, logger="idlm_jax"):
    assert loop.restore_latest(run) == 6
  text = caplog.text
  assert f"checkpoint step 12 at {work / 'checkpoints' / '12'} does not restore (" in text
  assert "resuming from step 6 instead of the unreadable newer checkpoint(s) 12" in text
  skipped = list((work / checkpoint.SKIPPED_DIR).iterdir())
  assert [p.name.split("-")[:2] for p in skipped] == [["checkpoints", "12"]]
  assert run.ckpt.all_steps() == [6]
  if damage == "truncated_arrays":  # the run goes on and writes step 12 again, readable
    out = loop.train(run)
    assert out["final_step"] == 12 and run.ckpt.all_steps() == [6, 12]
    again = loop.build(_config(cache), work)
    assert loop.restore_latest(again) == 12
    again.close()
  run.close()


def test_no_readable_checkpoint_names_each_cause(trained, tmp_path, cache):
  work = _copy(trained, tmp_path)
  _zero_files(work / "checkpoints" / "12")
  shutil.rmtree(work / "checkpoints" / "6" / "state")
  run = loop.build(_config(cache), work)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"no checkpoint in .*checkpoints restores \(step 12: .*; step 6: "
                           r"FileNotFoundError: .*\); move that folder away"):
    loop.restore_latest(run)
  run.close()


# ------------------------------------------------------------------ 5. a changed model


def test_resume_with_a_changed_model_names_step_path_and_fields(trained, cache):
  run = loop.build(_config(cache, "model.hidden_size=64", "model.cond_dim=16"), trained)
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    loop.restore_latest(run)
  message = str(e.value)
  assert f"checkpoint step 12 at {trained / 'checkpoints' / '12'} holds a different model" \
      in message
  assert "model.cond_dim: 32 in the checkpoint, 16 now" in message
  assert "model.hidden_size: 32 in the checkpoint, 64 now" in message
  assert "\n" not in message and isinstance(e.value, ConfigError)  # one line, exit status 2
  run.close()


# ------------------------------------------------------------------ 4. SIGTERM / SIGINT


class _Signal:
  """A hook sending a real signal to this process after step `at`."""

  def __init__(self, at, signum):
    self.at, self.signum = at, signum

  def due(self, step, last):
    return step == self.at

  def __call__(self, run, step):
    os.kill(os.getpid(), self.signum)


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_saves_and_resume_continues(tmp_path, cache, signum, caplog):
  before = signal.getsignal(signum)
  cfg = _config(cache, "ckpt.every=100", "train.steps=8")
  run = loop.build(cfg, tmp_path / "run")
  with caplog.at_level(logging.WARNING, logger="idlm_jax"):
    out = loop.train(run, hooks=[_Signal(3, signum)])
  name = signal.Signals(signum).name
  # the signal arrives during step 3's hooks: step 4 finishes, is saved, and the loop returns
  assert out["stopped_by"] == name and out["preempted_at"] == 4
  assert f"{name}: stopped after step 4, saved its checkpoint to" in caplog.text
  assert run.ckpt.all_steps() == [4]
  assert signal.getsignal(signum) is before  # handlers restored
  run.close()
  resumed = loop.build(cfg, tmp_path / "run")
  assert loop.train(resumed)["final_step"] == 8
  resumed.close()
  assert resumed.ckpt.latest_step() == 8
  assert _steps(tmp_path / "run") == [4, 8]


@pytest.mark.slow
def test_cli_second_job_refused_sigterm_saves_and_resume_continues(tmp_path, cache):
  """Real processes: a long run; a second job on its workdir exits at once naming it; SIGTERM
  saves the step being trained and exits 143; the same command resumes from that step."""
  work = tmp_path / "run"
  first = _cli(work, "train.steps=100000", "ckpt.every=100000", "train.log_every=1",
               cache=cache)
  try:
    for _ in range(600):
      time.sleep(0.2)
      if (work / "metrics.jsonl").exists() and len(_steps(work)) >= 3:
        break
    second = _cli(work, cache=cache)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert err.strip().splitlines()[-1].startswith(
        f"error: workdir {work} is in use by pid {first.pid} on ")
    first.send_signal(signal.SIGTERM)
    t0 = time.time()
    _, err = first.communicate(timeout=120)
    stop_seconds = time.time() - t0
  finally:
    first.kill()
  assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
  stopped = int(err.split("SIGTERM: stopped after step ")[1].split(",")[0])
  assert (work / "checkpoints" / str(stopped) / "commit_success.txt").exists()
  assert stop_seconds < 60
  resume = _cli(work, f"train.steps={stopped + 2}", "train.log_every=1", cache=cache)
  _, err = resume.communicate(timeout=300)
  assert resume.returncode == 0, err[-2000:]
  assert f"at step {stopped} (saved" in err
  pairs = _pairs(work)
  assert len(pairs) == len(set(pairs))  # every (step, metric) once
  assert sorted({s for s, k in pairs if k == "train/loss"}) == list(range(1, stopped + 3))


@pytest.mark.slow
def test_kill_9_during_saves_leaves_only_finished_checkpoints(tmp_path, cache):
  """Atomic checkpoints: a process killed (SIGKILL, no handler runs) while it saves every step
  asynchronously leaves at most an unfinished temporary folder, which resume ignores: the
  newest finished step restores without any fallback, and training continues from it."""
  work = tmp_path / "run"
  proc = _cli(work, "train.steps=100000", "ckpt.every=1", "ckpt.keep=3",
              "ckpt.async_save=True", cache=cache)
  try:
    for _ in range(900):
      time.sleep(0.2)
      if (work / "checkpoints").is_dir() and len(os.listdir(work / "checkpoints")) >= 3:
        break
    time.sleep(0.7)  # mid-training: with a save every step, most instants are inside one
  finally:
    proc.kill()
    proc.communicate()
  finished = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert finished, os.listdir(work / "checkpoints")
  resume = _cli(work, f"train.steps={finished[-1] + 1}", cache=cache)
  _, err = resume.communicate(timeout=300)
  assert resume.returncode == 0, err[-2000:]
  assert f"at step {finished[-1]} (saved" in err and "does not restore" not in err
  assert "ended without releasing its lock" in err  # the killed run's lock: taken over


# ------------------------------------------------------------------ 3. a failed save


def _make_unwritable(path):
  """chmod for a user; chattr +i for root (who ignores permissions), else skip."""
  if os.geteuid() != 0:
    path.chmod(0o555)
    return lambda: path.chmod(0o755)
  if shutil.which("chattr") is None or subprocess.run(
      ["chattr", "+i", str(path)], capture_output=True).returncode:
    pytest.skip("root without chattr +i on this filesystem: cannot make a folder unwritable")
  return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.slow
def test_a_failed_save_ends_the_run_promptly_with_path_and_cause(tmp_path, cache):
  work = tmp_path / "run"
  (work / "checkpoints").mkdir(parents=True)
  undo = _make_unwritable(work / "checkpoints")
  try:
    t0 = time.time()
    proc = _cli(work, "ckpt.async_save=True", cache=cache)
    _, err = proc.communicate(timeout=250)
    seconds = time.time() - t0
  finally:
    undo()
  assert proc.returncode == 1, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"error: saving a checkpoint to {work / 'checkpoints'} failed (step ")
  assert "Error" in last  # the cause (PermissionError / OSError) with its path
  # orbax alone waited out a 300 s barrier ("Timeout waiting for key ...") before exiting
  assert "Timeout waiting" not in err and seconds < 240


# ------------------------------------------------------------------ 8. metrics.jsonl dedup


def test_metrics_have_no_duplicate_steps_after_resume(trained, tmp_path, cache):
  work = _copy(trained, tmp_path)
  assert _steps(work) == [4, 8, 12]
  shutil.rmtree(work / "checkpoints" / "12")  # killed after logging step 12, before saving it
  with (work / "metrics.jsonl").open("a") as f:
    f.write('{"step": 13, "train/lo')  # and cut in the middle of a line
  run = loop.build(_config(cache), work)
  out = loop.train(run)
  run.close()
  assert out["final_step"] == 12
  assert _steps(work) == [4, 8, 12]  # 8 and 12 written once, by the resumed run
  # a finished run evaluated again at its checkpoint step writes no second line for a metric
  writer = metrics.MetricWriter(work, tensorboard=False)
  assert writer.truncate_after(12) == 0
  writer.scalars(12, {"train/loss": 1.0})
  writer.scalars(12, {"val/nelbo": 2.0})
  writer.scalars(12, {"val/nelbo": 3.0})
  writer.close()
  lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  assert [sorted(k for k in r if "/" in k) for r in lines if r["step"] == 12] == \
      [["train/grad_norm", "train/loss", "train/tokens"], ["val/nelbo"]]


def test_log_files_open_at_the_first_record(tmp_path):
  """A writer that logs nothing leaves no event file and no metrics.jsonl (a Run built to be
  inspected or evaluated holds no open file), and one left unclosed exits cleanly
  (tensorboardX's exit hook raised "can't create new thread at interpreter shutdown" on
  Python 3.12 for a writer that never logged: the benchmarks' runs)."""
  code = ("import sys; from idlm_jax.train import metrics; "
          "w = metrics.MetricWriter(sys.argv[1]); sys.argv[2] == '1' and w.scalars(1, {'a': 1.0})")
  for logs in ("0", "1"):
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / logs), logs], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Exception ignored" not in out.stderr, out.stderr
    events = list((tmp_path / logs).glob("tensorboard/events.out.tfevents.*"))
    assert len(events) == int(logs)
    assert (tmp_path / logs / "metrics.jsonl").exists() == (logs == "1")
  # closed, then logging again: the file is opened again and appended to
  writer = metrics.MetricWriter(tmp_path / "again", tensorboard=False)
  writer.scalars(1, {"a": 1.0})
  writer.close()
  writer.scalars(2, {"a": 2.0})
  writer.close()
  assert _steps(tmp_path / "again") == [1, 2]


# ------------------------------------------------------------------ 7. evaluation modes


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_eval_and_sample_modes_keep_the_training_record(trained, tmp_path, cache):
  work = _copy(trained, tmp_path)
  record = {"results.json": '{"step": 12, "val_nelbo": 1.0}\n', "config.json": "{}\n"}
  for name, text in record.items():
    (work / name).write_text(text)
  train_metrics = (work / "metrics.jsonl").read_text()
  main.run(_config(cache, "mode='eval'"), work)
  main.run(_config(cache, "mode='sample'"), work)
  for name, text in record.items():
    assert (work / name).read_text() == text, name
  assert (work / "metrics.jsonl").read_text() == train_metrics
  assert json.loads((work / "results_eval.json").read_text())["step"] == 12
  assert json.loads((work / "results_sample.json").read_text())["num_samples"] == 8
  assert json.loads((work / "config_eval.json").read_text())["mode"] == "eval"
  assert _steps(work, "metrics_eval.jsonl") == [12]


# ------------------------------------------------------------------ 6. validation


def test_seq_len_beyond_the_models_positions_is_rejected_before_any_work():
  """At validation (load_config validates), before tokenizing or creating the workdir."""
  with pytest.raises(ConfigError, match=r"config.data.seq_len: 4096 exceeds the gpt2 model's "
                                        r"model.n_positions=32 \(learned position"):
    config_lib.load_config("configs/ar_embedded.py:smoke", ["data.seq_len=4096"])
  config_lib.load_config("configs/ar_embedded.py:smoke", ["data.seq_len=32"])  # the limit


def test_unreadable_tokenizer_file_names_the_file_and_the_field(tmp_path, cache):
  bad = tmp_path / "tokenizer.json"
  bad.write_text('{"versio')
  with pytest.raises(ConfigError, match=rf"config.data.tokenizer='{bad}': {bad} is not a "
                                        r"readable tokenizer.json \(EOF while parsing"):
    loop.build(_config(cache, f"data.tokenizer='{bad}'"), tmp_path / "run")


# ------------------------------------------------------------------ helpers


class _capture:
  """Capture the idlm_jax logger's records (the lock warns through it)."""

  def __enter__(self):
    self.records = []
    self.handler = logging.Handler()
    self.handler.emit = lambda r: self.records.append(r.getMessage())
    self.logger = logging.getLogger("idlm_jax")
    self.logger.addHandler(self.handler)
    self.level = self.logger.level
    self.logger.setLevel(logging.INFO)
    return lambda: "\n".join(self.records)

  def __exit__(self, *exc):
    self.logger.removeHandler(self.handler)
    self.logger.setLevel(self.level)
