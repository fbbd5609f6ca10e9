"""Losses over sequence positions taken a chunk of positions at a time (model.loss_chunk).

A loss whose per-position terms need [B, L, V] tensors (logits, soft targets, log-probs of
several networks) runs over chunks of `chunk` positions (all B rows), so that only one
chunk's [B, chunk, V] tensors are live at once. Arrays "per position" are [B, L, ...] and are
split on axis 1; L need not be a multiple of `chunk` (the last chunk is zero-padded, and the
caller's per-position weights must be 0 there, which `split` guarantees for weights it pads).

  chunk_map(fn, per_position, shared, chunk)   fn on every chunk, outputs [B, L, ...] again
  chunk_sum(fn, params, h, per_position, shared, chunk)
      sum over chunks of the scalar fn(params, h_c, per_position_c, shared), differentiable
      w.r.t. `params` and `h` with the gradient taken in the forward pass, chunk by chunk.
  remat_chunk_map(fn, params, per_position, shared, chunk)
      chunk_map of fn(params, per_position_c, shared), differentiable, each chunk recomputed
      in the backward pass (for outputs whose cotangents come from later layers).

Why the gradient is taken in the forward pass: a `jax.checkpoint`ed `lax.map` (what the MDLM
teacher's chunked loss did before) recomputes each chunk's whole forward in the backward pass:
one more output projection (2 B L d V FLOPs, ~9% of a DiT-small teacher step at V = 50k) for
the teacher, and for IDLM the projections of three networks, the teacher's and the fake's run
twice only to rebuild the residual of the student's gradient. `chunk_sum` instead computes
each chunk's value and its gradient w.r.t. (params, h_c) with `jax.value_and_grad` inside one
`lax.scan`, keeps the [B, L, d] gradient of h and the summed gradient of params (the output
layer's, not [B, L, V]), and its custom VJP scales them by the incoming cotangent. The result is the
gradient of the unchunked sum up to float32 summation order.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp


def n_chunks(length: int, chunk: int) -> int:
  """How many chunks of `chunk` positions cover `length`."""
  return -(-length // chunk)


def split(a: jax.Array, chunk: int) -> jax.Array:
  """[B, L, ...] -> [n, B, chunk, ...], positions zero-padded to n * chunk."""
  n = n_chunks(a.shape[1], chunk)
  a = jnp.pad(a, [(0, 0), (0, n * chunk - a.shape[1])] + [(0, 0)] * (a.ndim - 2))
  return jnp.moveaxis(a.reshape(a.shape[0], n, chunk, *a.shape[2:]), 1, 0)


def merge(a: jax.Array, length: int) -> jax.Array:
  """[n, B, chunk, ...] -> [B, length, ...] (the padding sliced off): the inverse of `split`."""
  a = jnp.moveaxis(a, 0, 1)
  return a.reshape(a.shape[0], -1, *a.shape[3:])[:, :length]


def chunk_map(fn: Callable, per_position: Any, shared: Any, chunk: int) -> Any:
  """fn(per_position_c, shared) on every chunk (`lax.map`), its [B, chunk, ...] outputs merged
  back to [B, L, ...]. Not for differentiation (use chunk_sum)."""
  length = jax.tree.leaves(per_position)[0].shape[1]
  out = jax.lax.map(lambda pp: fn(pp, shared),
                    jax.tree.map(functools.partial(split, chunk=chunk), per_position))
  return jax.tree.map(lambda o: merge(o, length), out)


def remat_chunk_map(fn: Callable, params: Any, per_position: Any, shared: Any,
                    chunk: int) -> Any:
  """`chunk_map` of fn(params, per_position_c, shared), differentiable w.r.t. `params` and
  `per_position`: each chunk's forward is recomputed in the backward pass (`jax.checkpoint`),
  so only the chunk inputs are kept, never a chunk's [B, chunk, V] intermediates. For maps
  whose outputs' cotangents are known only after later layers ran (IDLM-Duo's soft inputs,
  embedded by teacher and fake), where `chunk_sum` cannot take the gradient in the forward.
  `shared` gets no gradient (stop_gradient it)."""
  length = jax.tree.leaves(per_position)[0].shape[1]
  body = jax.checkpoint(lambda pp: fn(params, pp, shared))
  out = jax.lax.map(body, jax.tree.map(functools.partial(split, chunk=chunk), per_position))
  return jax.tree.map(lambda o: merge(o, length), out)


def _chunks_and_zero(fn, params, h, per_position, shared, chunk):
  """(the chunked scan inputs, a zero of fn's value type)."""
  xs = tuple(jax.tree.map(functools.partial(split, chunk=chunk), a) for a in (h, per_position))
  first = jax.tree.map(lambda a: a[0], xs)
  value = jax.eval_shape(fn, params, first[0], first[1], shared)
  return xs, jnp.zeros(value.shape, value.dtype)


def _sum(fn, params, h, per_position, shared, chunk):
  """The primal: sum over chunks of fn (no gradient kept)."""
  xs, zero = _chunks_and_zero(fn, params, h, per_position, shared, chunk)

  def body(total, x):
    return total + fn(params, x[0], x[1], shared), None

  return jax.lax.scan(body, zero, xs)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5))
def chunk_sum(fn: Callable, params: Any, h: jax.Array, per_position: Any, shared: Any,
              chunk: int) -> jax.Array:
  """sum_c fn(params, h_c, per_position_c, shared) over the position chunks c -> scalar.

  h: an array [B, L, ...] or a pytree of them (several networks' features, all differentiated).
  fn(params, h_c [B, chunk, ...], per_position_c, shared) -> scalar must give 0 (and a zero
  gradient) on padded positions, and may close over functions and constants but not over
  traced arrays (pass those in `per_position` or `shared`).
  forward: one `lax.scan` over the chunks that also takes each chunk's gradient w.r.t.
  (params, h_c); gradient: those, times the cotangent. `per_position` and `shared` get zero
  cotangents (hold no differentiated value there: stop_gradient them).
  """
  return _sum(fn, params, h, per_position, shared, chunk)


def _chunk_sum_fwd(fn, params, h, per_position, shared, chunk):
  length = jax.tree.leaves(h)[0].shape[1]
  value_and_grad = jax.value_and_grad(fn, argnums=(0, 1))

  def body(carry, x):
    total, d_params = carry
    value, (g_params, g_h) = value_and_grad(params, x[0], x[1], shared)
    return (total + value, jax.tree.map(jnp.add, d_params, g_params)), g_h

  xs, zero = _chunks_and_zero(fn, params, h, per_position, shared, chunk)
  init = (zero, jax.tree.map(jnp.zeros_like, params))
  (total, d_params), d_h = jax.lax.scan(body, init, xs)
  return total, (d_params, jax.tree.map(lambda d: merge(d, length), d_h))


def _chunk_sum_bwd(fn, chunk, res, g):
  del fn, chunk
  d_params, d_h = res
  scale = lambda d: (g * d).astype(d.dtype)
  return jax.tree.map(scale, d_params), jax.tree.map(scale, d_h), None, None  # None: zero


chunk_sum.defvjp(_chunk_sum_fwd, _chunk_sum_bwd)
