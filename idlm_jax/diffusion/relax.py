"""Gradient-stable relaxations of the student's discrete output for IDLM (reference/idlm.md §2).

Pure functions of arrays (no Flax). Each relaxation whose gradient is a deliberate choice is a
`jax.custom_vjp` whose docstring states "forward: ...; gradient: ..."; array arguments are
never `nondiff_argnums` (reference/jax_anchors.md §4.8): integer/key inputs get `None`
cotangents. Shapes: G, logits, log-probs are [B, L, V]; alpha_t / weights are [B] (or [B, L]).

  simplex / soft_label_nll    §2.1  G = softmax(logits) as a soft x0 (plain autodiff is exact)
  mdlm_hard_sample            §2.2  x_t ~ Cat(alpha_t G + (1 - alpha_t) e_mask), no gradient
  mdlm_inverse_token_loss     §2.2  surrogate with dL/dG = lambda_t (log f - log f*) at masks
  duo_soft_input              §2.3  softmax(w / tau), argmax(w), w = a~ G + sqrt(1 - a~^2) xi
  gumbel_softmax              §2.4  ablation: soft Gumbel sample
  straight_through            §2.4  ablation: hard one-hot forward, softmax gradient
  get_relaxation(name)              registry {"simplex", "gumbel", "straight_through"}
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from idlm_jax import rng
from idlm_jax.diffusion import categorical


def _compute_dtype(x: jax.Array):
  """float32 for bf16/f16/f32 inputs; float64 stays float64 (exact x64 finite-difference tests)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _per_seq(x: jax.Array, ndim: int) -> jax.Array:
  """Broadcast a per-sequence [B] (or per-position [B, L]) quantity against a rank-`ndim` array."""
  x = jnp.asarray(x)
  return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _softmax_vjp(s: jax.Array, g: jax.Array, tau) -> jax.Array:
  """Stable VJP of s = softmax(x / tau) w.r.t. x: s * (g - <s, g>) / tau, from the forward s."""
  g = g.astype(s.dtype)
  return s * (g - jnp.sum(s * g, axis=-1, keepdims=True)) / tau


# ------------------------------------------------------------------ §2.1 simplex relaxation


def simplex(logits: jax.Array) -> jax.Array:
  """The student's soft x0: G = softmax(logits) over the last axis, in float32 (or float64).

  forward: softmax(logits); gradient: plain autodiff (the teacher losses use x0 linearly, so
  the relaxed loss is the exact expected loss under Cat(G); no custom rule is needed).
  """
  return jax.nn.softmax(logits.astype(_compute_dtype(logits)), axis=-1)


def soft_label_nll(log_probs: jax.Array, G: jax.Array,
                   weights: jax.Array | None = None) -> jax.Array:
  """Soft-label cross-entropy per position [B, L]: -weights * sum_v G_v log p_v.

  Equals E_{x0 ~ Cat(G)}[-weights log p(x0)] (the expected one-hot loss under G). `weights` is
  broadcast against [B, L] ([B] is taken per sequence), e.g. lambda_t * 1[x_t = mask] for the
  MDLM fake step. Plain autodiff: d/dG = -weights log p, d/dlog p = -weights G. Under SUBS the
  unmasked rows of log p hold NEG_INF = -1e6 off x_t; give those positions weight 0.
  """
  dtype = _compute_dtype(log_probs)
  nll = -jnp.sum(G.astype(dtype) * log_probs.astype(dtype), axis=-1)
  if weights is None:
    return nll
  return _per_seq(weights, nll.ndim).astype(dtype) * nll


# ------------------------------------------------------------------ §2.2 MDLM: hard x_t, SUBS


def mdlm_q_log_probs(G: jax.Array, alpha_t: jax.Array, mask_id: int, dtype=None) -> jax.Array:
  """log q_t(. | G) = log(alpha_t G + (1 - alpha_t) e_mask) [B, L, V] (-inf where the mass is 0)."""
  dtype = dtype or _compute_dtype(G)
  a = _per_seq(alpha_t, G.ndim).astype(dtype)
  is_mask = jnp.arange(G.shape[-1]) == mask_id
  probs = a * G.astype(dtype) + jnp.where(is_mask, 1.0 - a, 0.0).astype(dtype)
  return jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)


def mdlm_hard_sample(key: jax.Array, G: jax.Array, alpha_t: jax.Array, mask_id: int,
                     precision: str = "float64") -> jax.Array:
  """x_t ~ Cat(alpha_t G + (1 - alpha_t) e_mask) per position -> int32 [B, L].

  forward: one hard categorical draw per position (categorical.sample_categorical at
  `precision`, one of categorical.DRAWS; "float64" needs x64 while tracing, see
  categorical.x64_scope, "exact32" and "inverse_cdf" do not);
  gradient: none. G is stop-gradiented and the output is integer: the sampled tokens carry no
  gradient, the only path to G is through the loss weights (mdlm_inverse_token_loss).
  """
  G = jax.lax.stop_gradient(G)
  dtype = jnp.float64 if precision == "float64" and jax.config.jax_enable_x64 else jnp.float32
  log_q = mdlm_q_log_probs(G, jax.lax.stop_gradient(alpha_t), mask_id, dtype)
  return categorical.sample_categorical(key, log_q, precision)


