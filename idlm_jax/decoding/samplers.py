"""The built-in samplers, registered by name (`sample.sampler`, `eval.samplers`): how each is
built from the config, the diffusion process and the model, and its own config fields.

ancestral  MDLM ancestral with caching (decoding/ancestral.py) for SUBS models; the Duo
           posterior (decoding/uniform.py) for uniform-state (mean-parameterised) models
analytic   SEDD Tweedie tau-leaping (decoding/score.py): SEDD, or MDLM through its score
euler      SEDD Euler (decoding/score.py)
r2         MDLM with R2-dLLM's rules (decoding/r2.py, sample.r2.*)
rgas       DiDi-Instruct's reward-guided sampler (decoding/rgas.py, distill.didi.rgas_*),
           reading the run's discriminator
Every sampler is a pure function of (params, key, prefix, aux) for `jax.jit`; float64 draws
need x64 while tracing and running (categorical.x64_scope(sample.precision)).
"""

import functools

import jax
from flax import nnx

from idlm_jax import fields as F
from idlm_jax.decoding import ancestral, r2, r2_rules, rgas, score, uniform
from idlm_jax.decoding.registry import SamplerSpec, register, require_aux
from idlm_jax.fields import Check, ConfigError, Field
from idlm_jax.models import discriminator as disc_lib


def _common(config, num_steps: int, batch_size: int, prefix) -> dict:
  s = config.sample
  return dict(batch_size=batch_size, seq_len=config.data.seq_len, num_steps=num_steps,
              eps=s.eps, precision=s.precision, noise_removal=s.noise_removal, prefix=prefix)


# ------------------------------------------------------------------ ancestral


def tempered(log_probs_fn, temperature: float):
  """x_theta^(1/T), renormalised: log_softmax(log x_theta / T) (T = 1: unchanged). SUBS rows
  of unmasked positions stay one-hot."""
  if temperature == 1.0:
    return log_probs_fn
  return lambda x, t: jax.nn.log_softmax(log_probs_fn(x, t) / temperature, axis=-1)


def build_ancestral(config, process, graphdef, *, num_steps: int, batch_size: int):
  s = config.sample

  def sample(params, key, prefix=None, aux=None):
    del aux  # reads the model only
    model = nnx.merge(graphdef, params)
    common = _common(config, num_steps, batch_size, prefix)
    log_probs_fn = tempered(process.log_probs_fn(model), float(s.temperature))
    if process.parameterization == "mean":  # uniform state: the Duo posterior
      return uniform.duo_ancestral(log_probs_fn, key,
                                   vocab_size=process.vocab_size,
                                   alpha_fn=process.schedule.alpha, top_p=s.top_p, **common)
    return ancestral.mdlm_ancestral(log_probs_fn, key, mask_id=process.mask_id,
                                    schedule=process.schedule, cache=s.cache,
                                    time_conditioned=config.model.time_conditioning, **common)

  return sample


def validate_ancestral(config) -> None:
  """(Also checked for other samplers: sample.temperature is the ancestral sampler's.)"""
  if config.sample.top_p < 1.0 and config.diffusion.algo not in ("udlm", "duo"):
    raise ConfigError(f"config.sample.top_p: nucleus sampling is implemented for the "
                      f"udlm/duo ancestral sampler, not diffusion.algo="
                      f"{config.diffusion.algo!r}")


register(SamplerSpec(
    "ancestral", build_ancestral, "the ancestral sampler", validate=validate_ancestral,
    fields={"sample.top_p": Field(1.0, "udlm/duo ancestral: nucleus on x_theta before the "
                                  "posterior (1 = off).",
                                  check=Check(lambda v: 0.0 < v <= 1.0, "in (0, 1]")),
            "sample.temperature": Field(
                1.0, "ancestral sampler: x_theta^(1/T) renormalised before the posterior "
                "(< 1 sharper, > 1 flatter; 1 = the model). eval.temperatures sweeps it to "
                "trace a quality-entropy frontier.", check=F.positive)}))


# ------------------------------------------------------------------ analytic / euler


def build_score(kind: str, config, process, graphdef, *, num_steps: int, batch_size: int):
  def sample(params, key, prefix=None, aux=None):
    del aux
    model = nnx.merge(graphdef, params)
    return score.score_sampler(process.log_score_fn(model), key, kind=kind, graph=process.graph,
                               vocab_size=model.vocab_size, mask_id=process.mask_id,
                               schedule=process.schedule,
                               **_common(config, num_steps, batch_size, prefix))

  return sample


for _kind in ("analytic", "euler"):
  register(SamplerSpec(_kind, functools.partial(build_score, _kind),
                       f"SEDD's {_kind} score sampler"))


# ------------------------------------------------------------------ R2


