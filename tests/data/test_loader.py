"""Tests of the grain input pipeline (idlm_jax/data/loader.py): order, host sharding, exact
resume through an orbax checkpoint, worker processes, pickling of memory-mapped rows."""

import json
import pickle

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.data import loader
from idlm_jax.data.pipeline import EvalSplit, TokenRows, TrainIterator
from idlm_jax.fields import ConfigError
from idlm_jax.train import checkpoint

N, L = 37, 6  # 37 rows: with G=8 an epoch is 4 batches and 5 rows are dropped
# the keys a data position had before the pipeline moved to grain (checkpoint layout)
STATE_KEYS = {"epoch", "batch", "fingerprint", "num_rows", "global_batch_size", "seed",
              "shuffle"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
  """Memory-mapped rows whose first token is the row id (uint16, as the token caches)."""
  path = tmp_path_factory.mktemp("rows") / "rows.npy"
  data = np.random.default_rng(0).integers(1, 90, (N, L)).astype(np.uint16)
  data[:, 0] = np.arange(N)
  np.save(path, data)
  return TokenRows(np.load(path, mmap_mode="r"), None, 0, 100, "rows-fixture")


def _ids(batch):
  """The row ids of a batch (first token)."""
  return batch["input_ids"][:, 0].tolist()


def _expected_ids(seed, k, g=8, process_index=0, process_count=1):
  """Row ids of batch k of a host, from the order's definition (not from the code)."""
  epoch, b = divmod(k, N // g)
  perm = np.random.default_rng([seed, epoch]).permutation(N)
  part = g // process_count
  return perm[b * g:(b + 1) * g][process_index * part:(process_index + 1) * part].tolist()


def test_order_is_the_seeded_epoch_permutation_with_or_without_read_ahead(rows):
  for prefetch, threads in ((0, 1), (3, 2)):
    it = TrainIterator(rows, global_batch_size=8, seed=7, prefetch=prefetch,
                       read_threads=threads)
    got = [next(it) for _ in range(10)]  # 2.5 epochs
    assert [_ids(b) for b in got] == [_expected_ids(7, k) for k in range(10)]
    for b in got:
      np.testing.assert_array_equal(b["input_ids"], np.asarray(rows.rows)[_ids(b)])
      assert b["input_ids"].dtype == b["attention_mask"].dtype == np.int32
    it.close()
  other = TrainIterator(rows, global_batch_size=8, seed=8)
  assert _ids(next(other)) != _expected_ids(7, 0)
  ordered = TrainIterator(rows, global_batch_size=8, shuffle=False)
  assert [_ids(next(ordered)) for _ in range(5)] == [list(range(8 * i, 8 * i + 8))
                                                     for i in (0, 1, 2, 3, 0)]


def test_hosts_get_disjoint_rows_that_make_up_the_global_batch(rows):
  single = TrainIterator(rows, global_batch_size=8, seed=3)
  hosts = [TrainIterator(rows, global_batch_size=8, seed=3, process_index=p, process_count=4,
                         prefetch=2) for p in range(4)]
  epoch_rows = []
  for k in range(8):  # two epochs
    parts = [_ids(next(h)) for h in hosts]
    assert all(len(set(a) & set(b)) == 0 for i, a in enumerate(parts) for b in parts[i + 1:])
    assert sum(parts, []) == _ids(next(single))
    assert parts[2] == _expected_ids(3, k, process_index=2, process_count=4)
    epoch_rows += sum(parts, [])
    if k % 4 == 3:  # each row at most once per epoch, over all hosts
      assert len(set(epoch_rows)) == len(epoch_rows) == 32
      epoch_rows = []


def test_resume_mid_epoch_through_an_orbax_checkpoint_is_bit_exact(rows, tmp_path):
  reference = TrainIterator(rows, global_batch_size=8, seed=1)
  expected = [next(reference) for _ in range(11)]
  interrupted = TrainIterator(rows, global_batch_size=8, seed=1, prefetch=2)
  for _ in range(6):  # epoch 1, batch 2: mid-epoch
    next(interrupted)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", every=1, keep=1, async_save=False)
  state = {"w": np.arange(3.0, dtype=np.float32)}
  assert ckpt.save(6, state, interrupted.get_state(), {"step": 6})
  ckpt.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  _, data_state, _ = ckpt.restore(6, abstract)
  ckpt.close()
  # the stored position keeps the layout of checkpoints written before grain
  saved = json.loads((tmp_path / "ckpt" / "6" / "data_iter" / "metadata").read_text())
  assert set(saved) == set(data_state) == STATE_KEYS
  assert (data_state["epoch"], data_state["batch"]) == (1, 2)
  resumed = TrainIterator(rows, global_batch_size=8, seed=1)
  resumed.set_state(data_state)
  for want in expected[6:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # the interrupted iterator can also seek back (its read-ahead buffer is dropped)
  interrupted.set_state({**data_state, "epoch": 0, "batch": 1})
  np.testing.assert_array_equal(next(interrupted)["input_ids"], expected[1]["input_ids"])
  interrupted.close()


def test_set_state_errors_on_other_data_or_a_bad_position(rows):
  state = TrainIterator(rows, global_batch_size=8).get_state()
  with pytest.raises(ValueError, match="global_batch_size"):
    TrainIterator(rows, global_batch_size=4).set_state(state)
  with pytest.raises(ValueError, match="invalid data iterator state"):
    TrainIterator(rows, global_batch_size=8).set_state({**state, "batch": 4})
  with pytest.raises(ValueError, match="data.workers"):
    TrainIterator(rows, global_batch_size=8, workers=-1)


@pytest.mark.slow  # starts grain worker processes (spawn): ~10 s on 2 CPU cores
def test_worker_processes_give_the_same_batches_and_resume(rows):
  plain = TrainIterator(rows, global_batch_size=8, seed=2, process_index=1, process_count=2)
  want = [next(plain)["input_ids"] for _ in range(9)]
  workers = TrainIterator(rows, global_batch_size=8, seed=2, process_index=1, process_count=2,
                          workers=2, prefetch=2)
  try:
    for w in want[:5]:
      np.testing.assert_array_equal(next(workers)["input_ids"], w)
    state = workers.get_state()
    assert (state["epoch"], state["batch"]) == (1, 1)
    resumed = TrainIterator(rows, global_batch_size=8, seed=2, process_index=1,
                            process_count=2, workers=3, prefetch=1)
    resumed.set_state(state)  # a position restores under another worker count
    for w in want[5:]:
      np.testing.assert_array_equal(next(resumed)["input_ids"], w)
    resumed.close()
  finally:
    workers.close()


def test_token_rows_pickle_memory_maps_by_file_name(rows):
  blob = pickle.dumps(rows)
  assert len(blob) < 1000  # not the array
  back = pickle.loads(blob)
  assert isinstance(back.rows, np.memmap) and back.fingerprint == rows.fingerprint
  np.testing.assert_array_equal(back.gather(np.array([5, 1]))["input_ids"],
                                rows.gather(np.array([5, 1]))["input_ids"])


def test_eval_split_reads_ahead_without_changing_batches(rows):
  plain = [b for b in EvalSplit(rows, batch_size=8, process_index=1, process_count=2)]
  ahead = [b for b in EvalSplit(rows, batch_size=8, process_index=1, process_count=2,
                                prefetch=3, read_threads=2)]
  assert len(plain) == len(ahead) == 5
  for a, b in zip(plain, ahead):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert plain[-1]["weight"].tolist() == [1.0, 0.0, 0.0, 0.0]  # rows 36..39, 37 rows


def test_dataset_is_a_grain_pipeline_and_fields_are_checked(rows):
  it = TrainIterator(rows, global_batch_size=8, seed=4)
  assert isinstance(it.dataset, loader.grain.MapDataset)
  np.testing.assert_array_equal(it.dataset[5]["input_ids"], next(
      b for k, b in enumerate(TrainIterator(rows, global_batch_size=8, seed=4)) if k == 5)
      ["input_ids"])
  for bad in ("data.workers=-1", "data.prefetch=-2", "data.read_threads=0"):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
      config_lib.load_config("configs/demo.py", [bad])
