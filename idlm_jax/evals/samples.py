"""Generation from a diffusion model (unconditional, or conditioned on prompt prefixes),
decoded to text."""

import pathlib
import time

import jax
import numpy as np
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax.diffusion import categorical, mdlm, r2_samplers, samplers
from idlm_jax.diffusion import score_samplers, sedd, uniform_samplers
from idlm_jax.diffusion.schedules import get_schedule
from idlm_jax.train import parallel


COUNTS = ("nfe", "disc_forwards", "disc_grads")  # per-sample network calls samplers report


def make_sampler(config, graphdef, mask_id: int, *, num_steps: int, batch_size: int):
  """jitted (params, key, prefix=None, aux=None) -> SampleOutput (R2Output for "r2",
  rgas.RGASOutput for "rgas") running config.sample.sampler on the diffusion.algo model (MDLM
  ancestral with cache by default); `prefix` int32 [batch_size, P] is clamped (negative entries
  free), see samplers.apply_prefix. `aux`: the params of other networks the sampler reads
  (`sampler_aux`: RGAS's discriminator), None for the samplers that read only the model."""
  schedule = get_schedule(config.diffusion.schedule, config.diffusion.eps)
  s = config.sample

  algo = config.diffusion.algo
  if s.sampler == "rgas":  # DiDi-Instruct's reward-guided sampler (issue #6)
    return jax.jit(_rgas_sampler(config, graphdef, mask_id, num_steps, batch_size))
  if algo != "mdlm" or s.sampler not in ("ancestral", "r2"):  # teachers (issue #3)
    return jax.jit(_teacher_sampler(config, graphdef, mask_id, schedule, num_steps, batch_size))

  def sample(params, key, prefix=None, aux=None):
    del aux  # reads the model only
    model = nnx.merge(graphdef, params)

    def log_probs_fn(xt, t):
      return mdlm.subs_log_probs(model(xt, schedule.sigma(t)), xt, mask_id)

    common = dict(batch_size=batch_size, seq_len=config.data.seq_len, mask_id=mask_id,
                  schedule=schedule, num_steps=num_steps, eps=s.eps, cache=s.cache,
                  time_conditioned=config.model.time_conditioning, precision=s.precision,
                  noise_removal=s.noise_removal, prefix=prefix)
    if s.sampler == "r2":  # fast decoding (issue #8)
      return r2_samplers.mdlm_r2(log_probs_fn, key,
                                 options=r2_samplers.options_from_config(s.r2), **common)
    return samplers.mdlm_ancestral(log_probs_fn, key, **common)

  return jax.jit(sample)


def check_rgas(config) -> None:
  """sample.sampler="rgas" needs the discriminator that only a DiDi-Instruct run trains."""
  if config.objective != "didi":
    raise config_lib.ConfigError(
        f"config.sample.sampler: 'rgas' (DiDi-Instruct's reward-guided sampler) reads the "
        f"discriminator of an objective='didi' run, got objective={config.objective!r} (use "
        f"'ancestral')")


def sampler_aux(config, state) -> dict | None:
  """The params besides the model's that config.sample.sampler reads, from a TrainState:
  {"disc": the discriminator's params} for "rgas" (a didi run's state.aux["disc"]; it keeps
  no EMA), None for every other sampler."""
  if config.sample.sampler != "rgas":
    return None
  check_rgas(config)
  return {"disc": state.aux["disc"].params}


def _rgas_sampler(config, graphdef, mask_id, num_steps, batch_size):
  """(params, key, prefix=None, aux) -> rgas.RGASOutput: RGAS (diffusion/rgas.py) on the
  student `params`, guided by the discriminator aux["disc"] (objectives/didi.py)."""
  check_rgas(config)
  from idlm_jax.objectives import didi  # (lazy: objectives import the trainer's modules)
  fn = didi.make_rgas_sampler(config, graphdef, mask_id, num_steps=num_steps,
                              batch_size=batch_size)

  def sample(params, key, prefix=None, aux=None):
    if not aux or "disc" not in aux:
      raise ValueError("sample.sampler='rgas' needs the discriminator's params: pass "
                       "aux=samples.sampler_aux(config, state) (a didi run's TrainState)")
    return fn(params, aux["disc"], key, prefix)

  return sample


