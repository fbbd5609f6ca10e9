"""DiDi-Instruct's discriminator: the teacher's DiT trunk with a per-token spectral-norm head.

reference/didi_instruct.md §1.2. The teacher's output layer (final adaLN norm + vocabulary
projection) is replaced by

  head(h) = SN(Linear d->1)( SiLU( SN(Linear d->d)(h) ) )        one logit per token [B, L]

applied to the trunk's last hidden states (no time modulation in the head; the trunk's adaLN
sees sigma exactly as the teacher's does, i.e. 0 for MDLM's `time_conditioning=False`).
Parameter paths of the trunk are the DIT's (`vocab_embed`, `sigma_map`, `blocks.{i}`), so the
discriminator starts as a copy of the teacher's trunk (`init_from_teacher`) and only the head
is new. Only the last `unfreeze_blocks` blocks and the head are trained (`trainable_labels`).

Spectral normalisation (Miyato et al. 2018, torch `spectral_norm`): W_sn = W / sigma(W), sigma
the top singular value estimated by power iteration. The iteration vector `sn_u` [out] is a
leaf of the pure-dict params (so it is checkpointed, sharded and restored with them) that the
optimizer never moves (label "frozen"); the train step advances it with `power_iteration`
(one step per discriminator update, as torch does per training forward) before the loss,
under stop-gradient. The forward uses the stored u: v = normalize(W u), sigma = v^T W u, with
the gradient through W only (torch's), so evaluation (rewards, RGAS) never changes it.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from idlm_jax import rng
from idlm_jax.models import dit, layers

SN_U = "sn_u"  # name of the power-iteration vector leaf
SN_EPS = 1e-12  # torch spectral_norm's normalize eps
TRUNK = ("vocab_embed", "sigma_map", "blocks")  # DIT parameter groups the discriminator shares


def _normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), SN_EPS)


def power_iteration(kernel: jax.Array, u: jax.Array) -> jax.Array:
  """One power-iteration step for the top singular pair of `kernel` [in, out] (x @ kernel).

  v = normalize(W u), u' = normalize(W^T v): u' -> the top right singular vector of W [out].
  """
  kernel, u = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(u)
  v = _normalize(kernel @ u)
  return _normalize(kernel.T @ v)


def spectral_sigma(kernel: jax.Array, u: jax.Array) -> jax.Array:
  """sigma(W) ~ v^T W u with v = normalize(W u) and (u, v) constants: d sigma/dW = v u^T."""
  u = jax.lax.stop_gradient(u)
  v = jax.lax.stop_gradient(_normalize(kernel @ u))
  return v @ (kernel @ u)


class SpectralLinear(nnx.Module):
  """Linear(in, out) with weight W / sigma(W); torch-uniform init; `sn_u` a unit vector [out]."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    init = layers.torch_uniform(in_features)
    self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), jnp.float32))
    self.bias = nnx.Param(init(rngs.params(), (out_features,), jnp.float32))
    self.sn_u = nnx.Param(_normalize(jax.random.normal(rngs.params(), (out_features,))))

  def __call__(self, h: jax.Array) -> jax.Array:
    w = self.kernel[...]
    w = w / spectral_sigma(w, self.sn_u[...])
    return jnp.matmul(h.astype(jnp.float32), w) + self.bias[...]


class DiscriminatorHead(nnx.Module):
  """SN(Linear d->d) -> SiLU -> SN(Linear d->1), per token (DiDi `DiscriminatorHead`)."""

  def __init__(self, hidden_size: int, *, rngs: nnx.Rngs):
    self.linear_0 = SpectralLinear(hidden_size, hidden_size, rngs=rngs)
    self.linear_2 = SpectralLinear(hidden_size, 1, rngs=rngs)

  def __call__(self, h: jax.Array) -> jax.Array:
    return self.linear_2(nnx.silu(self.linear_0(h)))[..., 0]


