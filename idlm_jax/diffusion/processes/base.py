"""What every diffusion family provides, as one object (md4's `MD4` class is the model).

A `Process` holds a family's schedule and answers, with pure functions of arrays (the network
is a callable `model(x, sigma, dropout_key=None) -> raw output [B, L, V]`, e.g. a merged NNX
DiT):
  q_xt(key, x0, t)                 forward sample of x_t
  loss_sums(model, batch, key, train=..., step=...)
                                   the teacher's training loss as additive sums
                                   {"nelbo_sum", "tokens"} over valid tokens (NELBO / bound)
  log_probs_fn(model), log_score_fn(model)
                                   the network output the samplers read: log x_theta(x_t, t)
                                   (SUBS or mean parameterization) or the log-score (SEDD)
  inverse_parts(**options)         the relaxed pieces IDLM distillation needs (InverseParts)
and, as class attributes, what it is compatible with: the forward graphs (`graphs`), the
network parameterization, whether the network must be time-conditioned, and the samplers
(`samplers`, names in idlm_jax.decoding's registry) and IDLM relaxations it supports.
`diffusion.processes.PROCESSES` maps `diffusion.algo` to the class.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from idlm_jax.fields import ConfigError


class Renoised(NamedTuple):
  """The student's soft x0 noised at t2, as teacher and fake see it (IDLM)."""

  net_in: jax.Array  # int32 [B, L] tokens, or float [B, L, V] probability vectors
  tokens: jax.Array  # int32 [B, L]: the hard x_t2 the loss is taken at
  sigma: jax.Array  # [B] time conditioning of teacher and fake
  weight: jax.Array  # [B] the loss weight at t2 (lambda_t, sigma' r, ...)
  extra: Any = ()  # per-process values (alpha_t, alpha'_t, sigma'_t)


class InverseParts(NamedTuple):
  """IDLM's pieces for one family (reference/idlm.md §2-3). All pure; `model` is a callable.

  student(model, batch, key, dropout_key) -> G [B, L, V]: the soft x0 of noised real data.
  renoise(G, key) -> Renoised (differentiable in G where the relaxation says so).
  output(model, r) -> [B, L, V]: the network's log-output at r (log-probs or log-scores).
  fake_loss(out, r, G) -> [B, L]: the teacher's training loss with soft target G.
  inverse_loss(out_teacher, out_fake, r, G) -> [B, L]: L(f*, G) - L(f, G) per position.
  chunked: a ChunkedInverse where the family takes IDLM's losses over position chunks
    (model.loss_chunk > 0), else None.
  """

  student: Callable
  renoise: Callable
  output: Callable
  fake_loss: Callable
  inverse_loss: Callable
  chunked: Any = None


class ChunkedInverse(NamedTuple):
  """IDLM's pieces with no [B, L, V] tensor live beyond one chunk of positions
  (model.loss_chunk; processes/chunked.py, diffusion/chunks.py). A network enters as its
  output features h [B, L, d] and its `head` = (project, params) (DIT.head): logits =
  project(params, h).

  student(net, batch, key, dropout_key) -> chunked.Student (x_t, sigma, h): the student's
    noised input and output features; net: a chunked.Net (the network's `features` and module).
  renoise(head, student, key) -> Renoised: the re-noised sample of the student's G, drawn one
    chunk at a time (no gradient), equal to `InverseParts.renoise(G, key)` (soft inputs:
    its random draws only, finished by `features`).
  features(head, student, r, nets, dropout_keys) -> (features of each of `nets` at r, r):
    the teacher's and fake's output features [B, L, d] at the re-noised sample (soft inputs:
    embedded chunk by chunk, differentiable back to the student's features; r gets its
    tokens).
  fake_loss(student_head, student, fake_head, h_fake, r, weights) -> sum over positions of
    weights * `InverseParts.fake_loss`, differentiable w.r.t. the fake's head params and h_fake.
  inverse_loss(student_head, student, teacher_head, h_teacher, fake_head, h_fake, r, weights)
    -> sum of weights * `InverseParts.inverse_loss`, differentiable w.r.t. the student's head
    params and its features.
  """

  student: Callable
  renoise: Callable
  fake_loss: Callable
  inverse_loss: Callable
  features: Callable


