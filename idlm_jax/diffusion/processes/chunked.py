"""IDLM's pieces over chunks of positions (model.loss_chunk > 0) for the families whose
re-noised student sample is hard tokens: MDLM ("simplex") and absorbing SEDD.

Everything IDLM computes from a network's [B, L, V] output is position by position once the
re-noised x_t2 is drawn, so a family gives two maps of one chunk's logits (`LogitMaps`) and
its per-position losses (InverseParts.fake_loss / inverse_loss), and `hard_renoise` builds the
ChunkedInverse from them:
  - the draw of x_t2 ~ Cat(alpha G + (1 - alpha) e_mask) runs chunk by chunk from the random
    words of the unchunked draw (categorical.inverse_cdf_words): the same tokens;
  - the losses run through diffusion/chunks.chunk_sum, which takes each chunk's loss and its
    gradient w.r.t. the trained network's head parameters and output features in the forward
    pass. The student's G is needed whole for the draw before teacher and fake can run, and
    again in the loss: one more output projection of the student per loss (2 B L d V FLOPs).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from idlm_jax.diffusion import categorical, chunks, relax
from idlm_jax.diffusion.processes.base import ChunkedInverse, Renoised


class LogitMaps(NamedTuple):
  """A family's maps of one chunk of network logits [B, c, V] (float32 or compute dtype).

  student(logits, x_t, sigma) -> G [B, c, V]: the student's soft x0 (x_t [B, c], sigma [B]).
  output(logits, r) -> the network's log-output that the family's losses read, for a chunk's
    Renoised r (tokens [B, c], sigma and weight [B]).
  """

  student: Callable
  output: Callable


class Student(NamedTuple):
  """The student's noised input x_t [B, L], its time sigma [B] and output features h [B, L, d]."""

  x_t: jax.Array
  sigma: jax.Array
  h: jax.Array


def _chunk_r(r: Renoised, x2: jax.Array) -> Renoised:
  """r restricted to a chunk's tokens (the [B] sigma and weight are the rows')."""
  return Renoised(x2, x2, r.sigma, r.weight)


def hard_renoise(maps: LogitMaps, fake_loss: Callable, inverse_loss: Callable,
                 student_input: Callable, renoise_time: Callable, mask_id: int,
                 chunk: int) -> ChunkedInverse:
  """ChunkedInverse of a family with hard re-noising. fake_loss / inverse_loss: the family's
  per-position InverseParts losses; student_input(batch, key) -> (x_t, sigma) and
  renoise_time(key, n) -> (k_x, alpha, sigma, weight): the draws of its unchunked pieces."""

  def student(features, batch, key, dropout_key) -> Student:
    x_t, sigma = student_input(batch, key)
    return Student(x_t, sigma, features(x_t, sigma, dropout_key))

  def renoise(head, st: Student, key) -> Renoised:
    project = head[0]
    k_x, alpha, sigma, weight = renoise_time(key, st.x_t.shape[0])
    words = jnp.moveaxis(categorical.inverse_cdf_words(k_x, st.x_t.shape), 0, -1)  # [B, L, 2]

    def draw(pp, shared):
      h, x_t, w = pp
      params, sigma_s = shared
      G = maps.student(project(params, h), x_t, sigma_s)
      log_q = relax.mdlm_q_log_probs(G, alpha, mask_id)
      return categorical.inverse_cdf_from_words(jnp.moveaxis(w, -1, 0), log_q)

    x2 = chunks.chunk_map(draw, jax.lax.stop_gradient((st.h, st.x_t, words)),
                          jax.lax.stop_gradient((head[1], st.sigma)), chunk)
    return Renoised(x2, x2, sigma, weight)

  def chunked_fake_loss(s_head, st: Student, f_head, h_fake, r: Renoised, weights):
    s_project, f_project = s_head[0], f_head[0]  # fn may close over functions, not arrays

    def fn(f_params, h_f, pp, shared):
      h_s, x_t, x2, w = pp
      s_params, sigma_s, r_rows = shared
      rc = _chunk_r(r_rows, x2)
      G = maps.student(s_project(s_params, h_s), x_t, sigma_s)
      return jnp.sum(w * fake_loss(maps.output(f_project(f_params, h_f), rc), rc, G))

    pp = jax.lax.stop_gradient((st.h, st.x_t, r.tokens, weights))
    shared = jax.lax.stop_gradient((s_head[1], st.sigma, r._replace(net_in=(), tokens=())))
    return chunks.chunk_sum(fn, f_head[1], h_fake, pp, shared, chunk)

  def chunked_inverse_loss(s_head, st: Student, t_head, h_teacher, f_head, h_fake,
                           r: Renoised, weights):
    s_project, t_project, f_project = s_head[0], t_head[0], f_head[0]

    def fn(s_params, h_s, pp, shared):
      x_t, h_t, h_f, x2, w = pp
      t_params, f_params, sigma_s, r_rows = shared
      rc = _chunk_r(r_rows, x2)
      out_t = maps.output(t_project(t_params, h_t), rc)
      out_f = maps.output(f_project(f_params, h_f), rc)
      G = maps.student(s_project(s_params, h_s), x_t, sigma_s)
      return jnp.sum(w * inverse_loss(out_t, out_f, rc, G))

    pp = jax.lax.stop_gradient((st.x_t, h_teacher, h_fake, r.tokens, weights))
    shared = jax.lax.stop_gradient((t_head[1], f_head[1], st.sigma,
                                    r._replace(net_in=(), tokens=())))
    return chunks.chunk_sum(fn, s_head[1], st.h, pp, shared, chunk)

  return ChunkedInverse(student, renoise, chunked_fake_loss, chunked_inverse_loss)
