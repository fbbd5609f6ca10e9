"""What an objective is, and the registry objectives add themselves to.

An objective module registers an `ObjectiveSpec`: its name (`config.objective`), its config
fields with defaults, docs and allowed values (`fields`), its cross-field checks (`validate`),
and `make(ctx) -> Objective`, the pure steps the trainer runs. Adding a method is one module
(that calls `register`), one config file and one test; tests/objectives/test_registry.py adds
a toy objective from the test itself.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import ml_collections
import optax

from idlm_jax import fields as F
from idlm_jax.fields import ConfigError, Field
from idlm_jax.objectives.state import make_optimizer

FIELDS = {
    "distill.train_draw": Field(
        "inverse_cdf", "categorical draws inside the IDLM/DiDi train steps (re-noised student "
        'samples, rollouts): "inverse_cdf" (2 random words per row, float32 two-level inverse '
        'CDF) or "exact32" (Gumbel-max with 64 random bits per class; the cost grows with V). '
        "Samplers: sample.precision.", choices=("inverse_cdf", "exact32")),
}


class Objective(NamedTuple):
  """What the trainer needs from an objective.

  train_step(state, frozen, batch) -> (state, metrics): one update of every trained network;
    `frozen` holds read-only networks ({"teacher": params} for distillation, else None), never
    donated; `batch` is one global batch, or a tuple of `batches_per_step` of them.
  eval_step(params, frozen, batch, key) -> sums: additive validation statistics
    (e.g. {"nelbo_sum", "tokens"}) so a whole split reduces exactly.
  aux_txs: {name: optimizer} of the other networks it trains (TrainState.aux), e.g. IDLM's
    {"fake": AdamW}; each starts as a copy of the initial params.
    An `objectives.state.AuxNet(tx, init, abstract)` value instead gives a network of another
    structure its own init from the initial params (DiDi's {"disc": discriminator}).
  """

  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]
  batches_per_step: int = 1
  aux_txs: dict = {}


@dataclasses.dataclass(frozen=True)
class Context:
  """What `make` receives: the config, the model's structure and optimizer, the vocabulary and
  the diffusion process of config.diffusion.algo (diffusion/processes)."""

  config: ml_collections.ConfigDict
  graphdef: Any  # the model's nnx graphdef (merge with params to run it)
  tx: optax.GradientTransformation  # the model's optimizer (optim.*)
  mask_id: int
  vocab_size: int  # the model's vocabulary (tokenizer.model_vocab_size)
  process: Any = None  # diffusion.processes.Process (None for objectives without one)

  def optimizer(self, total_steps: Optional[int] = None, **overrides):
    """AdamW from optim.* with `overrides` (lr=..., grad_clip=...), decaying over
    `total_steps` (default train.steps): the optimizer of an extra network."""
    o = ml_collections.ConfigDict(self.config.optim.to_dict())
    o.update(overrides)
    return make_optimizer(o, self.config.train.steps if total_steps is None else total_steps)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """A registered objective.

  make(ctx: Context) -> Objective.
  fields: {dotted path: Field} of its own config fields; validate(config): its checks.
  teacher: it distils a frozen teacher (config.distill.teacher; the student and the other
    networks start as copies of it).
  algos: the diffusion.algo values it works with (() = any); uses_process: the diffusion
    config must describe a consistent process (False for the causal LM "ar").
  data(config, tokenizer, process_index, process_count) -> (train iterator, validation split):
    its own training data (None: config.data's).
  prompted: it handles prompt/response rows (a `prompt_mask` in the batch: data.source
    "reasoning"), keeping the prompt out of the noise and the loss; other objectives refuse
    such data rather than silently treat the prompt as text to generate.
  """

  name: str
  make: Callable[[Context], Objective]
  doc: str = ""
  fields: dict = dataclasses.field(default_factory=dict)
  validate: Optional[Callable] = None
  teacher: bool = False
  algos: tuple = ()
  uses_process: bool = True
  data: Optional[Callable] = None
  chunked_loss: bool = False  # supports model.loss_chunk > 0
  prompted: bool = False


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
  """Add an objective (a module calls this at import); the same name twice is an error."""
  if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
    raise ValueError(f"objective {spec.name!r} is already registered")
  _REGISTRY[spec.name] = spec
  return spec


def unregister(name: str) -> None:
  """Remove an objective (tests that register their own)."""
  _REGISTRY.pop(name, None)


def names() -> tuple:
  return tuple(_REGISTRY)


def get(name: str) -> ObjectiveSpec:
  if name not in _REGISTRY:
    raise ConfigError(f"config.objective: unknown objective {name!r} (known: {names()})")
  return _REGISTRY[name]


def fields() -> dict:
  """The shared objective fields plus every registered objective's own."""
  return F.merge(FIELDS, *(spec.fields for spec in _REGISTRY.values()))


def chunk_error(config) -> ConfigError:
  """model.loss_chunk > 0 where the chunked loss does not exist."""
  return ConfigError(f"config.model.loss_chunk: the chunked loss is implemented for teacher "
                     f"pretraining (objective='diffusion') with diffusion.algo 'mdlm', 'udlm' "
                     f"or 'duo', and "
                     f"IDLM (objective='idlm') with diffusion.algo 'duo' or 'udlm', or 'mdlm' "
                     f"or 'sedd' with distill.relaxation='simplex' and "
                     f"distill.train_draw='inverse_cdf'; "
                     f"got objective={config.objective!r}, diffusion.algo="
                     f"{config.diffusion.algo!r}: set it to 0")


def validate(config) -> None:
  """The objective's generic requirements (algo, teacher), then its own checks."""
  spec = get(config.objective)
  if config.model.loss_chunk > 0 and not spec.chunked_loss:
    raise chunk_error(config)
  if spec.algos and config.diffusion.algo not in spec.algos:
    raise ConfigError(f"config.diffusion.algo: objective {spec.name!r} works with "
                      f"diffusion.algo in {spec.algos}, got {config.diffusion.algo!r}")
  if config.data.source == "reasoning" and not spec.prompted:
    raise ConfigError(f"config.objective: {spec.name!r} does not handle prompted rows "
                      "(data.source 'reasoning'); objectives that do: "
                      f"{[n for n, s in _REGISTRY.items() if s.prompted]}")
  if spec.teacher and config.mode == "train" and not config.distill.teacher:
    raise ConfigError(f"config.distill.teacher: objective={spec.name!r} distils a teacher: "
                      "give its workdir (a teacher run, a converted checkpoint or an exported "
                      "folder), a shipped teacher ('demo' with configs/demo_teacher.py's model "
                      "and data settings, 'synthetic' with configs/synthetic_mdlm.py's) or "
                      "'scratch:<config>' (train one first)")
  if spec.validate is not None:
    spec.validate(config)
