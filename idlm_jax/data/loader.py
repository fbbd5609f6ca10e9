"""The input pipeline on grain: sampling, per-host sharding, batching, prefetch and position.

The packed rows (memory-mapped .npy caches, `pipeline.TokenRows`, or any `Rows`) stay the
random-access source; the training batches of one host are a grain `MapDataset`:

  EpochPermutation(N, S*G)   position q of epoch e = q // (S*G) is row perm_e[q % (S*G)],
                             perm_e = np.random.default_rng([seed, e]).permutation(N)
    .batch(G/P)              host-sized chunks of row ids (G/P consecutive positions)
    [p::P]                   host p's chunk of every global batch (grain's sharding idiom)
    .map(rows.gather)        one sorted read of the G/P rows: input_ids, attention_mask, ...
    .repeat()                epochs without end; element k is batch k % S of epoch k // S

with S = N // G full global batches per epoch (the last partial batch is dropped). This is
exactly the order of the hand-written iterator it replaced, so shipped configs see the same
batches. Elements are one-to-one with indices, so the position of a host is one integer k:
the checkpoint stores it as (epoch, batch) with the data identity, and resuming iterates
`dataset[k:]`, which gives the same batches whatever the number of worker processes (grain's
own multiprocess iterator state records per-worker positions and only restores with the same
worker count). `data.workers` > 0 reads batches in grain worker processes (`mp_prefetch`),
`data.prefetch` batches ahead; both leave the batches unchanged.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import grain
import numpy as np
from absl import flags

from idlm_jax import fields as F
from idlm_jax.fields import Field

FIELDS = {
    "data.workers": Field(0, "grain worker processes reading training batches ahead of the step "
                          "(mp_prefetch); 0: read in the training process. Batches and resume "
                          "positions do not depend on it.", check=F.non_negative),
    "data.prefetch": Field(2, "batches read ahead: per worker process, or (data.workers=0) by "
                           "data.read_threads threads of the training process; 0: read when "
                           "asked, in the calling thread.", check=F.non_negative),
    "data.read_threads": Field(1, "threads reading batches ahead in each reading process "
                               "(with data.prefetch > 0).", check=F.positive),
}


class Rows(Protocol):
  """What the iterators read from a split: `pipeline.TokenRows` (tokenized text),
  `trajectories.TrajectoryRows` (recorded R2 trajectories), `reasoning.PromptRows`."""

  fingerprint: str  # identity of the content: a saved data position only resumes on it

  @property
  def num_rows(self) -> int: ...

  @property
  def seq_len(self) -> int: ...

  def gather(self, index: np.ndarray) -> dict:
    """The batch of rows `index`: at least input_ids and attention_mask, int32 [n, L]."""

  def token_counts(self, num_rows: int | None = None) -> np.ndarray:
    """int64 [model vocabulary] counts of the non-pad tokens of the first `num_rows` rows."""


def host_slice(batch_size: int, process_index: int, process_count: int, what: str) -> slice:
  """This host's contiguous slice of a global batch."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} / process_count={process_count}")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"{what}={batch_size} must be a positive multiple of the "
                     f"process count {process_count}")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


class EpochPermutation(grain.MapDataset):
  """Row ids in training order, one epoch long (grain's convention: index q >= len is epoch
  q // len). Epoch e reads the first `rows_per_epoch` ids of
  np.random.default_rng([seed, e]).permutation(num_rows) (identity without shuffle)."""

  def __init__(self, num_rows: int, rows_per_epoch: int, seed: int, shuffle: bool):
    super().__init__()
    if not 0 < rows_per_epoch <= num_rows:
      raise ValueError(f"rows_per_epoch={rows_per_epoch} must be in [1, {num_rows}]")
    self.num_rows, self.rows_per_epoch = int(num_rows), int(rows_per_epoch)
    self.seed, self.shuffle = int(seed), bool(shuffle)
    self._cached = (None, None)  # (epoch, permutation), replaced as one tuple (threads)

  def __len__(self) -> int:
    return self.rows_per_epoch

  def permutation(self, epoch: int) -> np.ndarray:
    """Row order of `epoch` (the latest epoch is cached)."""
    cached_epoch, perm = self._cached
    if cached_epoch != epoch:
      perm = (np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
              if self.shuffle else np.arange(self.num_rows))
      self._cached = (epoch, perm)
    return perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(int(index), self.rows_per_epoch)
    return self.permutation(epoch)[position]

  def __getstate__(self) -> dict:
    """Pickled for grain workers without the cached permutation (N int64s)."""
    return {**self.__dict__, "_cached": (None, None)}

  def __str__(self) -> str:
    return (f"EpochPermutation(num_rows={self.num_rows}, rows_per_epoch="
            f"{self.rows_per_epoch}, seed={self.seed}, shuffle={self.shuffle})")


