"""Teacher step at train.microbatches = 1, 2, 4 on one device: median step time of 5 steps and
XLA's compiled memory (`lower(...).compile().memory_analysis()`), one JSON row per k.

PYTHONPATH=$PWD python benchmarks/accumulation_memory.py OUT.jsonl
"""

import json
import sys
import tempfile
import time

import jax
import numpy as np

from idlm_jax import config as config_lib
from idlm_jax.train import loop, parallel

CONFIG = "configs/synthetic_mdlm.py"
BATCH, LENGTH = 64, 64


def measure(k: int) -> dict:
  """One row: the compiled step's memory and its median time over 5 steps."""
  cfg = config_lib.load_config(CONFIG, [
      f"train.microbatches={k}", f"train.global_batch_size={BATCH}", "log.tensorboard=False",
      "data.cache_dir='/tmp/accum/cache'", "model.dropout=0.1"])
  run = loop.build(cfg, tempfile.mkdtemp(), devices=jax.devices()[:1], datasets=False,
                   teacher=False)
  r = np.random.default_rng(0)
  batch = parallel.global_batch({
      "input_ids": r.integers(0, 24, (BATCH, LENGTH)).astype(np.int32),
      "attention_mask": np.ones((BATCH, LENGTH), np.int32)}, run.mesh)
  with parallel.mesh_context(run.mesh):
    step = run.p_train_step.lower(run.state, None, batch).compile()
    mem = step.memory_analysis()
    state, _ = step(run.state, None, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(5):
      t = time.perf_counter()
      state, _ = step(state, None, batch)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t)
  return {"config": CONFIG, "objective": cfg.objective, "global_batch": BATCH,
          "microbatches": k, "devices": 1, "backend": jax.default_backend(),
          "jax": jax.__version__, "step_s_median": float(np.median(times)),
          "step_s_all": times, "argument_bytes": mem.argument_size_in_bytes,
          "output_bytes": mem.output_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
          "date": time.strftime("%Y-%m-%d")}


def main(path: str) -> None:
  with open(path, "a") as out:
    for k in (1, 2, 4):
      row = measure(k)
      print(row)
      out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main(sys.argv[1])
