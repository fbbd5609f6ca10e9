"""Random draws that are a function of each row's index: what makes gradient accumulation exact.

A train step draws its noise (diffusion times, masks, dropout, categorical draws, rollouts)
with the functions below. Given an ordinary PRNG key they are `jax.random`'s own functions
(samplers and evaluation use them so). Given a `RowKey` (a step key plus the global indices
of the rows in hand), every draw of shape [rows, ...] is made row by row, row i from
`fold_in(key, i)`: the noise of a row does not depend on which other rows share its array, so
a batch split into microbatches (objectives/accumulate.py) draws exactly the noise of the
whole batch. `split`/`fold_in` of a RowKey act on the shared step key and keep the rows.

`shared(key)` is the key of draws that are one number for the whole batch (the antithetic
offset u of diffusion.schedules.sample_t, whose row i then takes (u + i) / total).

`position_keys` / `normal_per_position` go one step further for [rows, length, n] draws:
position p of row i from fold_in(fold_in(key, i), p), for a plain key and a RowKey alike, so a
chunk of positions can draw its own slice (IDLM-Duo's Gaussian noise, model.loss_chunk).
"""

from typing import Union

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class RowKey:
  """A step key and the rows it draws for: `rows` int32 [m] global indices among `total`."""

  key: jax.Array  # a typed PRNG key [] shared by the rows
  rows: jax.Array  # int32 [m]
  total: int = flax.struct.field(pytree_node=False)  # rows in the whole (per-device) batch

  @property
  def size(self) -> int:
    return self.rows.shape[0]


Key = Union[jax.Array, RowKey]


def row_key(key: jax.Array, rows: jax.Array, total: int) -> RowKey:
  """RowKey of `key` (typed or raw uint32 data) for the rows `rows` of a batch of `total`."""
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  return RowKey(key=key, rows=jnp.asarray(rows, jnp.int32), total=int(total))


def all_rows(key: jax.Array, total: int) -> RowKey:
  """RowKey of the whole batch: rows 0..total-1."""
  return row_key(key, jnp.arange(total, dtype=jnp.int32), total)


def shared(key: Key) -> jax.Array:
  """The plain key of batch-wide draws (the same for every microbatch of a step)."""
  return key.key if isinstance(key, RowKey) else key


def split(key: Key, num: int = 2):
  """`num` keys; a RowKey splits its step key and keeps its rows (a tuple of RowKeys)."""
  if isinstance(key, RowKey):
    return tuple(key.replace(key=k) for k in jax.random.split(key.key, num))
  return jax.random.split(key, num)


def fold_in(key: Key, data) -> Key:
  if isinstance(key, RowKey):
    return key.replace(key=jax.random.fold_in(key.key, data))
  return jax.random.fold_in(key, data)


def _per_row(draw, key: RowKey, shape, axis: int):
  """draw(row_key, shape without `axis`) for each row, stacked along `axis`."""
  shape = tuple(shape)
  if shape[axis] != key.size:
    raise ValueError(f"a RowKey of {key.size} rows cannot draw shape {shape} "
                     f"(axis {axis} must be the rows)")
  inner = shape[:axis] + shape[axis + 1:]
  keys = jax.vmap(lambda i: jax.random.fold_in(key.key, i))(key.rows)
  return jax.vmap(lambda k: draw(k, inner), out_axes=axis)(keys)


def uniform(key: Key, shape=(), dtype=jnp.float32, minval=0.0, maxval=1.0):
  if isinstance(key, RowKey):
    return _per_row(lambda k, s: jax.random.uniform(k, s, dtype, minval, maxval), key, shape, 0)
  return jax.random.uniform(key, shape, dtype, minval, maxval)


def bernoulli(key: Key, p, shape):
  if isinstance(key, RowKey):
    return _per_row(lambda k, s: jax.random.bernoulli(k, p, s), key, shape, 0)
  return jax.random.bernoulli(key, p, shape)


def normal(key: Key, shape, dtype=jnp.float32):
  if isinstance(key, RowKey):
    return _per_row(lambda k, s: jax.random.normal(k, s, dtype), key, shape, 0)
  return jax.random.normal(key, shape, dtype)


def gumbel(key: Key, shape, dtype=jnp.float32):
  if isinstance(key, RowKey):
    return _per_row(lambda k, s: jax.random.gumbel(k, s, dtype), key, shape, 0)
  return jax.random.gumbel(key, shape, dtype)


def randint(key: Key, shape, minval, maxval, dtype=jnp.int32):
  if isinstance(key, RowKey):
    return _per_row(lambda k, s: jax.random.randint(k, s, minval, maxval, dtype), key, shape, 0)
  return jax.random.randint(key, shape, minval, maxval, dtype)


def beta(key: Key, a, b, shape):
  if isinstance(key, RowKey):
    return _per_row(lambda k, s: jax.random.beta(k, a, b, s), key, shape, 0)
  return jax.random.beta(key, a, b, shape)


def bits(key: Key, shape, dtype=jnp.uint32, row_axis: int = 0):
  """Random words; `row_axis`: the axis of `shape` that is the rows (for a RowKey)."""
  if isinstance(key, RowKey):
    return _per_row(lambda k, s: jax.random.bits(k, s, dtype), key, shape, row_axis)
  return jax.random.bits(key, shape, dtype)


def position_keys(key: Key, shape) -> jax.Array:
  """One typed PRNG key per position of a [rows, length] array: position p of row i gets
  fold_in(fold_in(key, i), p), i the row's global index (a RowKey's `rows`, else 0..rows-1).
  A draw made per position from them (`normal_at` of their key data) does not depend on which
  rows or positions share its array: whole, per microbatch, or a chunk of positions at a
  time (diffusion/chunks.py) give the same numbers."""
  n_rows, length = shape
  if isinstance(key, RowKey):
    if key.size != n_rows:
      raise ValueError(f"a RowKey of {key.size} rows cannot draw for {n_rows} rows")
    base, rows = key.key, key.rows
  else:
    base, rows = _typed(key), jnp.arange(n_rows, dtype=jnp.int32)
  positions = jnp.arange(length, dtype=jnp.int32)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(rows)
  return jax.vmap(lambda k: jax.vmap(lambda p: jax.random.fold_in(k, p))(positions))(row_keys)


def normal_at(key_data: jax.Array, n: int, impl, dtype=jnp.float32) -> jax.Array:
  """[..., n] standard normals, the n entries at [...] drawn from the key whose data is
  key_data[...] (uint32 [..., words]: `jax.random.key_data(position_keys(...))`, sliceable
  like any array); impl: those keys' PRNG implementation (`jax.random.key_impl`)."""
  lead = key_data.shape[:-1]
  keys = jax.random.wrap_key_data(key_data.reshape(-1, key_data.shape[-1]), impl=impl)
  draws = jax.vmap(lambda k: jax.random.normal(k, (n,), dtype))(keys)
  return draws.reshape(*lead, n)


def normal_per_position(key: Key, shape, dtype=jnp.float32) -> jax.Array:
  """Standard normals [rows, length, n] drawn position by position (`position_keys`)."""
  *rows_length, n = shape
  keys = position_keys(key, rows_length)
  return normal_at(jax.random.key_data(keys), n, jax.random.key_impl(keys), dtype)


def _typed(key: jax.Array) -> jax.Array:
  """A typed PRNG key (raw uint32 key data is wrapped with the default implementation)."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)
