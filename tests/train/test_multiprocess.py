"""Multi-host training on localhost: two CPU processes joined by jax.distributed.

Each process has 2 fake CPU devices (4 in all), reads its own half of every global batch,
assembles global arrays with `jax.make_array_from_process_local_data`, and both write one
orbax checkpoint together. The processes are then relaunched and must resume from that step
and finish with the same losses as a single-process run on 4 devices.
"""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax import main as cli
from idlm_jax.data import pipeline, tokenizers
from idlm_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_PROCESSES, LOCAL_DEVICES, STEPS, STOP = 2, 2, 12, 6
CONFIG = "configs/demo_teacher.py:smoke"  # the MDLM teacher demo, test size

# One host of the job: join the coordinator named in the JAX_* environment (as idlm_jax.main
# does), train to `until`, and report what it saw as JSON.
WORKER = r"""
import json, logging, os, sys
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
logging.getLogger("idlm_jax").setLevel(logging.INFO)
import jax, jax.numpy as jnp, numpy as np
from idlm_jax import main as cli
jax.distributed.initialize(**cli.distributed_args(None, None, None, os.environ))
jax.config.update("jax_threefry_partitionable", True)
from idlm_jax import config as config_lib
from idlm_jax.train import loop, parallel

workdir, until, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
run = loop.build(config_lib.load_config(config, json.loads(sys.argv[4])), workdir)
latest = run.ckpt.latest_step()
me = jax.process_index()
position = run.train_iter.get_state()  # this host's rows of the first batch, then rewind
first_rows = next(run.train_iter)["input_ids"][:, :4].tolist()
run.train_iter.set_state(position)
# global batch assembly: host p's rows land at [p*G/P, (p+1)*G/P) of the global array
probe = {"host": np.full((run.train_iter.local_batch_size, 1), me, np.int32)}
probe = parallel.to_host(parallel.global_batch(probe, run.mesh))["host"][:, 0]
out = loop.train(run, until=until)
run.close()
total = jax.jit(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(p)),
                out_shardings=parallel.replicated(run.mesh))(run.state.params)
report = {"process": [me, jax.process_count()], "devices": [jax.local_device_count(),
          jax.device_count()], "latest_before": latest, "final_step": out["final_step"],
          "losses": {str(s): float(m["loss"]) for s, m in out["history"]},
          "local_batch": run.train_iter.local_batch_size, "probe": probe.tolist(),
          "first_rows": first_rows,
          "data_state": run.train_iter.get_state(), "param_sum": float(total)}
with open(os.path.join(workdir, "..", f"report{me}.json"), "w") as f:
  json.dump(report, f)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _overrides(tmp_path) -> list:
  return [f"data.cache_dir='{tmp_path / 'cache'}'", "log.tensorboard=False",
          f"train.steps={STEPS}", f"ckpt.every={STOP}"]


def _launch(tmp_path, workdir, until: int, leg: str) -> list:
  """Runs the WORKER on NUM_PROCESSES local processes; returns their JSON reports."""
  port = _free_port()
  procs = []
  for i in range(NUM_PROCESSES):
    # the suite's XLA flags (conftest: optimisation level) with this host's device count.
    # No persistent compilation cache (conftest's, in os.environ): on jax 0.12.1 two CPU
    # processes hang in their first Gloo collective when the step's executable is loaded
    # from that cache, so the resumed leg never finished; 0.10.2 and 0.11.2 are fine.
    # Compiling afresh costs nothing here (the test took 19 s with the cache, 17 s without).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+",
                   f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
                   os.environ["XLA_FLAGS"])
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS=flags,
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=str(NUM_PROCESSES), JAX_PROCESS_ID=str(i),
               JAX_ENABLE_COMPILATION_CACHE="false")
    log = open(tmp_path / f"{leg}_host{i}.log", "w")  # per-host log files, as on a pod
    cmd = [sys.executable, "-c", WORKER, str(workdir), str(until), CONFIG,
           json.dumps(_overrides(tmp_path))]
    procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT), log))
  failed = []
  for i, (p, log) in enumerate(procs):
    try:
      rc = p.wait(timeout=240)
    except subprocess.TimeoutExpired:
      p.kill()
      rc = "timeout"
    log.close()
    if rc != 0:
      failed.append(f"host {i} ({rc}):\n" + (tmp_path / f"{leg}_host{i}.log").read_text()[-3000:])
  if failed:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
    pytest.fail(f"{leg}: " + "\n".join(failed))
  reports = []
  for i in range(NUM_PROCESSES):
    reports.append(json.loads((tmp_path / f"report{i}.json").read_text()))
    (tmp_path / f"report{i}.json").unlink()
  return reports


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path):
  cfg = config_lib.load_config(CONFIG, _overrides(tmp_path))
  # tokenize once here (the hosts then only read the cache) and get one-process batch 0
  train, _ = pipeline.get_datasets(cfg.data, tokenizers.get_tokenizer(cfg.data.tokenizer),
                                   global_batch_size=cfg.train.global_batch_size,
                                   eval_batch_size=cfg.eval.batch_size)
  batch0 = next(train)["input_ids"][:, :4].tolist()
  workdir = tmp_path / "run"
  first = _launch(tmp_path, workdir, until=STOP, leg="first")
  for i, r in enumerate(first):
    assert r["process"] == [i, NUM_PROCESSES]
    assert r["devices"] == [LOCAL_DEVICES, NUM_PROCESSES * LOCAL_DEVICES]
    assert r["latest_before"] is None and r["final_step"] == STOP
    half = cfg.train.global_batch_size // NUM_PROCESSES
    assert r["local_batch"] == half  # the global batch, split per host
    assert r["probe"] == [0] * half + [1] * half  # each host's rows in its slot of the batch
  assert first[0]["param_sum"] == first[1]["param_sum"]
  assert first[0]["first_rows"] + first[1]["first_rows"] == batch0  # each host its own half
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [str(STOP)]

  second = _launch(tmp_path, workdir, until=STEPS, leg="second")
  for r in second:
    assert r["latest_before"] == STOP and r["final_step"] == STEPS  # resumed, then continued
    assert min(map(int, r["losses"])) == STOP + 1
  assert second[0]["losses"] == second[1]["losses"]
  assert second[0]["data_state"] == second[1]["data_state"]
  assert {p.name for p in (workdir / "checkpoints").iterdir()} == {str(STOP), str(STEPS)}

  # only process 0 writes logs: each logged step appears once
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  logged = [json.loads(line)["step"] for line in lines]
  assert logged == [4, 8, 12]

  # the same 12 steps in one process on 4 devices give the same losses and data position
  ref_run = loop.build(cfg, tmp_path / "ref", devices=jax.devices()[:4])
  ref_losses = {str(s): float(m["loss"]) for s, m in loop.train(ref_run)["history"]}
  for step, loss in second[0]["losses"].items():
    np.testing.assert_allclose(loss, ref_losses[step], rtol=1e-4, err_msg=f"step {step}")
  assert second[0]["data_state"] == ref_run.train_iter.get_state()
  ref_run.close()


@pytest.mark.parametrize("flags,env,expected", [
    ((None, None, None), {}, {}),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
                          "JAX_PROCESS_ID": "3"},
     {"coordinator_address": "10.0.0.2:1234", "num_processes": 4, "process_id": 3}),
    (("127.0.0.1:9", 2, 0), {"JAX_PROCESS_ID": "1"},  # flags win over the environment
     {"coordinator_address": "127.0.0.1:9", "num_processes": 2, "process_id": 0}),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1"}, {"coordinator_address": "h:1"}),
])
def test_distributed_args_from_flags_or_environment(flags, env, expected):
  assert cli.distributed_args(*flags, env) == expected


@pytest.mark.parametrize("flags,env,match", [
    ((None, 2, 2), {}, "not in"),
    ((None, None, None), {"JAX_NUM_PROCESSES": "two"}, "not a valid int"),
])
def test_distributed_args_errors(flags, env, match):
  from absl import app
  with pytest.raises(app.UsageError, match=match):
    cli.distributed_args(*flags, env)