def stack_ids(ids) -> np.ndarray:
  """grain batch_fn: the row ids of one chunk as int64 [n]."""
  return np.asarray(ids, np.int64)


def train_dataset(rows: Rows, *, global_batch_size: int, seed: int, shuffle: bool,
                  process_index: int, process_count: int) -> grain.MapDataset:
  """This host's training batches as an infinite grain MapDataset (see the module doc)."""
  local = host_slice(global_batch_size, process_index, process_count, "global_batch_size")
  local = local.stop - local.start
  steps_per_epoch = rows.num_rows // global_batch_size
  order = EpochPermutation(rows.num_rows, steps_per_epoch * global_batch_size, seed, shuffle)
  chunks = order.batch(local, batch_fn=stack_ids)[process_index::process_count]
  return chunks.map(rows.gather).repeat()


def read_ahead(dataset: grain.MapDataset, *, workers: int, prefetch: int,
               read_threads: int) -> grain.IterDataset:
  """`dataset` as a grain IterDataset read `prefetch` elements ahead: by threads of this
  process (workers=0) or by `workers` processes, each with its own buffer. Order unchanged."""
  threads = read_threads if prefetch > 0 and workers == 0 else 0
  iter_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                      prefetch_buffer_size=threads and prefetch))
  if workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18's worker start reads an absl flag directly (profiler.py) and raises
      # UnparsedFlagAccessError outside an absl app (pytest, notebooks): use the defaults.
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, prefetch)))
  return iter_ds


def _check_reading(workers: int, prefetch: int, read_threads: int) -> None:
  """ValueError for a negative worker / prefetch count or no reading thread."""
  if workers < 0 or prefetch < 0 or read_threads < 1:
    raise ValueError(f"data.workers={workers} and data.prefetch={prefetch} must be >= 0, "
                     f"data.read_threads={read_threads} >= 1")


class TrainIterator:
  """Infinite, deterministic, resumable training batches of this host, read through grain.

  Epoch e visits the rows in the order np.random.default_rng([seed, e]).permutation(N)
  (identity without shuffle); global batch b is perm[b*G:(b+1)*G] (the last partial batch
  is dropped) and host p of P gets its rows [p*G/P, (p+1)*G/P).
  """

  def __init__(self, rows: Rows, *, global_batch_size: int, seed: int = 0,
               shuffle: bool = True, process_index: int = 0, process_count: int = 1,
               workers: int = 0, prefetch: int = 0, read_threads: int = 1):
    self.rows = rows
    self.global_batch_size = int(global_batch_size)
    self.seed, self.shuffle = int(seed), bool(shuffle)
    self._slice = host_slice(self.global_batch_size, process_index, process_count,
                             "global_batch_size")
    if rows.num_rows < self.global_batch_size:
      raise ValueError(f"the training split has {rows.num_rows} rows, fewer than one global "
                       f"batch of {self.global_batch_size}")
    _check_reading(workers, prefetch, read_threads)
    self.workers, self.prefetch, self.read_threads = workers, prefetch, read_threads
    self.dataset = train_dataset(rows, global_batch_size=self.global_batch_size, seed=seed,
                                 shuffle=shuffle, process_index=process_index,
                                 process_count=process_count)
    self._order = EpochPermutation(rows.num_rows, self.steps_per_epoch * global_batch_size,
                                   seed, shuffle)
    self._next = 0  # index in self.dataset of the next batch: epoch * S + batch
    self._iterator = None  # the grain iterator, opened at the first batch after a seek

  @property
  def num_rows(self) -> int:
    """Rows in the training split."""
    return self.rows.num_rows

  @property
  def seq_len(self) -> int:
    """Tokens per row."""
    return self.rows.seq_len

  @property
  def steps_per_epoch(self) -> int:
    """Full global batches per epoch."""
    return self.num_rows // self.global_batch_size

  @property
  def local_batch_size(self) -> int:
    """Rows per batch on this host."""
    return self._slice.stop - self._slice.start

  @property
  def epoch(self) -> int:
    """Epoch of the next batch."""
    return self._next // self.steps_per_epoch

  @property
  def batch_index(self) -> int:
    """Index within its epoch of the next global batch."""
    return self._next % self.steps_per_epoch

  def permutation(self, epoch: int) -> np.ndarray:
    """Row order of `epoch`."""
    return self._order.permutation(epoch)

  def global_batch_indices(self, epoch: int, batch_index: int) -> np.ndarray:
    """Row indices of global batch `batch_index` of `epoch` (all hosts)."""
    g = self.global_batch_size
    return self.permutation(epoch)[batch_index * g:(batch_index + 1) * g]

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict:
    """The next batch: input_ids and attention_mask, int32 [G/P, L] (plus any extra fields
    of the rows)."""
    if self._iterator is None:
      self._iterator = iter(read_ahead(self.dataset[self._next:], workers=self.workers,
                                       prefetch=self.prefetch, read_threads=self.read_threads))
    batch = next(self._iterator)
    self._next += 1
    return batch

  def close(self) -> None:
    """Stops the grain reading threads / worker processes (reopened by the next batch)."""
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def _identity(self) -> dict:
    """What must match for a saved position to be meaningful."""
    return {"fingerprint": self.rows.fingerprint, "num_rows": self.num_rows,
            "global_batch_size": self.global_batch_size, "seed": self.seed,
            "shuffle": self.shuffle}

  def get_state(self) -> dict:
    """JSON-serializable position (epoch, batch) plus the dataset identity."""
    return {"epoch": self.epoch, "batch": self.batch_index, **self._identity()}

  def set_state(self, state: dict) -> None:
    """Restores a position saved by get_state; errors if the data or order differ."""
    mismatch = {k: (state.get(k), v) for k, v in self._identity().items()
                if state.get(k) != v}
    if mismatch:
      details = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in mismatch.items())
      raise ValueError(f"cannot resume the data iterator on different data/order: {details}")
    epoch, batch = int(state["epoch"]), int(state["batch"])
    if epoch < 0 or not 0 <= batch < self.steps_per_epoch:
      raise ValueError(f"invalid data iterator state: epoch={epoch}, batch={batch}")
    self.close()
    self._next = epoch * self.steps_per_epoch + batch

  def token_counts(self) -> np.ndarray:
    """Counts of each model id over the non-pad training tokens."""
    return self.rows.token_counts()


