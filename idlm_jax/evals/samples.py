"""Unconditional generation from a masked diffusion model, decoded to text."""

import time

import jax
import numpy as np
from flax import nnx

from idlm_jax.diffusion import categorical, mdlm, samplers
from idlm_jax.diffusion import score_samplers, sedd, uniform_samplers
from idlm_jax.diffusion.schedules import get_schedule
from idlm_jax.train import parallel


def make_sampler(config, graphdef, mask_id: int, *, num_steps: int, batch_size: int):
  """jitted (params, key) -> SampleOutput running config.sample.sampler on the
  diffusion.algo model (MDLM ancestral with cache by default)."""
  schedule = get_schedule(config.diffusion.schedule, config.diffusion.eps)
  s = config.sample

  algo = config.diffusion.algo
  if algo != "mdlm" or s.sampler != "ancestral":  # teachers (issue #3)
    return jax.jit(_teacher_sampler(config, graphdef, mask_id, schedule, num_steps, batch_size))

  def sample(params, key):
    model = nnx.merge(graphdef, params)

    def log_probs_fn(xt, t):
      return mdlm.subs_log_probs(model(xt, schedule.sigma(t)), xt, mask_id)

    return samplers.mdlm_ancestral(
        log_probs_fn, key, batch_size=batch_size, seq_len=config.data.seq_len, mask_id=mask_id,
        schedule=schedule, num_steps=num_steps, eps=s.eps, cache=s.cache,
        time_conditioned=config.model.time_conditioning, precision=s.precision,
        noise_removal=s.noise_removal)

  return jax.jit(sample)


def _teacher_sampler(config, graphdef, mask_id, schedule, num_steps, batch_size):
  """(params, key) -> SampleOutput for sample.sampler on a diffusion.algo model:
  analytic/euler (SEDD score samplers; an MDLM model through its score conversion) or the
  Duo/UDLM ancestral sampler (config.py rejects other combinations)."""
  s, algo = config.sample, config.diffusion.algo

  def sample(params, key):
    model = nnx.merge(graphdef, params)
    if algo in ("udlm", "duo"):
      def log_probs_fn(zt, t):
        return jax.nn.log_softmax(model(zt, schedule.sigma(t)), axis=-1)

      return uniform_samplers.duo_ancestral(
          log_probs_fn, key, batch_size=batch_size, seq_len=config.data.seq_len,
          vocab_size=model.vocab_size, alpha_fn=schedule.alpha, num_steps=num_steps,
          eps=s.eps, precision=s.precision, noise_removal=s.noise_removal, top_p=s.top_p)

    def log_score_fn(xt, t):
      sigma = schedule.sigma(t)
      if algo == "mdlm":
        return sedd.mdlm_log_score(mdlm.subs_log_probs(model(xt, sigma), xt, mask_id), xt,
                                   sigma, mask_id)
      return sedd.log_score(model(xt, sigma), xt, sigma, config.diffusion.process)

    return score_samplers.score_sampler(
        log_score_fn, key, kind=s.sampler, graph=config.diffusion.process,
        batch_size=batch_size, seq_len=config.data.seq_len, vocab_size=model.vocab_size,
        mask_id=mask_id, schedule=schedule, num_steps=num_steps, eps=s.eps,
        precision=s.precision, noise_removal=s.noise_removal)

  return sample


def generate(config, graphdef, params, tokenizer, mesh, *, seed: int, num_steps=None) -> dict:
  """`sample.num_samples` sequences: token ids, decoded texts, NFE and wall-clock seconds."""
  s = config.sample
  num_steps = num_steps or s.steps
  batch = s.batch_size
  sampler = make_sampler(config, graphdef, tokenizer.mask_id, num_steps=num_steps,
                         batch_size=batch)
  tokens, nfes = [], []
  start = time.time()
  with categorical.x64_scope(s.precision), parallel.mesh_context(mesh):
    for i in range(-(-s.num_samples // batch)):
      out = sampler(params, jax.random.fold_in(jax.random.key(seed), i))
      tokens.append(out.tokens)
      nfes.append(out.nfe)
    tokens, nfes = jax.device_get((tokens, nfes))
  seconds = time.time() - start
  ids = np.concatenate(tokens)[:s.num_samples]
  return {"tokens": ids, "texts": tokenizer.decode_batch(ids.tolist()),
          "nfe": float(np.mean(nfes)), "steps": num_steps, "seconds": seconds}
