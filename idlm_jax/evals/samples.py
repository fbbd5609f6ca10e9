"""Unconditional generation from a masked diffusion model, decoded to text."""

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from idlm_jax.diffusion import categorical, mdlm, samplers
from idlm_jax.diffusion.schedules import get_schedule
from idlm_jax.train import parallel


def make_sampler(config, graphdef, mask_id: int, *, num_steps: int, batch_size: int):
  """jitted (params, key) -> SampleOutput running the MDLM ancestral sampler of config.sample."""
  schedule = get_schedule(config.diffusion.schedule, config.diffusion.eps)
  s = config.sample

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
