"""CLI: python -m idlm_jax.main --config=configs/demo.py[:variant] --workdir=/tmp/demo [--config.x=y].

Dispatches config.mode (evals/modes.py): trains (train), or evaluates / samples the latest
checkpoint in the workdir (eval, sample, eval_samplers). Running it again on the same workdir
resumes, or, once training finished, prints the stored final table
(--config.eval.recompute=True evaluates again). `run(config, workdir)` is the same,
importable (Colab, tests).

A shipped, exported or converted model is scored without a training workdir:
  --config=configs/demo_teacher.py --config.mode=eval --config.eval.model=demo
  [--config.eval.zero_shot_path=my.txt] [--workdir=DIR for the results, else a temporary one]

Multi-host: `--distributed` calls `jax.distributed.initialize()` with auto-detection (Cloud
TPU pods, SLURM, Open MPI, GKE). Elsewhere (several GPU hosts, or processes on one machine)
give the coordinator explicitly, by flag or environment variable, on every process:
  --coordinator_address=10.0.0.2:8476 (JAX_COORDINATOR_ADDRESS) --num_processes=2
  (JAX_NUM_PROCESSES) --process_id=0 (JAX_PROCESS_ID); any of them implies --distributed.

User errors (a bad config field or value, missing data or checkpoint, an unreadable
checkpoint) print one line and exit with status 2; `--verbose` (or IDLM_VERBOSE=1) shows the
traceback. `--help` lists the shipped configs with their variants.
"""

import logging as py_logging
import os
import signal
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import objectives  # noqa: E402
from idlm_jax.data.sources import DataNotFoundError  # noqa: E402
from idlm_jax.evals import genppl, modes  # noqa: E402
from idlm_jax.fields import ConfigError  # noqa: E402
from idlm_jax.models.readers import ConversionError  # noqa: E402
from idlm_jax.train import checkpoint, workdir_lock  # noqa: E402

log = py_logging.getLogger("idlm_jax")
# errors that are the user's input, not a bug: one line, no traceback (unless --verbose)
USER_ERRORS = (ConfigError, ConversionError, DataNotFoundError, FileNotFoundError,
               workdir_lock.WorkdirBusyError, checkpoint.CheckpointError)

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file, e.g. configs/demo.py[:variant]; fields are "
                    "overridden with --config.section.field=value.")
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, logs, samples); optional "
                    "with --config.eval.model (results only).")
flags.DEFINE_bool("verbose", False, "Show tracebacks for user errors (also IDLM_VERBOSE=1).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host pods).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0's coordinator (default: $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Number of processes (default: $JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's index (default: $JAX_PROCESS_ID).")

OVERRIDES: list = []  # the --config.a.b=value arguments (split off before absl parses argv)


def split_overrides(argv: list) -> tuple[list, list]:
  """(argv without the --config.x=y arguments, ["x=y", ...]); "--config.x y" works too."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, sep, value = arg[len("--config."):].partition("=")
      if not sep:
        if i + 1 >= len(argv):
          raise ConfigError(f"--config.{key}: no value given")
        value, i = argv[i + 1], i + 1
      overrides.append(f"{key}={value}")
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.config:
    print("error: --config is required (--help lists the configs)", file=sys.stderr)
    sys.exit(2)
  _setup_logging()
  dist = distributed_args(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                          os.environ)
  if FLAGS.distributed or dist:
    jax.distributed.initialize(**dist)  # before any other JAX call
  jax.config.update("jax_threefry_partitionable", True)
  verbose = FLAGS.verbose or os.environ.get("IDLM_VERBOSE", "") not in ("", "0")
  try:
    config = config_lib.load_config(FLAGS.config, OVERRIDES)  # fails naming the bad field
    result = run(config, output_dir(config, FLAGS.workdir))
  except checkpoint.CheckpointSaveError as e:
    # orbax's background save threads would wait out their 300 s barrier before the process
    # could exit: a failed save ends the process now, with the path and the cause
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
  except USER_ERRORS as e:
    if verbose:
      raise
    print(f"error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)
  stopped = stopped_by(result)
  if stopped:  # SIGTERM / SIGINT: checkpoint saved; exit as a signalled process would
    sys.exit(128 + int(getattr(signal.Signals, stopped)))


def output_dir(config, workdir):
  """--workdir, or with eval.model (nothing to resume, only results to write) a new
  temporary folder, announced; ConfigError when a mode needs a workdir and none is given."""
  if workdir:
    return workdir
  if not config.eval.model:
    raise ConfigError("--workdir is required (or score a shipped or converted model with "
                      "--config.mode=eval --config.eval.model=...; --help lists the configs)")
  out = tempfile.mkdtemp(prefix=f"idlm_{config.mode}_")
  print(f"results go to {out} (pass --workdir to choose the folder)", flush=True)
  return out


def stopped_by(run_result) -> str:
  """The signal name ("SIGTERM") if the run stopped on a signal (checkpoint saved), else ""."""
  train = getattr(run_result, "results", {}).get("train", {})
  return train.get("stopped_by", "") if isinstance(train, dict) else ""


def one_line(error: BaseException) -> str:
  """The message of a user error on one line (continuation lines joined by '; ')."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return "; ".join(lines) if lines else type(error).__name__


