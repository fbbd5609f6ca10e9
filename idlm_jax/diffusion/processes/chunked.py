"""IDLM's pieces over chunks of positions (model.loss_chunk > 0): MDLM ("simplex") and absorbing
SEDD, whose re-noised student sample is hard tokens (`hard_renoise`), and Duo/UDLM, whose
teacher and fake read a soft [B, L, V] input (`soft_renoise`).

Everything IDLM computes from a network's [B, L, V] output is position by position once the
re-noised x_t2 is drawn, so a family gives two maps of one chunk's logits (`LogitMaps`) and
its per-position losses (InverseParts.fake_loss / inverse_loss), and the builders below make
the ChunkedInverse from them:
  - hard: the draw of x_t2 ~ Cat(alpha G + (1 - alpha) e_mask) runs chunk by chunk from the
    random words of the unchunked draw (categorical.inverse_cdf_words): the same tokens;
  - soft (Duo): the Gaussian noise of the student's input and of the re-noised latent is drawn
    position by position (rng.position_keys), so a chunk draws its own slice of the unchunked
    noise. The soft inputs softmax(w / tau) are embedded chunk by chunk
    (chunks.remat_chunk_map): only [B, L, d] embeddings are kept, and the backward pass
    recomputes each chunk (the student's G, w, the softmax, one [c, V] x [V, d] product per
    network), because the embeddings' cotangents come from the teacher's and fake's blocks;
  - the losses run through diffusion/chunks.chunk_sum, which takes each chunk's loss and its
    gradient w.r.t. the trained network's head parameters and output features in the forward
    pass (for Duo's pathwise gradient also w.r.t. the teacher's and fake's features). The
    student's G is needed whole before teacher and fake can run, and again in the loss: one
    more output projection of the student per loss (2 B L d V FLOPs).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from idlm_jax import rng
from idlm_jax.diffusion import categorical, chunks, relax, uniform
from idlm_jax.diffusion.processes.base import ChunkedInverse, Renoised


class LogitMaps(NamedTuple):
  """A family's maps of one chunk of network logits [B, c, V] (float32 or compute dtype).

  student(logits, x_t, sigma) -> G [B, c, V]: the student's soft x0 (x_t [B, c], sigma [B]).
  output(logits, r) -> the network's log-output that the family's losses read, for a chunk's
    Renoised r (tokens [B, c], sigma and weight [B]).
  """

  student: Callable
  output: Callable


class Net(NamedTuple):
  """A network as the chunked pieces call it: features(x, sigma, dropout_key) -> h [B, L, d]
  (with the batch's key padding mask where it has one), and the module, whose head() (and for
  soft inputs embedding() and features_from_embedding()) they read (models.DIT)."""

  features: Callable
  module: Any


class Student(NamedTuple):
  """The student's noised input x_t [B, L] (Duo: the clean x0 its latent is made of), its time
  sigma [B] and output features h [B, L, d]."""

  x_t: jax.Array
  sigma: jax.Array
  h: jax.Array


def _chunk_r(r: Renoised, x2: jax.Array) -> Renoised:
  """r restricted to a chunk's tokens (sigma, weight and extra are per row: [B])."""
  return r._replace(net_in=x2, tokens=x2)


def _rows(r: Renoised) -> Renoised:
  """r without its per-position arrays (what every chunk shares), no gradient."""
  return jax.lax.stop_gradient(r._replace(net_in=(), tokens=()))


def _hard_features(s_head, st, r: Renoised, nets, dropout_keys):
  """Teacher's / fake's features of hard tokens: each network on r.net_in."""
  del s_head, st
  return tuple(n.features(r.net_in, r.sigma, k) for n, k in zip(nets, dropout_keys)), r


def losses(maps: LogitMaps, fake_loss: Callable, inverse_loss: Callable, chunk: int,
           pathwise: bool = False):
  """(chunked_fake_loss, chunked_inverse_loss) of ChunkedInverse from a family's per-position
  losses. pathwise: the inverse loss is differentiated also w.r.t. the teacher's and fake's
  features (their input depends on the student's G: Duo), not only w.r.t. the student's."""

  def chunked_fake_loss(s_head, st: Student, f_head, h_fake, r: Renoised, weights):
    s_project, f_project = s_head[0], f_head[0]  # fn may close over functions, not arrays

    def fn(f_params, h_f, pp, shared):
      h_s, x_t, x2, w = pp
      s_params, sigma_s, r_rows = shared
      rc = _chunk_r(r_rows, x2)
      G = maps.student(s_project(s_params, h_s), x_t, sigma_s)
      return jnp.sum(w * fake_loss(maps.output(f_project(f_params, h_f), rc), rc, G))

    pp = jax.lax.stop_gradient((st.h, st.x_t, r.tokens, weights))
    shared = jax.lax.stop_gradient((s_head[1], st.sigma)) + (_rows(r),)
    return chunks.chunk_sum(fn, f_head[1], h_fake, pp, shared, chunk)

  def chunked_inverse_loss(s_head, st: Student, t_head, h_teacher, f_head, h_fake,
                           r: Renoised, weights):
    s_project, t_project, f_project = s_head[0], t_head[0], f_head[0]

    def fn(s_params, h, pp, shared):
      if pathwise:
        (h_s, h_t, h_f), (x_t, x2, w) = h, pp
      else:
        h_s, (x_t, h_t, h_f, x2, w) = h, pp
      t_params, f_params, sigma_s, r_rows = shared
      rc = _chunk_r(r_rows, x2)
      out_t = maps.output(t_project(t_params, h_t), rc)
      out_f = maps.output(f_project(f_params, h_f), rc)
      G = maps.student(s_project(s_params, h_s), x_t, sigma_s)
      return jnp.sum(w * inverse_loss(out_t, out_f, rc, G))

    if pathwise:
      h, pp = (st.h, h_teacher, h_fake), (st.x_t, r.tokens, weights)
    else:
      h, pp = st.h, (st.x_t, h_teacher, h_fake, r.tokens, weights)
    shared = jax.lax.stop_gradient((t_head[1], f_head[1], st.sigma)) + (_rows(r),)
    return chunks.chunk_sum(fn, s_head[1], h, jax.lax.stop_gradient(pp), shared, chunk)

  return chunked_fake_loss, chunked_inverse_loss