def _inverse_diff(log_f_teacher, log_f_fake, xt, mask_id, dtype):
  """(log f - log f*) at masked positions, 0 elsewhere [B, L, V]."""
  diff = log_f_fake.astype(dtype) - log_f_teacher.astype(dtype)
  return jnp.where((xt == mask_id)[..., None], diff, 0.0)


@jax.custom_vjp
def mdlm_inverse_token_loss(G: jax.Array, log_f_teacher: jax.Array, log_f_fake: jax.Array,
                            xt: jax.Array, weight_t: jax.Array, mask_id) -> jax.Array:
  """The IDLM-MDLM generator surrogate per position [B, L] (idlm.md §3.4, generator step).

  forward: lambda_t <G_l, log f_l - log f*_l> at masked l (x_t[l] = mask_id), 0 at unmasked l
  (= h(log f*) - h(log f) with h(ell) = -lambda_t <G, ell>; under SUBS the unmasked terms cancel
  exactly); weight_t = lambda_t is [B] or [B, L]. Log-probs are the SUBS outputs [B, L, V].
  gradient: d/dG_{l,v} = lambda_t (log f_{l,v} - log f*_{l,v}) at masked l, 0 elsewhere;
  teacher/fake log-probs and weight_t get zero cotangents (frozen networks, constant weight:
  "gradient only through the loss weights"); xt and mask_id (integers) get None.
  With G = softmax(z): d/dz_i = -lambda_t G_i (a_i - <G, a>), a = log f* - log f (§1.3).
  """
  dtype = _compute_dtype(G)
  diff = _inverse_diff(log_f_teacher, log_f_fake, xt, mask_id, dtype)
  return _per_seq(weight_t, xt.ndim).astype(dtype) * jnp.sum(G.astype(dtype) * diff, axis=-1)


def _inverse_fwd(G, log_f_teacher, log_f_fake, xt, weight_t, mask_id):
  out = mdlm_inverse_token_loss(G, log_f_teacher, log_f_fake, xt, weight_t, mask_id)
  return out, (G, log_f_teacher, log_f_fake, xt, weight_t, mask_id)


def _inverse_bwd(res, g):
  G, log_f_teacher, log_f_fake, xt, weight_t, mask_id = res
  dtype = _compute_dtype(G)
  diff = _inverse_diff(log_f_teacher, log_f_fake, xt, mask_id, dtype)
  lam = _per_seq(weight_t, xt.ndim).astype(dtype)
  dG = ((g.astype(dtype) * lam)[..., None] * diff).astype(G.dtype)
  return dG, None, None, None, None, None  # None: a zero cotangent


mdlm_inverse_token_loss.defvjp(_inverse_fwd, _inverse_bwd)


# ------------------------------------------------------------------ §2.3 Duo: Gaussian + low tau


@jax.custom_vjp
def tempered_softmax(x: jax.Array, tau) -> jax.Array:
  """softmax(x / tau) over the last axis, with a VJP that stays finite as tau -> 0.

  forward: softmax(x / tau) in float32 (float64 inputs stay float64), max-subtracted;
  gradient: d/dx = s * (g - <s, g>) / tau from the forward s (no exp(x / tau) in the backward
  pass, so tau = 1e-3 with large x is finite); tau is a fixed hyper-parameter: zero cotangent.
  """
  return jax.nn.softmax(x.astype(_compute_dtype(x)) / tau, axis=-1)


def _tempered_fwd(x, tau):
  s = tempered_softmax(x, tau)
  return s, (s, tau, jnp.zeros((), x.dtype))


def _tempered_bwd(res, g):
  s, tau, x_proto = res
  return _softmax_vjp(s, g, tau).astype(x_proto.dtype), None


tempered_softmax.defvjp(_tempered_fwd, _tempered_bwd)


def duo_latent(G: jax.Array, alpha_tilde: jax.Array, xi: jax.Array) -> jax.Array:
  """w = alpha~ G + sqrt(1 - alpha~^2) xi [B, L, V] (uniform.gaussian_latent with soft x0)."""
  dtype = _compute_dtype(G)
  a = _per_seq(alpha_tilde, G.ndim).astype(dtype)
  return a * G.astype(dtype) + jnp.sqrt(1.0 - a * a) * xi.astype(dtype)