def call_counts(outs) -> dict:
  """Mean per-sample network calls over sampler outputs (on the host): the model's NFE and,
  for RGAS, the discriminator's forwards and how many of those had a backward (reported
  separately: the papers' NFE counts the student only)."""
  return {k: float(np.mean([getattr(o, k) for o in outs])) for k in COUNTS
          if hasattr(outs[0], k)}


def _teacher_sampler(config, graphdef, mask_id, schedule, num_steps, batch_size):
  """(params, key) -> SampleOutput for sample.sampler on a diffusion.algo model:
  analytic/euler (SEDD score samplers; an MDLM model through its score conversion) or the
  Duo/UDLM ancestral sampler (config.py rejects other combinations)."""
  s, algo = config.sample, config.diffusion.algo

  def sample(params, key, prefix=None, aux=None):
    del aux  # reads the model only
    model = nnx.merge(graphdef, params)
    if algo in ("udlm", "duo"):
      def log_probs_fn(zt, t):
        return jax.nn.log_softmax(model(zt, schedule.sigma(t)), axis=-1)

      return uniform_samplers.duo_ancestral(
          log_probs_fn, key, batch_size=batch_size, seq_len=config.data.seq_len,
          vocab_size=model.vocab_size, alpha_fn=schedule.alpha, num_steps=num_steps,
          eps=s.eps, precision=s.precision, noise_removal=s.noise_removal, top_p=s.top_p,
          prefix=prefix)

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
        precision=s.precision, noise_removal=s.noise_removal, prefix=prefix)

  return sample


def load_prompts(prompt: str) -> list[str] | None:
  """config.sample.prompt -> prompts: the lines of a file (blank lines skipped), the string
  itself, or None for "" (unconditional)."""
  if not prompt:
    return None
  path = pathlib.Path(prompt)
  if path.is_file():
    lines = [line.rstrip("\n") for line in path.read_text().splitlines()]
    return [line for line in lines if line.strip()] or None
  return [prompt]


def prompt_prefix(tokenizer, texts, num_rows: int, seq_len: int) -> np.ndarray:
  """int32 [num_rows, P]: row i holds [BOS] + tokens of texts[i % n], -1 after it (free);
  P is the longest prompt, which must leave room to generate."""
  ids = [[tokenizer.bos_id, *tokenizer.encode(t)] for t in texts]
  width = max(len(i) for i in ids)
  if width >= seq_len:
    raise ValueError(f"sample.prompt: a prompt of {width} tokens (with [BOS]) leaves no room "
                     f"in data.seq_len={seq_len}")
  table = np.full((len(ids), width), -1, np.int32)
  for row, i in enumerate(ids):
    table[row, :len(i)] = i
  return table[np.arange(num_rows) % len(ids)]


def generate(config, graphdef, params, tokenizer, mesh, *, seed: int, num_steps=None,
             prefix_texts=None, aux=None) -> dict:
  """`sample.num_samples` sequences: token ids, decoded texts, NFE (and the discriminator calls
  of RGAS, see call_counts) and wall-clock seconds.

  `prefix_texts` (default: `sample.prompt`, see `load_prompts`): sample i continues
  [BOS] + prompt i mod n, whose tokens are clamped; None/"" is unconditional. `aux`: the other
  networks' params the sampler reads (`sampler_aux`)."""
  s = config.sample
  num_steps = num_steps or s.steps
  batch = s.batch_size
  sampler = make_sampler(config, graphdef, tokenizer.mask_id, num_steps=num_steps,
                         batch_size=batch)
  if prefix_texts is None:
    prefix_texts = load_prompts(s.get("prompt", ""))
  n_batches = -(-s.num_samples // batch)
  prefix = None
  if prefix_texts:
    prefix = prompt_prefix(tokenizer, list(prefix_texts), n_batches * batch, config.data.seq_len)
  outs = []
  start = time.time()
  with categorical.x64_scope(s.precision), parallel.mesh_context(mesh):
    for i in range(n_batches):
      key = jax.random.fold_in(jax.random.key(seed), i)
      rows = None if prefix is None else prefix[i * batch:(i + 1) * batch]
      outs.append(sampler(params, key, rows, aux))
    outs = parallel.to_host(outs)  # also when sharded over hosts
  seconds = time.time() - start
  ids = np.concatenate([o.tokens for o in outs])[:s.num_samples]
  return {"tokens": ids, "texts": tokenizer.decode_batch(ids.tolist()), **call_counts(outs),
          "steps": num_steps, "seconds": seconds,
          "prompts": list(prefix_texts) if prefix_texts else []}