def hard_renoise(maps: LogitMaps, fake_loss: Callable, inverse_loss: Callable,
                 student_input: Callable, renoise_time: Callable, mask_id: int,
                 chunk: int) -> ChunkedInverse:
  """ChunkedInverse of a family with hard re-noising. fake_loss / inverse_loss: the family's
  per-position InverseParts losses; student_input(batch, key) -> (x_t, sigma) and
  renoise_time(key, n) -> (k_x, alpha, sigma, weight): the draws of its unchunked pieces."""

  def student(net: Net, batch, key, dropout_key) -> Student:
    x_t, sigma = student_input(batch, key)
    return Student(x_t, sigma, net.features(x_t, sigma, dropout_key))

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

  return ChunkedInverse(student, renoise, *losses(maps, fake_loss, inverse_loss, chunk),
                        features=_hard_features)


def embed_latent(module, x0: jax.Array, gamma: jax.Array, key, tau: float, chunk: int):
  """(e, z_t): the network's input embedding [B, L, d] of softmax(w_t / tau) and the hard
  z_t = argmax w_t [B, L], for Duo's latent w_t = alpha~ onehot(x0) + sigma~ eps
  (uniform.gaussian_latent from `key`: the same noise), a chunk of positions at a time,
  differentiable w.r.t. the embedding table (recomputed per chunk in the backward pass)."""
  keys = rng.position_keys(key, x0.shape)
  embed, params = module.embedding()
  impl, vocab = jax.random.key_impl(keys), module.vocab_size

  def fn(p, pp, gamma_s):
    x0_c, keys_c = pp
    w = uniform.latent_of(x0_c, gamma_s, rng.normal_at(keys_c, vocab, impl))
    return embed(p, uniform.relaxed_input(w, tau)), jnp.argmax(w, axis=-1).astype(x0.dtype)

  return chunks.remat_chunk_map(fn, params, (x0, jax.random.key_data(keys)),
                                jax.lax.stop_gradient(gamma), chunk)


def soft_renoise(maps: LogitMaps, fake_loss: Callable, inverse_loss: Callable,
                 student_input: Callable, renoise_time: Callable, tau: float, stop_path: bool,
                 chunk: int) -> ChunkedInverse:
  """ChunkedInverse of IDLM-Duo (processes/uniform.py), whose networks read soft inputs.

  student_input(batch, key) -> (x0, gamma [B], sigma [B], k_w): the student's latent
    w = alpha~(gamma) onehot(x0) + sigma~(gamma) eps, eps per position from k_w;
  renoise_time(key, n) -> (k_xi, alpha_tilde [B], Renoised fields sigma, weight, extra): the
    re-noised latent w2 = alpha~ G + sqrt(1 - alpha~^2) xi, xi per position from k_xi.
  Both draws equal the unchunked pieces' (uniform.gaussian_latent, rng.normal_per_position).
  The Renoised of `renoise` holds (the position keys of xi, alpha~) as net_in and no tokens
  yet; `features` embeds softmax(w2 / tau) for teacher and fake and sets tokens = argmax w2.
  """

  def student(net: Net, batch, key, dropout_key) -> Student:
    x0, gamma, sigma, k_w = student_input(batch, key)
    e, _ = embed_latent(net.module, x0, gamma, k_w, tau, chunk)
    return Student(x0, sigma, net.module.features_from_embedding(e, sigma,
                                                                 dropout_key=dropout_key))

  def renoise(head, st: Student, key) -> Renoised:
    del head
    k_xi, alpha_tilde, sigma, weight, extra = renoise_time(key, st.x_t.shape[0])
    keys = rng.position_keys(k_xi, st.x_t.shape)
    return Renoised((keys, alpha_tilde), None, sigma, weight, extra)

  def features(s_head, st: Student, r: Renoised, nets, dropout_keys):
    keys, alpha_tilde = r.net_in
    impl = jax.random.key_impl(keys)
    project = s_head[0]
    embeds = tuple(n.module.embedding() for n in nets)
    fns = tuple(e[0] for e in embeds)

    def fn(params, pp, shared):
      s_params, e_params = params
      h_s, x_t, keys_c = pp
      sigma_s, alpha_t = shared
      G = maps.student(project(s_params, h_s), x_t, sigma_s)
      xi = rng.normal_at(keys_c, G.shape[-1], impl)
      soft, z = relax.duo_soft_input(G, alpha_t, xi, tau, stop_path)
      return tuple(f(p, soft) for f, p in zip(fns, e_params)), z

    params = (s_head[1], tuple(e[1] for e in embeds))
    pp = (st.h, jax.lax.stop_gradient(st.x_t), jax.random.key_data(keys))
    es, z = chunks.remat_chunk_map(fn, params, pp,
                                   jax.lax.stop_gradient((st.sigma, alpha_tilde)), chunk)
    hs = tuple(n.module.features_from_embedding(e, r.sigma, dropout_key=k)
               for n, e, k in zip(nets, es, dropout_keys))
    return hs, r._replace(net_in=z, tokens=z)

  return ChunkedInverse(student, renoise,
                        *losses(maps, fake_loss, inverse_loss, chunk, pathwise=not stop_path),
                        features=features)
