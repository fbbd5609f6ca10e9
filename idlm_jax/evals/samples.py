"""Generation from a diffusion model (unconditional, or conditioned on prompt prefixes),
decoded to text."""

import pathlib
import time

import jax
import numpy as np

from idlm_jax import decoding
from idlm_jax.diffusion import categorical
from idlm_jax.evals import progress
from idlm_jax.train import parallel


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


def generate(config, process, graphdef, params, tokenizer, mesh, *, seed: int, num_steps=None,
             prefix_texts=None, aux=None) -> dict:
  """`sample.num_samples` sequences: token ids, decoded texts, NFE (and the discriminator calls
  of RGAS, see call_counts) and wall-clock seconds.

  `prefix_texts` (default: `sample.prompt`, see `load_prompts`): sample i continues
  [BOS] + prompt i mod n, whose tokens are clamped; None/"" is unconditional. `aux`: the other
  networks' params the sampler reads (`decoding.sampler_aux`); `process`: the model's
  diffusion process (diffusion/processes)."""
  s = config.sample
  num_steps = num_steps or s.steps
  batch = s.batch_size
  sampler = decoding.make_sampler(config, process, graphdef, num_steps=num_steps,
                                  batch_size=batch)
  if prefix_texts is None:
    prefix_texts = load_prompts(s.get("prompt", ""))
  n_batches = -(-s.num_samples // batch)
  prefix = None
  if prefix_texts:
    prefix = prompt_prefix(tokenizer, list(prefix_texts), n_batches * batch, config.data.seq_len)
  outs = []
  start = time.time()
  phase = progress.Phase("samples", n_batches * num_steps)
  with categorical.x64_scope(s.precision), parallel.mesh_context(mesh):
    for i in range(n_batches):
      key = jax.random.fold_in(jax.random.key(seed), i)
      rows = None if prefix is None else prefix[i * batch:(i + 1) * batch]
      outs.append(sampler(params, key, rows, aux))
      if n_batches > 1:
        jax.block_until_ready(outs[-1])
        phase.advance(num_steps, f"batch {i + 1}/{n_batches} at {num_steps} steps")
    outs = parallel.to_host(outs)  # also when sharded over hosts
  seconds = time.time() - start
  ids = np.concatenate([o.tokens for o in outs])[:s.num_samples]
  return {"tokens": ids, "texts": tokenizer.decode_batch(ids.tolist()),
          **decoding.call_counts(outs),
          "steps": num_steps, "seconds": seconds,
          "prompts": list(prefix_texts) if prefix_texts else []}
