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
the top singular value estimated by power iteration. The iteration vectors `sn_u` [out] and
`sn_v` [in] (torch's `weight_u`, `weight_v` buffers) are leaves of the pure-dict params (so
they are checkpointed, sharded and restored with them) that the optimizer never moves (label
"frozen"); the train step advances them with `power_iteration` (one step per discriminator
update, as torch does per training forward: v = normalize(W^T u), then u = normalize(W v))
before the loss, under stop-gradient. The forward reads the stored pair as torch does:
sigma = u^T W v, with the gradient through W only, so evaluation (rewards, RGAS) never changes
them and a DiDi-Instruct discriminator converted from PyTorch gives torch's eval-mode outputs
(`from_torch_state_dict`; tests/models/test_authors_parity.py).

PyTorch names (DiDi-Instruct's `discriminator.*`, `discriminator.safetensors`): the trunk's are
the DIT's; the head is `output_layer.main.{0,2}.{weight_orig, bias, weight_u, weight_v}`
(DiDiInstruct.DiscriminatorHead: spectral_norm(Linear) -> SiLU -> spectral_norm(Linear)).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from idlm_jax import rng
from idlm_jax.models import dit, layers
from idlm_jax.models.torch_pickle import ConversionError

SN_U, SN_V = "sn_u", "sn_v"  # names of the power-iteration vector leaves
SN_LEAVES = (SN_U, SN_V)
SN_EPS = 1e-12  # torch spectral_norm's normalize eps
TRUNK = ("vocab_embed", "sigma_map", "blocks")  # DIT parameter groups the discriminator shares


def _normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), SN_EPS)