R2_FIELDS = {
    "sample.r2.floor": Field(
        "ancestral", 'sample.sampler "r2" (diffusion.algo mdlm; decoding/r2.py): R2-dLLM\'s '
        "rules commit extra tokens from the same network call (reference/r2_dllm.md §1). "
        'Progress guarantee: "ancestral" (MDLM\'s schedule of sample.steps steps, sampled '
        'tokens) or "top1" (Fast-dLLM: the most confident masked token per step). Either way '
        "the masks left after sample.steps steps (per block) are removed by "
        "sample.noise_removal.", choices=r2.FLOORS),
    "sample.r2.rules": Field(
        "confidence_cluster,token_cluster,temporal", "rules on top of the floor, "
        'comma-separated, applied in this order: "threshold", "confidence_cluster", '
        '"token_cluster", "temporal"; "" = the floor alone.',
        check=F.names_in(r2_rules.RULES, "")),
    "sample.r2.commit": Field("argmax", 'token a rule commits: "argmax" (R2\'s greedy decoding) '
                              'or "sampled" (a draw from x_theta).', choices=r2.COMMITS),
    "sample.r2.threshold": Field(0.9, '"threshold" rule: commit every masked token with '
                                 "confidence >= this.", check=F.unit_closed),
    "sample.r2.cluster_window": Field(3, "confidence cluster: window width w.",
                                      check=F.at_least(1)),
    "sample.r2.cluster_max_unmasked": Field(1, "confidence cluster: skip windows with more "
                                            "unmasked tokens.", check=F.non_negative),
    "sample.r2.spatial_threshold": Field(
        0.8, "tau_s: confidence cluster (mean confidence of the window's masked tokens >= "
        "tau_s) and token cluster (a run's max confidence > tau_s).", check=F.unit_closed),
    "sample.r2.token_cluster_size": Field(2, "token cluster: minimum run of adjacent masks with "
                                          "one argmax.", check=F.at_least(1)),
    "sample.r2.token_cluster_select": Field("confidence", "which run member is committed: "
                                            "confidence/mid/random.",
                                            choices=r2_rules.TOKEN_CLUSTER_SELECT),
    "sample.r2.temporal_steps": Field(3, "temporal: K consecutive network calls with the same "
                                      "argmax.", check=F.at_least(1)),
    "sample.r2.temporal_threshold": Field(0.8, "temporal: tau_t on the aggregated confidence.",
                                          check=F.unit_closed),
    "sample.r2.temporal_eval": Field("last", "temporal aggregation over the streak: last, mean "
                                     "or max.", choices=r2_rules.TEMPORAL_EVAL),
    "sample.r2.block_length": Field(
        0, "semi-autoregressive blocks of this many positions, left to right, each with its own "
        "budget of sample.steps steps (0 = the whole sequence is one block).",
        check=F.non_negative_or_off("0: no blocks")),
    "sample.r2.clock": Field(
        "steps", 'floor schedule clock: "steps" (one grid step per iteration) or "masked" (jump '
        "to the grid step whose noise level t matches the block's masked fraction, so tokens "
        "committed by the rules shorten the remaining schedule: fewer NFE).",
        choices=r2.CLOCKS),
}


def build_r2(config, process, graphdef, *, num_steps: int, batch_size: int):
  s = config.sample

  def sample(params, key, prefix=None, aux=None):
    del aux
    model = nnx.merge(graphdef, params)
    return r2.mdlm_r2(process.log_probs_fn(model), key, mask_id=process.mask_id,
                      schedule=process.schedule, options=r2.options_from_config(s.r2),
                      cache=s.cache, time_conditioned=config.model.time_conditioning,
                      **_common(config, num_steps, batch_size, prefix))

  return sample


register(SamplerSpec("r2", build_r2, "R2-dLLM's decoding rules", fields=R2_FIELDS))


# ------------------------------------------------------------------ RGAS


RGAS_FIELDS = {
    "distill.didi.rgas_rerank_ratio": Field(
        0.5, "RGAS sampler (decoding/rgas.py, benchmarks/didi_rgas.py): the first (1 - "
        "rgas_rerank_ratio) of the steps tilt the student's logits by h x clip(grad of the "
        "discriminator score, +-rgas_grad_clip), h ramping rgas_scale_start -> "
        "rgas_scale_end; the rest draw rgas_candidates candidates and pick one ~ softmax(score "
        "/ temperature).", check=F.unit_closed),
    "distill.didi.rgas_scale_start": Field(30.0, "tilt scale h at the first tilt step."),
    "distill.didi.rgas_scale_end": Field(40.0, "tilt scale h at the last tilt step."),
    "distill.didi.rgas_grad_clip": Field(1.0, "clip of the discriminator-score gradient.",
                                         check=F.positive),
    "distill.didi.rgas_candidates": Field(4, "candidates per re-ranking step.",
                                          check=F.at_least(1)),
    "distill.didi.rgas_temperature": Field(1.0, "temperature of the re-ranking softmax.",
                                           check=F.positive),
}


def build_rgas(config, process, graphdef, *, num_steps: int, batch_size: int):
  """RGAS on the student `params`, guided by the discriminator aux["disc"]; every network sees
  sigma(t) as in training."""
  d = config.distill.didi
  d_graphdef, _ = disc_lib.abstract(config.model, process.vocab_size)
  sigma = process.schedule.sigma

  def sample(params, key, prefix=None, aux=None):
    disc_params = require_aux(aux, "disc", "rgas", "discriminator")
    student, disc = nnx.merge(graphdef, params), nnx.merge(d_graphdef, disc_params)
    return rgas.rgas(process.log_probs_fn(student), lambda z, t: disc(z, sigma(t)), key,
                     mask_id=process.mask_id, schedule=process.schedule,
                     rerank_ratio=d.rgas_rerank_ratio, scale_start=d.rgas_scale_start,
                     scale_end=d.rgas_scale_end, grad_clip=d.rgas_grad_clip,
                     num_candidates=d.rgas_candidates, temperature=d.rgas_temperature,
                     **_common(config, num_steps, batch_size, prefix))

  return sample


register(SamplerSpec("rgas", build_rgas, "DiDi-Instruct's reward-guided sampler",
                     fields=RGAS_FIELDS, aux="disc", objectives=("didi",)))