def usage() -> str:
  """--help: the flags, then every shipped config with its variants and first doc line."""
  lines = [__doc__.strip(), "", "Flags:",
           "  --config=FILE[:VARIANT]   a config file (below); --config.section.field=value "
           "overrides a field",
           "  --workdir=DIR             output directory (local path or gs:// URL); optional "
           "with --config.eval.model",
           "  --distributed, --coordinator_address, --num_processes, --process_id: multi-host",
           "  --verbose                 tracebacks for user errors", "", "Configs:"]
  for path, variants, doc in config_lib.shipped_configs():
    lines.append(f"  {path}  [{', '.join(variants)}]")
    lines.append(f"      {doc}")
  return "\n".join(lines)


def run(config, workdir, devices=None):
  """Validate `config`, then run its mode on `workdir` (a `loop.Run` with its results).

  distill.teacher = "scratch:<config spec>" first trains that teacher into <workdir>/teacher
  (resuming it if interrupted) and distils it. The workdir is locked for the whole run
  (train/workdir_lock.py): a second job on it stops at once, naming the first. With
  eval.model the workdir only receives results: it is not locked and holds no checkpoints."""
  config_lib.validate(config)
  if config.mode == "eval_samplers" or (config.mode == "train" and
                                        objectives.get(config.objective).teacher):
    genppl.preflight(config)  # before training a teacher or loading data
  log.info("JAX %s, %d devices (%s), process %d/%d", jax.__version__, jax.device_count(),
           jax.devices()[0].platform, jax.process_index(), jax.process_count())
  if config.eval.model:  # a model outside the workdir (train/teacher.py): results only
    return modes.MODES[config.mode](config, workdir, devices)
  with workdir_lock.hold(workdir):
    if objectives.get(config.objective).teacher and \
        config.distill.teacher.startswith("scratch:"):
      config, stopped = teacher_from_scratch(config, workdir, devices)
      if stopped is not None:
        return stopped
    return modes.MODES[config.mode](config, workdir, devices)


def teacher_from_scratch(config, workdir, devices=None):
  """Train the teacher config named by distill.teacher="scratch:<spec>" into
  <workdir>/teacher (unless finished); returns (the config pointing at it, None), or
  (None, the teacher's run) when a signal stopped its training."""
  spec = config.distill.teacher[len("scratch:"):]
  teacher_dir = checkpoint.as_path(workdir) / "teacher"
  if not (teacher_dir / "results.json").is_file():  # written when the teacher run finished
    log.info("distill.teacher: training the teacher %s into %s first", spec, teacher_dir)
    teacher = run(config_lib.load_config(spec, [f"data.cache_dir={config.data.cache_dir}"]),
                  teacher_dir, devices)
    if stopped_by(teacher):
      return None, teacher  # stopped by a signal: the teacher resumes on the next run
  config = ml_collections.ConfigDict(config.to_dict())
  config.distill.teacher = str(teacher_dir)
  return config, None


def distributed_args(coordinator_address, num_processes, process_id, environ) -> dict:
  """Keyword arguments for `jax.distributed.initialize` from flags, else the environment.

  Returns only what is given: {} means full auto-detection (Cloud TPU, SLURM, ...) under
  `--distributed`; jax detects whatever is left out, or says what it cannot detect.
  """
  def pick(value, name, kind):
    if value is not None:
      return value
    raw = environ.get(name, "").strip()
    if not raw:
      return None
    try:
      return kind(raw)
    except ValueError:
      raise app.UsageError(f"${name}={raw!r} is not a valid {kind.__name__}") from None

  out = {"coordinator_address": pick(coordinator_address, "JAX_COORDINATOR_ADDRESS", str),
         "num_processes": pick(num_processes, "JAX_NUM_PROCESSES", int),
         "process_id": pick(process_id, "JAX_PROCESS_ID", int)}
  given = {k: v for k, v in out.items() if v is not None}
  if None not in (out["num_processes"], out["process_id"]) and not (
      0 <= out["process_id"] < out["num_processes"]):
    raise app.UsageError(f"process_id={out['process_id']} is not in "
                         f"[0, num_processes={out['num_processes']})")
  return given


def _setup_logging():
  """idlm_jax progress to stderr at INFO; other libraries (orbax, absl) at WARNING unless
  --verbosity is given."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  handler = py_logging.StreamHandler(sys.stderr)
  handler.setFormatter(py_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log.setLevel(py_logging.INFO)
  log.addHandler(handler)
  log.propagate = False


def cli(argv=None) -> None:
  """The entry point: --help, the --config.* overrides, then absl's flags and `main`."""
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("--help", "-h", "--helpfull", "-?") for a in argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    argv, OVERRIDES[:] = split_overrides(argv)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)


if __name__ == "__main__":
  cli()
