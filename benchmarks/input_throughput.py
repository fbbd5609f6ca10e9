"""Input tokens/s of one host's grain pipeline (data/loader.py), against the train step rate.

  python -m benchmarks.input_throughput            # tiny and paper shapes, writes
      # benchmarks/results/input_throughput_cpu<cores>_<date>.jsonl
  python -m benchmarks.input_throughput --smoke    # a few batches of tiny shapes (tests)

Each shape is a memory-mapped .npy of random token rows (uint16, as the token caches) written
once to a temporary folder, so reads come from the page cache; the measured pipeline is the
training one: seeded epoch permutation, this host's chunk of every global batch, one sorted
gather per batch, read ahead by threads or grain worker processes. The consumer does nothing
else, so the rate is the most the pipeline delivers to a train step; a second, paced pass
takes one batch every --step-ms (sleeping in between, as the host does while the device
steps) and records the median wait in next(): what reading still costs a step. Shapes:
  tiny:  L=64,   per-host batch 32, 2048-id vocabulary (the demo configs)
  paper: L=1024, per-host batch 32, GPT-2 vocabulary (50258 ids; OWT configs)
Each row also says how many train steps of DiT small (L=1024, B=32, one accelerator; the rate
is read from the committed H100 measurement) one host's input keeps fed: `steps_fed` =
input tokens/s / step tokens/s, which must exceed the accelerators per host.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import tempfile
import time

import grain
import numpy as np

from idlm_jax.data.pipeline import TokenRows, TrainIterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEP_FILE = "h100_2026-11-22.jsonl"  # DiT small teacher step, idlm_jax, L=1024, B=32
SHAPES = {"tiny": (64, 32, 2048), "paper": (1024, 32, 50258)}  # L, per-host batch, vocab
# (workers, prefetch, read_threads): on demand, one reading thread, threads, worker processes
READERS = ((0, 0, 1), (0, 2, 1), (0, 8, 4), (2, 2, 1), (4, 2, 1))


def step_rate(path: pathlib.Path = RESULTS / STEP_FILE) -> dict:
  """The measured DiT-small teacher step (idlm_jax, train, L=1024, B=32) from its raw file."""
  for line in path.read_text().splitlines():
    r = json.loads(line)
    if (r.get("framework"), r.get("kind"), r.get("L"), r.get("B")) == (
        "idlm_jax", "train", 1024, 32):
      return {"tokens_per_s": r["tokens_per_s"], "device": r["device"], "file": path.name}
  raise ValueError(f"{path}: no idlm_jax train row at L=1024, B=32")


def write_rows(folder: pathlib.Path, num_rows: int, seq_len: int, vocab: int) -> TokenRows:
  """A memory-mapped .npy of uniform random ids as a TokenRows (written in 64 MB blocks)."""
  path = folder / f"rows_{num_rows}x{seq_len}_v{vocab}.npy"
  rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16,
                                   shape=(num_rows, seq_len))
  rng = np.random.default_rng(0)
  block = max(1, (64 << 20) // (2 * seq_len))
  for start in range(0, num_rows, block):
    stop = min(start + block, num_rows)
    rows[start:stop] = rng.integers(0, vocab, (stop - start, seq_len), dtype=np.uint16)
  rows.flush()
  del rows
  return TokenRows(np.load(path, mmap_mode="r"), None, 0, vocab, f"bench-{path.stem}")


def measure(rows: TokenRows, batch: int, reader: tuple, batches: int, warmup: int,
            paced: int = 0, step_ms: float = 0.0) -> dict:
  """Seconds for `batches` batches read back to back after `warmup` (worker start-up and
  first fills excluded); then `paced` batches taken one per `step_ms` (a stand-in for the
  train step, which releases the GIL as a device step does) and the median wait in next()."""
  workers, prefetch, threads = reader
  it = TrainIterator(rows, global_batch_size=batch, seed=0, workers=workers,
                     prefetch=prefetch, read_threads=threads)
  waits = []
  try:
    t0 = time.perf_counter()
    for _ in range(warmup):
      next(it)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    seconds = time.perf_counter() - t0
    for _ in range(paced):
      time.sleep(step_ms / 1e3)
      t1 = time.perf_counter()
      next(it)
      waits.append(time.perf_counter() - t1)
  finally:
    it.close()
  tokens = batches * batch * rows.seq_len
  out = {"workers": workers, "prefetch": prefetch, "read_threads": threads,
         "batches": batches, "seconds": seconds, "warmup_s": round(first, 3),
         "tokens_per_s": tokens / seconds, "ms_per_batch": 1e3 * seconds / batches}
  if paced:
    out |= {"paced_step_ms": step_ms, "paced_batches": paced,
            "paced_wait_ms": 1e3 * float(np.median(waits))}
  return out


def machine() -> str:
  """CPU model and core count of this host."""
  model = platform.processor() or "cpu"
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if cpuinfo.is_file():
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("model name")]
    model = names[0] if names else model
  return f"{model}, {os.cpu_count()} cores"


def main(argv=None) -> list:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="a few batches, tiny shapes")
  parser.add_argument("--out", default=str(RESULTS), help="folder of the JSONL file")
  parser.add_argument("--name", default="", help="file name (default: input_throughput_"
                      "<machine>_<date>.jsonl)")
  parser.add_argument("--rows-mb", type=int, default=256, help="size of each rows file")
  parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
  parser.add_argument("--step-ms", type=float, default=20.0,
                      help="the paced consumer's pause between batches")
  args = parser.parse_args(argv)
  shapes = {"tiny": SHAPES["tiny"]} if args.smoke else SHAPES
  readers = READERS[:2] if args.smoke else READERS
  step = step_rate()
  date = datetime.datetime.now(datetime.timezone.utc)
  info = {"machine": machine(), "grain": grain.__version__ if hasattr(grain, "__version__")
          else "", "numpy": np.__version__, "python": platform.python_version(),
          "date": date.strftime("%Y-%m-%d %H:%M UTC"), "page_cache": "warm",
          "step_tokens_per_s": step["tokens_per_s"], "step_device": step["device"],
          "command": "python -m benchmarks.input_throughput " + " ".join(argv or [])}
  out = []
  with tempfile.TemporaryDirectory() as tmp:
    for shape, (seq_len, batch, vocab) in shapes.items():
      num_rows = 4 * batch if args.smoke else (args.rows_mb << 20) // (2 * seq_len)
      rows = write_rows(pathlib.Path(tmp), num_rows, seq_len, vocab)
      for reader in readers:
        probe = measure(rows, batch, reader, 3, 2)  # how many batches fill args.seconds
        batches = 3 if args.smoke else max(20, int(args.seconds * 1e3 / probe["ms_per_batch"]))
        r = measure(rows, batch, reader, batches, 5, paced=2 if args.smoke else 50,
                    step_ms=args.step_ms)
        r = {"shape": shape, "L": seq_len, "B": batch, "vocab": vocab, "rows": num_rows, **r,
             "steps_fed": r["tokens_per_s"] / step["tokens_per_s"], **info}
        print(f"{shape:5s} L={seq_len:4d} B={batch} workers={r['workers']} prefetch="
              f"{r['prefetch']} threads={r['read_threads']}: {r['tokens_per_s'] / 1e6:.2f} M "
              f"tokens/s, {r['ms_per_batch']:.3f} ms/batch, feeds {r['steps_fed']:.1f} steps, "
              f"paced wait {r.get('paced_wait_ms', float('nan')):.3f} ms",
              flush=True)
        out.append(r)
  name = args.name or f"input_throughput_cpu{os.cpu_count()}_{date:%Y-%m-%d}.jsonl"
  path = pathlib.Path(args.out) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in out))
  print(f"wrote {path}")
  return out


if __name__ == "__main__":
  main()
