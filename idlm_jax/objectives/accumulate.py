"""Exact gradient accumulation: a step's batch as k microbatches inside the jitted step.

train.microbatches = k splits every batch a step reads into k microbatches that `lax.scan`
runs one after the other, summing the gradients (and the additive metrics), before the one
optimizer update of the step. Peak activation memory is that of B/k rows; the parameters,
optimizer moments and one gradient accumulator stay.

Exactness: the noise of a row is drawn from the step key and the row's index in the whole
batch (`rng.RowKey`, idlm_jax/rng.py), so a microbatch draws exactly the noise its rows get in
the unsplit step, and the step is the unsplit step's up to float32 rounding:
  - a loss that is a mean over the batch's tokens, S / N with N independent of the parameters
    (`mean_grad`): each microbatch's gradient of its own mean is weighted by its count and
    the sum divided by the total count, grad(S / N) = sum_j N_j grad(S_j / N_j) / N;
  - a loss whose normalisers are known before the networks run (`sum_grad`, the caller divides
    each microbatch's sums by the batch's normalisers): the gradients add up.
Microbatch j holds the rows j, j + k, j + 2k, ...: with the batch split over D devices in
contiguous blocks of B / D rows (a multiple of k), every microbatch has B / (D k) rows on each
device, so the split moves no data between devices.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from idlm_jax import fields as F
from idlm_jax import rng
from idlm_jax.fields import Field

FIELDS = {
    "train.microbatches": Field(
        1, "gradient accumulation: each step's batch runs as this many microbatches inside the "
        "jitted step (lax.scan), one optimizer update; the same result as one step on the "
        "whole batch (float32 rounding apart), activations of global_batch_size / microbatches "
        "rows. global_batch_size must be a multiple of devices x microbatches "
        "(docs/scaling.md).", check=F.positive),
}


def batch_size(batch) -> int:
  """Rows of a batch (the leading dimension of its arrays)."""
  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(f"a batch's arrays disagree on the number of rows: {sorted(sizes)}")
  return sizes.pop()


def split(batch, k: int):
  """[k, B / k, ...] per array: microbatch j holds the rows j, j + k, j + 2k, ..."""
  n = batch_size(batch)
  if n % k:
    raise ValueError(f"train.microbatches: {k} does not divide the batch of {n} rows")
  return jax.tree.map(lambda x: x.reshape(n // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def rows(j, k: int, m: int) -> jax.Array:
  """Global indices of the rows of microbatch j (of m rows) among k microbatches."""
  return j + k * jnp.arange(m, dtype=jnp.int32)


def sum_over(fn: Callable, xs):
  """sum_j fn(x_j) over the leading axis of the pytree xs, one j after the other (lax.scan;
  a single j is a plain call). fn's outputs must be additive."""
  return sum_and_stack(lambda x: (fn(x), ()), xs)[0]


def sum_and_stack(fn: Callable, xs):
  """(sum_j a_j, [b_0, ..., b_{k-1}]) for fn(x_j) = (a_j, b_j) over the leading axis of the
  pytree xs, one j after the other (lax.scan; a single j is a plain call): a is additive, b's
  leaves are stacked along a new leading axis of size k."""
  n = batch_size(xs)
  if n == 1:
    total, each = fn(jax.tree.map(lambda x: x[0], xs))
    return total, jax.tree.map(lambda v: v[None], each)

  def body(carry, x):
    total, each = fn(x)
    return jax.tree.map(jnp.add, carry, total), each

  shapes = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], xs))[0]
  init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return jax.lax.scan(body, init, xs)


def scan_microbatches(fn: Callable, batch, key: jax.Array, k: int):
  """sum_j fn(microbatch_j, RowKey of its rows) over the k microbatches (a pytree of arrays).

  k = 1 calls fn once on the whole batch (RowKey of every row). fn's outputs must be additive
  (sums, gradients of sums).
  """
  n = batch_size(batch)
  if k == 1:
    return fn(batch, rng.all_rows(key, n))
  m = n // k
  return sum_over(lambda x: fn(x[1], rng.row_key(key, rows(x[0], k, m), n)),
                  (jnp.arange(k, dtype=jnp.int32), split(batch, k)))


def sum_grad(loss_fn: Callable, params, batch, key: jax.Array, k: int, *args):
  """((loss, aux), grads) of loss_fn(params, microbatch, row_key, *args) -> (loss, aux)
  summed over the k microbatches: for losses that are sums over rows (each microbatch already
  divided by the whole batch's normalisers). aux must be additive."""
  vg = jax.value_and_grad(loss_fn, has_aux=True)
  return scan_microbatches(lambda mb, rk: vg(params, mb, rk, *args), batch, key, k)


def mean_grad(loss_fn: Callable, params, batch, key: jax.Array, k: int, *args):
  """(loss, count, grads, aux) of a per-token mean loss over the whole batch from
  loss_fn(params, microbatch, row_key, *args) -> (mean, (count, aux)), mean = S_j / max(N_j, 1)
  with the count N_j independent of the parameters: loss = S / max(N, 1), grads its gradient.
  k = 1 is the plain value_and_grad. aux must be additive."""
  vg = jax.value_and_grad(loss_fn, has_aux=True)
  if k == 1:
    (loss, (count, aux)), grads = vg(params, batch, rng.all_rows(key, batch_size(batch)), *args)
    return loss, count, grads, aux

  def one(mb, rk):
    (loss, (count, aux)), grads = vg(params, mb, rk, *args)
    w = jnp.maximum(count, 1.0)
    return loss * w, count, jax.tree.map(lambda g: g * w, grads), aux

  loss, count, grads, aux = scan_microbatches(one, batch, key, k)
  norm = jnp.maximum(count, 1.0)
  return loss / norm, count, jax.tree.map(lambda g: g / norm, grads), aux
