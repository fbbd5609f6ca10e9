"""The sampler registry: every reverse sampler by its `sample.sampler` name.

A sampler registers a `SamplerSpec`: how to build its jittable function from the config, the
diffusion process and the model's graphdef, its own config fields and checks, which
`TrainState.aux` network it reads besides the model (RGAS reads DiDi's discriminator) and
which objectives' runs can use it. Which samplers a diffusion family supports is that family's
`Process.samplers`. The built-in samplers are registered in decoding/samplers.py.
"""

import dataclasses
from typing import Any, Callable, Optional

import jax
import numpy as np

from idlm_jax import fields as F
from idlm_jax.fields import ConfigError, Field

COUNTS = ("nfe", "disc_forwards", "disc_grads")  # per-sample network calls samplers report

FIELDS = {
    "sample.num_samples": Field(16, "samples written per dump.", check=F.positive),
    "sample.batch_size": Field(16, "global sampling batch size.", check=F.positive),
    "sample.steps": Field(128, "N: reverse steps on linspace(1, eps, N + 1).", check=F.positive),
    "sample.eps": Field(1e-5, "final time of the sampling grid.", check=F.unit_open),
    "sample.cache": Field(True, "MDLM cache: no network call when no token changed."),
    "sample.precision": Field(
        "float64", 'categorical draws: "float64" (Gumbel noise and posterior in float64, x64 '
        'scoped to the sampler), "exact32" (float32 arithmetic with 64-bit uniforms: the same '
        'tail, fast on TPU), "float32" (the naive draw of the MDLM repo, kept for comparison).',
        choices=("float64", "exact32", "float32")),
    "sample.noise_removal": Field(
        "argmax", 'final step at t = eps: "argmax" (MDLM; udlm/duo: Duo\'s greedy tail) or '
        '"ancestral" (one more draw); analytic/euler: the final denoise step sampled '
        '("ancestral", SEDD) or its argmax taken ("argmax"). Both cost one more NFE.',
        choices=("argmax", "ancestral")),
    "sample.sampler": Field(
        "ancestral", "the reverse sampler, a name in the sampler registry (decoding/samplers.py"
        "): \"ancestral\" (MDLM with cache; udlm/duo: the Duo posterior, no cache), "
        '"analytic" (SEDD Tweedie tau-leaping; sedd, or mdlm through the score conversion), '
        '"euler" (SEDD Euler; same models), "r2" (R2-dLLM rules, sample.r2) or "rgas" '
        "(DiDi-Instruct's reward-guided sampler: objective \"didi\" only, distill.didi.rgas_*).",
        choices=lambda: names()),
    "sample.prompt": Field(
        "", "prefix-conditioned generation: a prompt string, or a path to a text file with one "
        "prompt per line (sample i gets prompt i mod n); its tokens ([BOS] + prompt) are "
        'clamped at the start of the row and never resampled, by every sampler. "" = '
        "unconditional."),
}


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """A registered sampler.

  build(config, process, graphdef, *, num_steps, batch_size) -> fn(params, key, prefix=None,
    aux=None) -> an output with `tokens` [B, L] and `nfe` (and the counts in COUNTS it has);
    not jitted (make_sampler jits it). `prefix` int32 [B, P] is clamped (negative: free).
  fields: its own config fields ({path: Field}); validate(config): its cross-field checks.
  aux: the TrainState.aux network whose params it reads (`sampler_aux`), or None.
  objectives: the objectives whose runs can use it (() = any).
  """

  name: str
  build: Callable
  doc: str = ""
  fields: dict = dataclasses.field(default_factory=dict)
  validate: Optional[Callable] = None
  aux: Optional[str] = None
  objectives: tuple = ()


_REGISTRY: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
  if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
    raise ValueError(f"sampler {spec.name!r} is already registered")
  _REGISTRY[spec.name] = spec
  return spec


def names() -> tuple:
  return tuple(_REGISTRY)


def get(name: str) -> SamplerSpec:
  if name not in _REGISTRY:
    raise ConfigError(f"config.sample.sampler: unknown sampler {name!r} (known: {names()})")
  return _REGISTRY[name]


def fields() -> dict:
  """sample.* plus every registered sampler's own fields."""
  return F.merge(FIELDS, *(spec.fields for spec in _REGISTRY.values()))


def requested(config) -> list[str]:
  """sample.sampler and the eval.samplers entries."""
  extra = [s.strip() for s in config.eval.samplers.split(",") if s.strip()]
  return [config.sample.sampler] + extra


def validate(config) -> None:
  """Every requested sampler exists, may run in this objective's runs, and passes its own
  checks (whether the diffusion family supports it is the process's check)."""
  for name in requested(config):
    spec = _REGISTRY.get(name)
    if spec is None:
      field = "sample.sampler" if name == config.sample.sampler else "eval.samplers"
      raise ConfigError(f"config.{field}: unknown sampler {name!r} (known: {names()})")
    _check_objective(spec, config)
  spec = _REGISTRY[config.sample.sampler]
  if spec.validate is not None:
    spec.validate(config)
  if config.sample.temperature != 1.0 and config.sample.sampler != "ancestral":
    raise ConfigError(f"config.sample.temperature: implemented for the ancestral sampler, "
                      f"got sample.sampler={config.sample.sampler!r}")


def make_sampler(config, process, graphdef, *, num_steps: int, batch_size: int):
  """jitted (params, key, prefix=None, aux=None) -> output for config.sample.sampler on the
  `process` model with structure `graphdef`. `aux`: see `sampler_aux`."""
  spec = get(config.sample.sampler)
  _check_objective(spec, config)
  return jax.jit(spec.build(config, process, graphdef, num_steps=num_steps,
                            batch_size=batch_size))


def sampler_aux(config, state) -> Optional[dict]:
  """The params besides the model's that config.sample.sampler reads, from a TrainState:
  {name: state.aux[name].params} for a sampler with `aux` (RGAS: the discriminator, which
  keeps no EMA), None for the others."""
  spec = get(config.sample.sampler)
  if spec.aux is None:
    return None
  _check_objective(spec, config)
  return {spec.aux: state.aux[spec.aux].params}


def call_counts(outs) -> dict:
  """Mean per-sample network calls over sampler outputs (on the host): the model's NFE and,
  for RGAS, the discriminator's forwards and how many of those had a backward (reported
  separately: the papers' NFE counts the student only)."""
  return {k: float(np.mean([getattr(o, k) for o in outs])) for k in COUNTS
          if hasattr(outs[0], k)}


def _check_objective(spec: SamplerSpec, config) -> None:
  if spec.objectives and config.objective not in spec.objectives:
    raise ConfigError(f"config.sample.sampler: {spec.name!r} ({spec.doc}) reads the "
                      f"{spec.aux} network of an objective={spec.objectives[0]!r} run, got "
                      f"objective={config.objective!r} (use 'ancestral')")


def require_aux(aux: Any, name: str, sampler: str, what: str) -> Any:
  """aux[name], or an error saying the sampler needs `what` (passed by sampler_aux)."""
  if not aux or name not in aux:
    raise ValueError(f"sample.sampler={sampler!r} needs the {what}'s params: pass "
                     f"aux=decoding.sampler_aux(config, state) (a TrainState with "
                     f"aux[{name!r}])")
  return aux[name]
