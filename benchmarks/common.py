"""Shared pieces of the benchmark scripts: timing, memory, run metadata, JSONL + Markdown output.

Timing protocol (issue #10): the first call (compilation) and `warmup - 1` more calls are
excluded; then `reps` calls are timed one by one with `jax.block_until_ready`, and the median
is the reported number (mean kept for reference).
"""

import datetime
import json
import pathlib
import platform
import shlex
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def peak_tflops() -> float:
  """Dense bf16 peak of device 0 (NaN where unknown, e.g. a CPU)."""
  kind = jax.devices()[0].device_kind
  for name, tf in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return tf
  return float("nan")


def timed(fn: Callable, reps: int, warmup: int) -> dict:
  """{median_s, mean_s, min_s, first_s, times_s} of `fn()` over `reps` timed calls after
  `warmup` untimed ones. warmup=0 times the first call as one of the reps: only for a program
  compiled ahead of time that runs long enough (a 1024-step sampler) for its first call's
  one-time costs not to matter, where a warm-up run would double the benchmark's time."""
  first = None
  if warmup > 0:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    ts = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - ts)
  first = times[0] if first is None else first
  return dict(median_s=float(np.median(times)), mean_s=float(np.mean(times)),
              min_s=float(np.min(times)), first_s=first, times_s=[round(t, 6) for t in times])


def device_peak_gib() -> Optional[float]:
  """Peak bytes in use on device 0 since the process started (None where JAX has no stats: CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def device_limit_gib() -> Optional[float]:
  """The allocator's limit on device 0 in GiB (None where JAX has no stats: CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return None if limit is None else limit / 2**30


def out_of_memory(error: str) -> bool:
  """Whether an error's text is XLA running out of device memory (compiling or running)."""
  return "RESOURCE_EXHAUSTED" in error or "out of memory" in error.lower()


def compiled_memory(compiled) -> dict:
  """XLA's static memory plan of a compiled executable, in GiB (works on every backend).

  `total_gib` = arguments + outputs + temporaries - aliased (donated) bytes: the executable's
  own footprint, a lower bound on its device peak.
  """
  m = compiled.memory_analysis()
  if m is None:
    return {}
  gib = lambda b: round(b / 2**30, 4)
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return dict(args_gib=gib(m.argument_size_in_bytes), out_gib=gib(m.output_size_in_bytes),
              temp_gib=gib(m.temp_size_in_bytes), alias_gib=gib(m.alias_size_in_bytes),
              total_gib=gib(total))


def run_info(script: str, argv=None) -> dict:
  """Device, software versions, UTC date and the command line (`script` + argv) of this run."""
  import flax  # noqa: PLC0415

  dev = jax.devices()[0]
  argv = ["benchmarks/" + pathlib.Path(script).name, *(sys.argv[1:] if argv is None else argv)]
  return dict(device=dev.device_kind, platform=dev.platform, device_count=jax.device_count(),
              jax=jax.__version__, flax=flax.__version__, python=platform.python_version(),
              date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              command="python " + " ".join(shlex.quote(a) for a in argv))


def write_results(rows: list, info: dict, out_dir, stem: str, markdown: str) -> tuple:
  """Append rows (with `info`) to <out_dir>/<stem>.jsonl and write <stem>.md; returns paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  jsonl, md = out_dir / f"{stem}.jsonl", out_dir / f"{stem}.md"
  with open(jsonl, "a") as f:
    for r in rows:
      f.write(json.dumps({**info, **r}) + "\n")
  md.write_text(markdown)
  return jsonl, md


def header_markdown(title: str, info: dict) -> str:
  """Title plus device / versions / date / command lines of a results file."""
  return (f"# {title}\n\n"
          f"Device: {info['device']} ({info['platform']}, {info['device_count']} devices); "
          f"JAX {info['jax']}, Flax {info['flax']}, Python {info['python']}; {info['date']}.\n\n"
          f"Command:\n\n    {info['command']}\n\n")


def fmt(value, digits: int = 1) -> str:
  """A table cell: thousands separators for big numbers, '-' for missing ones."""
  if value is None or (isinstance(value, float) and not np.isfinite(value)):
    return "-"
  if isinstance(value, float) and abs(value) >= 1000:
    return f"{value:,.0f}"
  return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def file_stem(prefix: str, info: dict) -> str:
  """<prefix>_<device>_<date> with the device name made file-safe."""
  dev = "".join(c if c.isalnum() else "-" for c in info["device"].lower()).strip("-")
  return f"{prefix}_{dev}_{info['date'][:10]}"