class EvalSplit:
  """The whole validation split in fixed order, last batch padded with weight-0 rows; its
  batches are a grain MapDataset read ahead like the training batches."""

  def __init__(self, rows: Rows, *, batch_size: int, max_rows: int = 0,
               process_index: int = 0, process_count: int = 1, prefetch: int = 0,
               read_threads: int = 1):
    self.rows = rows
    self.batch_size = int(batch_size)
    self._slice = host_slice(self.batch_size, process_index, process_count, "eval_batch_size")
    self.num_rows = min(rows.num_rows, max_rows) if max_rows > 0 else rows.num_rows
    _check_reading(0, prefetch, read_threads)
    self.prefetch, self.read_threads = prefetch, read_threads
    self.dataset = grain.MapDataset.range(self.num_batches).map(self.batch)

  @property
  def num_batches(self) -> int:
    """Global batches needed to cover every row once."""
    return -(-self.num_rows // self.batch_size)

  @property
  def local_batch_size(self) -> int:
    """Rows per batch on this host."""
    return self._slice.stop - self._slice.start

  @property
  def seq_len(self) -> int:
    """Tokens per row."""
    return self.rows.seq_len

  def __len__(self) -> int:
    return self.num_batches

  def batch(self, b: int) -> dict:
    """Batch b: input_ids, attention_mask (int32 [rows, L]) and weight (float32, 0 = dummy)."""
    index = (b * self.batch_size + np.arange(self.batch_size))[self._slice]
    valid = index < self.num_rows
    n, shape = int(valid.sum()), (self.local_batch_size, self.seq_len)
    out = {"input_ids": np.full(shape, self.rows.pad_id, np.int32),
           "attention_mask": np.zeros(shape, np.int32),
           "weight": valid.astype(np.float32)}
    real = self.rows.gather(index[:n])  # valid rows are a prefix: indices increase.
    for name, value in real.items():  # extra fields (prompt_mask, ...): zeros on dummy rows
      if name not in out:
        out[name] = np.zeros((self.local_batch_size, *value.shape[1:]), value.dtype)
      out[name][:n] = value
    return out

  def __iter__(self) -> Iterator[dict]:
    return iter(read_ahead(self.dataset, workers=0, prefetch=self.prefetch,
                           read_threads=self.read_threads))

  def token_counts(self) -> np.ndarray:
    """Counts of each model id over the non-pad tokens of the evaluated rows."""
    return self.rows.token_counts(self.num_rows)