def valid_weights(batch) -> jax.Array:
  """[B, L] float32: 1 at real (non-pad) tokens of rows with nonzero `weight` (eval padding)."""
  valid = batch["attention_mask"].astype(jnp.float32)
  if "weight" in batch:
    valid = valid * batch["weight"][:, None]
  return valid


class Process:
  """Base class; see the module docstring. Subclasses set the class attributes."""

  name: str = ""  # the diffusion.algo it implements
  graphs: tuple = ()  # allowed diffusion.process values
  parameterization: str = ""  # the diffusion.parameterization it needs
  time_conditioned: Optional[bool] = None  # None: either; True: needs model.time_conditioning
  samplers: tuple = ()  # valid sample.sampler names
  relaxations: tuple = ("simplex",)  # valid distill.relaxation values (IDLM)

  def __init__(self, schedule, *, mask_id: int, vocab_size: int, graph: str = "",
               antithetic: bool = True, loss_chunk: int = 0):
    self.schedule = schedule
    self.mask_id = mask_id
    self.vocab_size = vocab_size
    self.graph = graph or self.graphs[0]
    self.antithetic = antithetic
    self.loss_chunk = loss_chunk  # model.loss_chunk: losses over chunks of positions (0: off)

  @classmethod
  def from_config(cls, config, *, vocab_size: int, mask_id: int) -> "Process":
    raise NotImplementedError

  @classmethod
  def validate(cls, config) -> None:
    """config.diffusion / model / sample consistency with this family (the generic rules)."""
    f, s = config.diffusion, config.sample
    if f.process not in cls.graphs:
      raise ConfigError(f"config.diffusion.process: {f.process!r} does not work with "
                        f"diffusion.algo={f.algo!r} (use one of {cls.graphs})")
    if f.parameterization != cls.parameterization:
      raise ConfigError(f"config.diffusion.parameterization: diffusion.algo={f.algo!r} needs "
                        f"{cls.parameterization!r}, got {f.parameterization!r}")
    if cls.time_conditioned is not None and config.model.time_conditioning != cls.time_conditioned:
      raise ConfigError(f"config.model.time_conditioning: diffusion.algo={f.algo!r} needs a "
                        f"time-conditioned network (set it to True)")
    if s.sampler not in cls.samplers:
      raise ConfigError(f"config.sample.sampler: {s.sampler!r} cannot sample a "
                        f"diffusion.algo={f.algo!r} model (use one of {cls.samplers}; "
                        f"analytic/euler need an absorbing-state or SEDD model, ancestral an "
                        f"MDLM/UDLM/Duo one)")

  # ---------------------------------------------------------------- the teacher loss

  def q_xt(self, key: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
    raise NotImplementedError

  def loss_sums(self, model, batch: dict, key: jax.Array, *, train: bool,
                step: Optional[jax.Array] = None) -> dict:
    raise NotImplementedError

  def eval_sums(self, model, batch: dict, key: jax.Array) -> dict:
    """The validation statistics (the loss without dropout; Duo: the plain UDLM NELBO)."""
    return self.loss_sums(model, batch, key, train=False)

  # ---------------------------------------------------------------- what samplers read

  def log_probs_fn(self, model) -> Callable:
    """(x_t, t [B]) -> log x_theta [B, L, V] in float32 (SUBS or mean parameterization)."""
    raise NotImplementedError(f"diffusion.algo={self.name!r} has no x0 parameterization")

  def log_score_fn(self, model) -> Callable:
    """(x_t, t [B]) -> log-score [B, L, V] in float32 (SEDD's analytic/euler samplers)."""
    raise NotImplementedError(f"diffusion.algo={self.name!r} has no score")

  # ---------------------------------------------------------------- IDLM

  def inverse_parts(self, **options) -> InverseParts:
    raise NotImplementedError(f"IDLM is not implemented for diffusion.algo={self.name!r}")