def power_iteration(kernel: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One power-iteration step for the top singular pair of `kernel` [in, out] (x @ kernel).

  torch's order: v = normalize(W^T u) [in], then u' = normalize(W v) [out] (W = kernel^T, the
  torch weight [out, in]); -> (u', v), which tend to the top singular vectors.
  """
  kernel, u = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(u)
  v = _normalize(kernel @ u)
  return _normalize(kernel.T @ v), v


def spectral_sigma(kernel: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
  """sigma(W) ~ u^T W v = v^T kernel u with (u, v) constants (torch): d sigma/dW = u v^T."""
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  return v @ (kernel @ u)


class SpectralLinear(nnx.Module):
  """Linear(in, out) with weight W / sigma(W); torch-uniform init; `sn_u` [out] a random unit
  vector and `sn_v` [in] = normalize(W^T u) (so sigma = |W^T u| > 0 before any iteration)."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    init = layers.torch_uniform(in_features)
    self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), jnp.float32))
    self.bias = nnx.Param(init(rngs.params(), (out_features,), jnp.float32))
    u = _normalize(jax.random.normal(rngs.params(), (out_features,)))
    self.sn_u = nnx.Param(u)
    self.sn_v = nnx.Param(_normalize(self.kernel[...] @ u))

  def __call__(self, h: jax.Array) -> jax.Array:
    w = self.kernel[...]
    w = w / spectral_sigma(w, self.sn_u[...], self.sn_v[...])
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
    return self.logits_from(self.hidden(x, sigma, dropout_key=dropout_key), sigma,
                            start=len(self.blocks), dropout_key=dropout_key)

  def hidden(self, x: jax.Array, sigma: jax.Array, *, blocks: Optional[int] = None,
             dropout_key: Optional[jax.Array] = None) -> jax.Array:
    """The residual stream [B, L, d] after the embedding and the first `blocks` blocks (all
    by default). `logits_from(hidden(x, blocks=j), start=j)` is `__call__(x)`, bit for bit:
    DiDi's reward reuses the frozen blocks' output of the discriminator update."""
    blocks = len(self.blocks) if blocks is None else blocks
    h = layers.constrain(self.vocab_embed(x, self.dtype))
    return self._run(h, sigma, 0, blocks, dropout_key)

  def logits_from(self, h: jax.Array, sigma: jax.Array, *, start: int,
                  dropout_key: Optional[jax.Array] = None) -> jax.Array:
    """Logits [B, L] of the residual stream h [B, L, d] entering block `start`: the blocks
    from `start` on, then the head."""
    return self.head(self._run(h, sigma, start, len(self.blocks), dropout_key))

  def _run(self, h, sigma, start: int, stop: int, dropout_key) -> jax.Array:
    """Blocks start..stop-1 on h; block i's dropout key is the i-th of dropout_key's split
    into one per block, whichever part of the trunk runs."""
    if start == stop:
      return h
    if not self.time_conditioning:
      sigma = jnp.zeros_like(sigma)
    c = nnx.silu(self.sigma_map(sigma))
    rope = layers.rope_cos_sin(h.shape[1], self.hidden_size // self.n_heads, dit.ROPE_BASE)
    keys = [None] * len(self.blocks)
    if dropout_key is not None and self.dropout > 0.0:
      keys = list(rng.split(dropout_key, len(self.blocks)))
    for i in range(start, stop):
      h = layers.constrain(self.blocks[i](h, c, rope, dropout_key=keys[i]))
    return h


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
  the rest (embedding, time MLP, earlier blocks, the power-iteration vectors sn_u, sn_v)."""
  n = len(params["blocks"])
  first = max(n - unfreeze_blocks, 0)

  def label(path, _):
    keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
    if keys[0] == "head":
      return "frozen" if keys[-1] in SN_LEAVES else "train"
    if keys[0] == "blocks" and int(keys[1]) >= first:
      return "train"
    return "frozen"

  return jax.tree_util.tree_map_with_path(label, params)


def power_iterate_params(params: dict) -> dict:
  """`params` with every SpectralLinear's (sn_u, sn_v) advanced by one power-iteration step."""
  head = {}
  for name, layer in params["head"].items():
    u, v = power_iteration(layer["kernel"], layer[SN_U])
    head[name] = {**layer, SN_U: u, SN_V: v}
  return {**params, "head": head}


# ---------------------------------------------------------------------------- torch mapping

# DiDiInstruct.DiscriminatorHead's nn.Sequential indices -> our head's layers, and the leaves
# torch's spectral_norm registers (weight_orig a parameter, weight_u / weight_v buffers).
TORCH_HEAD = {"linear_0": "output_layer.main.0", "linear_2": "output_layer.main.2"}
TORCH_LEAVES = {"kernel": ("weight_orig", True), "bias": ("bias", False),
                SN_U: ("weight_u", False), SN_V: ("weight_v", False)}


def torch_head_names() -> dict[str, tuple[tuple, bool]]:
  """PyTorch key -> (params path, transpose) for the head's leaves."""
  return {f"{TORCH_HEAD[layer]}.{name}": (("head", layer, leaf), transpose)
          for layer in TORCH_HEAD for leaf, (name, transpose) in TORCH_LEAVES.items()}


def _pad_embedding(state_dict: dict, rows: Optional[int]) -> dict:
  """The trunk's `vocab_embed.embedding` zero-padded to `rows` (model.vocab_pad_multiple)."""
  emb = state_dict.get(dit.VOCAB_KEYS[0])
  if rows is None or np.ndim(emb) != 2 or np.shape(emb)[0] >= rows:
    return state_dict
  emb = np.asarray(emb)
  return {**state_dict, dit.VOCAB_KEYS[0]: np.pad(emb, [(0, rows - emb.shape[0]), (0, 0)])}


def from_torch_state_dict(state_dict: dict, abstract_state, *,
                          head_dim: Optional[int] = None) -> dict:
  """Discriminator params (pure dict of float32 NumPy arrays) from DiDi-Instruct's
  discriminator state dict (PyTorch names, no `discriminator.` prefix; module docstring).

  The trunk goes through `dit.from_torch_state_dict` (same names, shapes and RoPE-buffer
  check); the head's keys are mapped by `torch_head_names`. Every missing or unexpected key
  and every wrong shape is listed in one ConversionError.
  """
  flat = dict(nnx.to_flat_state(nnx.state(abstract_state) if isinstance(
      abstract_state, nnx.Module) else abstract_state))
  trunk_abstract = nnx.from_flat_state([(p, v) for p, v in flat.items() if p[0] in TRUNK])
  names = torch_head_names()
  head_keys = [k for k in state_dict if k.startswith("output_layer.")]
  trunk_sd = {k: v for k, v in state_dict.items() if not k.startswith("output_layer.")}
  trunk_sd = _pad_embedding(trunk_sd, dit._vocab_rows(trunk_abstract))
  problems, trunk = [], {}
  try:
    trunk = nnx.to_pure_dict(dit.from_torch_state_dict(trunk_sd, trunk_abstract,
                                                       head_dim=head_dim))
  except ConversionError as e:
    problems += [line.strip() for line in str(e).splitlines()[1:]]
  problems += [f"unexpected key '{k}' with shape {tuple(np.shape(state_dict[k]))}"
               for k in head_keys if k not in names]
  head: dict = {}
  for key, (path, transpose) in names.items():
    model_shape = tuple(dit._leaf_value(flat[path]).shape)
    torch_shape = model_shape[::-1] if transpose else model_shape
    if key not in state_dict:
      problems.append(f"missing key '{key}' (model shape {torch_shape} in torch layout)")
      continue
    value = np.asarray(state_dict[key])
    if value.shape != torch_shape:
      problems.append(f"key '{key}': checkpoint shape {value.shape} != model shape "
                      f"{torch_shape} (torch layout; config.model.hidden_size sets it)")
      continue
    value = value.T if transpose else value
    head.setdefault(path[1], {})[path[2]] = np.ascontiguousarray(value, np.float32)
  if problems:
    raise ConversionError("PyTorch state_dict does not match the discriminator:\n  " +
                          "\n  ".join(problems))
  return {**trunk, "head": head}
