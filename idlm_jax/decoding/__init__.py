"""Decoding: every reverse sampler as one compiled loop, and the sampler registry.

ancestral.py  MDLM ancestral sampling with caching; SampleOutput, apply_prefix (prompts)
uniform.py    the Duo/UDLM ancestral sampler
score.py      SEDD's analytic (Tweedie) and Euler samplers
r2_rules.py   R2-dLLM's rules as pure functions of one call's confidences
r2.py         the MDLM sampler with the R2 rules, floors, blocks and the commit record
rgas.py       DiDi-Instruct's reward-guided ancestral sampler
trajectories.py  recording and filtering R2 trajectories (r2_finetune's data)
registry.py   SamplerSpec, register/get, make_sampler, sampler_aux, call_counts
samplers.py   the built-in samplers' registrations and their config fields
Categorical draws (float64 / exact32 / inverse-CDF) are diffusion/categorical.py: the training
steps draw with them too.
"""

from idlm_jax.decoding import samplers as _builtin  # noqa: F401 (registers the samplers)
from idlm_jax.decoding.registry import (COUNTS, SamplerSpec, call_counts, fields, get,
                                        make_sampler, names, register, sampler_aux, validate)

__all__ = ["COUNTS", "SamplerSpec", "call_counts", "fields", "get", "make_sampler", "names",
           "register", "sampler_aux", "validate"]
