"""One job per workdir: <workdir>/run.lock, held for the whole run (every mode).

Two runs on one workdir interleave checkpoints, delete each other's steps under `ckpt.keep`
and mix their metrics, so the second one stops at once with one line naming the first (pid,
host, start time, command). Only process 0 of a multi-host job takes the lock (the other
hosts share its workdir by design).

Local workdirs: an exclusive `fcntl.flock` on the file, which the kernel releases when the
holder exits however it exits (kill -9, a crash, the OOM killer), so a lock can never stay
stale; the file's JSON names the holder for the message, and a non-empty file found on
acquiring says the previous holder died without releasing it (logged). Object stores (gs://)
have no locks: the file is written if absent, and a file left by a process that is gone from
this host (pid and start time checked in /proc) is taken over; one from another host is
refused with the command that removes it.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Optional

import jax

from idlm_jax.train import checkpoint

log = logging.getLogger("idlm_jax")
LOCK_NAME = "run.lock"


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir's lock; the message names it."""


def process_start_ticks(pid: int) -> Optional[int]:
  """The start time of process `pid` in clock ticks since boot (/proc/<pid>/stat field 22),
  or None where /proc is unavailable: with the pid it identifies a process (pids are reused)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  return int(stat.rpartition(")")[2].split()[19])


def owner_record() -> dict:
  """Who holds the lock: pid, host, start ticks, time and command line."""
  pid = os.getpid()
  return {"pid": pid, "host": socket.gethostname(), "start_ticks": process_start_ticks(pid),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)[:500]}


def is_alive(owner: dict) -> Optional[bool]:
  """Whether the process of an owner record still runs: None when it ran on another host
  (cannot be checked from here), False when its pid is gone or now belongs to a newer process."""
  if owner.get("host") != socket.gethostname():
    return None
  pid = int(owner.get("pid", -1))
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by another user
  recorded, now = owner.get("start_ticks"), process_start_ticks(pid)
  return recorded is None or now is None or recorded == now


def describe(owner: dict) -> str:
  return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} (started "
          f"{owner.get('started', '?')}: {owner.get('command', '?')})")


def _parse(text: str) -> dict:
  try:
    record = json.loads(text)
  except ValueError:
    return {}
  return record if isinstance(record, dict) else {}


class WorkdirLock:
  """The lock of one workdir; `acquire` raises WorkdirBusyError if a live process holds it."""

  def __init__(self, workdir):
    self.workdir = checkpoint.as_path(workdir)
    self.path = self.workdir / LOCK_NAME
    self._fd: Optional[int] = None
    self._remote_held = False

  def acquire(self) -> None:
    self.workdir.mkdir(parents=True, exist_ok=True)
    if checkpoint.is_url(self.path):
      self._acquire_remote()
    else:
      self._acquire_local()

  def _busy(self, owner: dict, extra: str = "") -> WorkdirBusyError:
    return WorkdirBusyError(f"workdir {self.workdir} is in use by {describe(owner)}; wait for "
                            f"it to finish or use another --workdir{extra}")

  def _acquire_local(self) -> None:
    fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise self._busy(self._read_owner_retrying()) from None
    previous = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
    if previous:
      log.warning("workdir %s: the previous run (%s) ended without releasing its lock "
                  "(killed or crashed); taking it over", self.workdir, describe(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner_record()).encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def _read_owner_retrying(self) -> dict:
    """The holder's record (it may be between flock and writing it: retry briefly)."""
    for _ in range(20):
      owner = _parse(self.path.read_text())
      if owner:
        return owner
      time.sleep(0.05)
    return {}

  def _acquire_remote(self) -> None:
    if self.path.exists():
      owner = _parse(self.path.read_text())
      alive = is_alive(owner) if owner else False
      if alive is None:
        raise self._busy(owner, f" (if it is gone, remove {self.path})")
      if alive:
        raise self._busy(owner)
      if owner:
        log.warning("workdir %s: removing the stale lock of %s (that process is gone)",
                    self.workdir, describe(owner))
    self.path.write_text(json.dumps(owner_record()))
    self._remote_held = True

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # released cleanly: an empty file (never unlinked, see flock)
      os.close(self._fd)  # closing drops the flock
      self._fd = None
    if self._remote_held:
      with contextlib.suppress(OSError):
        if _parse(self.path.read_text()).get("pid") == os.getpid():
          self.path.unlink()
      self._remote_held = False


@contextlib.contextmanager
def hold(workdir):
  """The workdir's lock for the duration of the block (process 0 only; others no-op)."""
  if jax.process_index() != 0:
    yield None
    return
  lock = WorkdirLock(workdir)
  lock.acquire()
  try:
    yield lock
  finally:
    lock.release()