def duo_soft_input(G: jax.Array, alpha_tilde: jax.Array, xi: jax.Array, tau,
                   stop_path: bool = False) -> tuple[jax.Array, jax.Array]:
  """The teacher/fake input of IDLM-Duo: (softmax(w / tau) [B, L, V], argmax(w) int32 [B, L]).

  forward: w = alpha~ G + sqrt(1 - alpha~^2) xi (xi ~ N(0, I) drawn by the caller), the soft
  input softmax(w / tau) = uniform.relaxed_input(w, tau) and the hard token argmax(w);
  gradient: pathwise through softmax(w / tau) to G (tempered_softmax's stable VJP, times
  alpha~); the argmax carries none. stop_path=True (the DMD-like ablation) uses sg(G) in w:
  no gradient reaches G through the soft input, only through the caller's explicit G terms.
  """
  G_path = jax.lax.stop_gradient(G) if stop_path else G
  w = duo_latent(G_path, alpha_tilde, xi)
  z = jnp.argmax(jax.lax.stop_gradient(w), axis=-1).astype(jnp.int32)
  return tempered_softmax(w, tau), z


# ------------------------------------------------------------------ §2.4 ablation relaxations


@jax.custom_vjp
def gumbel_softmax(key: jax.Array, log_q: jax.Array, tau) -> jax.Array:
  """Soft Gumbel sample softmax((log_q + g) / tau), g ~ Gumbel(0, 1) from `key` [..., V].

  forward: softmax((log_q + g) / tau) with g = rng.gumbel(key, log_q.shape) (float32;
  -inf entries of log_q get probability 0); gradient: pathwise (reparameterised) w.r.t. log_q,
  d/dlog_q = s * (gbar - <s, gbar>) / tau from the forward s (stable at low tau); key: None;
  tau: zero cotangent.
  """
  return _gumbel_fwd(key, log_q, tau)[0]


def _gumbel_fwd(key, log_q, tau):
  dtype = _compute_dtype(log_q)
  g = rng.gumbel(key, log_q.shape, jnp.float32).astype(dtype)
  x = log_q.astype(dtype) + g
  s = jax.nn.softmax(jnp.where(jnp.isneginf(log_q), -jnp.inf, x) / tau, axis=-1)
  return s, (s, tau, jnp.zeros((), log_q.dtype))


def _gumbel_bwd(res, g):
  s, tau, q_proto = res
  return None, _softmax_vjp(s, g, tau).astype(q_proto.dtype), None


gumbel_softmax.defvjp(_gumbel_fwd, _gumbel_bwd)


def _straight_through_fwd(key, log_q, precision):
  x = sample_token(key, log_q, precision)
  s = jax.nn.softmax(log_q.astype(_compute_dtype(log_q)), axis=-1)
  onehot = (jnp.arange(log_q.shape[-1]) == x[..., None]).astype(s.dtype)
  return onehot, (s, jnp.zeros((), log_q.dtype))


def sample_token(key: jax.Array, log_q: jax.Array, precision: str = "float64") -> jax.Array:
  """The hard draw of straight_through: categorical.sample_categorical(key, sg(log_q), precision)."""
  return categorical.sample_categorical(key, jax.lax.stop_gradient(log_q), precision)


def straight_through(key: jax.Array, log_q: jax.Array, precision: str = "float64") -> jax.Array:
  """Straight-through categorical sample [..., V] (one-hot) from unnormalised log_q.

  forward: one_hot(x), x = sample_token(key, log_q, precision) (a hard categorical draw;
  "float64" needs x64 while tracing); gradient: that of softmax(log_q), i.e.
  d/dlog_q = s * (gbar - <s, gbar>) with s = softmax(log_q) (the straight-through estimator);
  key and precision: no gradient.
  """
  if precision not in categorical.PRECISIONS:
    raise ValueError(f"straight_through: unknown precision {precision!r} "
                     f"(known: {categorical.PRECISIONS})")
  # precision is a Python string: closed over, never a custom_vjp argument.
  return _straight_through_p(precision)(key, log_q)


@functools.lru_cache(maxsize=None)
def _straight_through_p(precision: str):
  @jax.custom_vjp
  def st(key, log_q):
    return _straight_through_fwd(key, log_q, precision)[0]

  def fwd(key, log_q):
    return _straight_through_fwd(key, log_q, precision)

  def bwd(res, g):
    s, q_proto = res
    return None, _softmax_vjp(s, g, 1.0).astype(q_proto.dtype)

  st.defvjp(fwd, bwd)
  return st


# ------------------------------------------------------------------ registry

_RELAXATIONS: dict[str, Callable] = {
    "simplex": simplex,  # simplex(logits) -> G
    "gumbel": gumbel_softmax,  # gumbel_softmax(key, log_q, tau) -> soft sample
    "straight_through": straight_through,  # straight_through(key, log_q, precision) -> one-hot
}
RELAXATIONS = tuple(_RELAXATIONS)


def get_relaxation(name: str) -> Callable:
  """The relaxation called `name` (one of RELAXATIONS); ValueError for anything else."""
  try:
    return _RELAXATIONS[name]
  except (KeyError, TypeError):
    raise ValueError(f"relaxation: unknown {name!r} (known: {RELAXATIONS})") from None