class Discriminator(nnx.Module):
  """d(z_t, sigma) -> float32 logits [B, L]: DIT trunk (same paths and numerics) + head."""

  def __init__(self, *, vocab_size: int, hidden_size: int, n_blocks: int, n_heads: int,
               cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.0, dtype=jnp.float32,
               attention: str = "auto", time_conditioning: bool = True,
               vocab_pad_multiple: int = 0, rngs: nnx.Rngs):
    self.vocab_size, self.hidden_size, self.n_heads = vocab_size, hidden_size, n_heads
    self.dropout, self.time_conditioning, self.dtype = dropout, time_conditioning, dtype
    padded = layers.padded_vocab_size(vocab_size, vocab_pad_multiple)
    self.vocab_embed = dit.EmbeddingLayer(hidden_size, vocab_size, padded, rngs=rngs)
    self.sigma_map = dit.TimestepEmbedder(cond_dim, rngs=rngs)
    self.blocks = nnx.List([
        dit.DDiTBlock(hidden_size, n_heads, cond_dim, mlp_ratio, dropout, dtype, attention,
                      rngs=rngs) for _ in range(n_blocks)])
    self.head = DiscriminatorHead(hidden_size, rngs=rngs)

  def __call__(self, x: jax.Array, sigma: jax.Array, *,
               dropout_key: Optional[jax.Array] = None) -> jax.Array:
    """Logits [B, L] for ids [B, L] or probability vectors [B, L, V] (RGAS differentiates
    through these), as DIT.__call__ up to the last block."""
    if not self.time_conditioning:
      sigma = jnp.zeros_like(sigma)
    h = layers.constrain(self.vocab_embed(x, self.dtype))
    c = nnx.silu(self.sigma_map(sigma))
    rope = layers.rope_cos_sin(h.shape[1], self.hidden_size // self.n_heads, dit.ROPE_BASE)
    keys = [None] * len(self.blocks)
    if dropout_key is not None and self.dropout > 0.0:
      keys = list(rng.split(dropout_key, len(self.blocks)))
    for block, key in zip(self.blocks, keys):
      h = layers.constrain(block(h, c, rope, dropout_key=key))
    return self.head(h)


def build(model_cfg, vocab_size: int, rngs: nnx.Rngs) -> Discriminator:
  """The discriminator of the `model` config section's DiT."""
  return Discriminator(
      vocab_size=vocab_size, hidden_size=model_cfg.hidden_size, n_blocks=model_cfg.n_blocks,
      n_heads=model_cfg.n_heads, cond_dim=model_cfg.cond_dim, mlp_ratio=model_cfg.mlp_ratio,
      dropout=model_cfg.dropout, dtype=layers.DTYPES[model_cfg.dtype],
      attention=model_cfg.attention, time_conditioning=model_cfg.time_conditioning,
      vocab_pad_multiple=model_cfg.vocab_pad_multiple, rngs=rngs)


def abstract(model_cfg, vocab_size: int):
  """(graphdef, abstract params nnx.State) of the discriminator, nothing allocated."""
  model = nnx.eval_shape(lambda: build(model_cfg, vocab_size, nnx.Rngs(params=0)))
  return nnx.split(model, nnx.Param)


def head_params(hidden_size: int, key: jax.Array) -> dict:
  """Fresh head parameters (pure dict) from `key`."""
  return nnx.to_pure_dict(nnx.state(DiscriminatorHead(hidden_size, rngs=nnx.Rngs(params=key)),
                                    nnx.Param))


def init_from_teacher(teacher_params: dict, key: jax.Array, hidden_size: int) -> dict:
  """Discriminator params: new copies of the teacher's trunk (its output layer dropped) and a
  fresh head (reference §3.1: copies made AFTER the teacher is loaded)."""
  trunk = {k: jax.tree.map(jnp.copy, teacher_params[k]) for k in TRUNK}
  return {**trunk, "head": head_params(hidden_size, key)}


def trainable_labels(params: dict, unfreeze_blocks: int) -> dict:
  """"train" for the last `unfreeze_blocks` blocks and the head's kernels/biases, "frozen" for
  the rest (embedding, time MLP, earlier blocks, the power-iteration vectors)."""
  n = len(params["blocks"])
  first = max(n - unfreeze_blocks, 0)

  def label(path, _):
    keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
    if keys[0] == "head":
      return "frozen" if keys[-1] == SN_U else "train"
    if keys[0] == "blocks" and int(keys[1]) >= first:
      return "train"
    return "frozen"

  return jax.tree_util.tree_map_with_path(label, params)


def power_iterate_params(params: dict) -> dict:
  """`params` with every SpectralLinear's sn_u advanced by one power-iteration step."""
  head = {name: {**layer, SN_U: power_iteration(layer["kernel"], layer[SN_U])}
          for name, layer in params["head"].items()}
  return {**params, "head": head}
