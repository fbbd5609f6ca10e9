"""CLI: python -m idlm_jax.main --config=configs/demo.py --workdir=/tmp/demo [--config.x=y].

Trains (mode=train), or evaluates / samples the latest checkpoint in the workdir
(--config.mode=eval / sample). Running it again on the same workdir resumes.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, logs, samples).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host pods).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax

  _setup_logging()

  if FLAGS.distributed:
    jax.distributed.initialize()
  jax.config.update("jax_threefry_partitionable", True)
  from idlm_jax import config as config_lib
  from idlm_jax.train import loop

  config_lib.validate(FLAGS.config)  # before any work: fails naming the bad field
  py_log = __import__("logging").getLogger("idlm_jax")
  py_log.info("JAX %s, %d devices (%s), process %d/%d", jax.__version__, jax.device_count(),
               jax.devices()[0].platform, jax.process_index(), jax.process_count())
  loop.run(FLAGS.config, FLAGS.workdir)


def _setup_logging():
  """idlm_jax progress to stderr at INFO; other libraries (orbax, absl) at WARNING unless
  --verbosity is given."""
  import logging as py_logging
  import sys

  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  handler = py_logging.StreamHandler(sys.stderr)
  handler.setFormatter(py_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log = py_logging.getLogger("idlm_jax")
  log.setLevel(py_logging.INFO)
  log.addHandler(handler)
  log.propagate = False


if __name__ == "__main__":
  app.run(main)
