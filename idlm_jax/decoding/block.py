"""Prompted generation for diffusion LLMs (LLaDA, Fast-dLLM, R2-dLLM) as ONE compiled program
with static shapes: semi-autoregressive block decoding, the threshold rule, prefix / dual KV
caches and the R2 rules inside the same forward (reference/r2_dllm.md §1).

Canvas: [prompt (P tokens, left-padded: `attention_mask` 0 hides the pads) | gen_length
[MASK]s]; the response region is cut into gen_length / block_length blocks decoded left to
right (LLaDA's `generate`, Nie et al. 2025). Within a block, every step is one network
forward (1 NFE) whose logits give, per masked position of the block, the argmax token a_i and
its confidence c_i = softmax(logits)[a_i] in float64 (LLaDA computes p in float64);
temperature > 0 picks a_i = argmax(exp(logits) / (-log u)^temperature) with float64 uniforms
(LLaDA's `add_gumbel_noise`, float64 because low-precision Gumbel lowers entropy: Zheng et al.
2024), c_i stays the softmax probability of a_i. remasking="random" replaces c_i by a uniform
draw (LLaDA's random remasking). Then the step commits, in R2's order (§1.6):
  1. the floor. `steps` > 0 (vanilla LLaDA): exactly k_j tokens at step j of the block, the
     k_j most confident, with k_j = n // steps plus one for the first n % steps steps (LLaDA's
     `get_num_transfer_tokens`, n = block_length): `steps` forwards per block.
     `steps` = 0 (Fast-dLLM): the single most confident masked position (progress guarantee).
  2. threshold > 0: every other masked position with c_i >= threshold (Fast-dLLM's
     `get_transfer_index` with threshold 0.9).
  3. the R2 rules enabled in `rules` on what is still masked (r2_rules: confidence cluster,
     token cluster, temporal streaks that live only within the block and count forwards).
With steps = 0 a block ends as soon as it has no [MASK] (adaptive NFE, at most block_length
forwards); committed tokens are never remasked. Rows of a batch are independent: a row whose
block is finished commits nothing while the others go on, and its per-row NFE counts only the
forwards made while it had a [MASK] in the block (what batch size 1 would count).

KV caches (Fast-dLLM, Wu et al. 2025, `generate_with_prefix_cache` / `_dual_cache`): the
FIRST forward of every block is a full forward over the canvas that also refreshes the cache
(`DLLM.forward_with_cache`, 1 NFE, its logits are the uncached ones exactly); the block's
further forwards run only
  cache="prefix": the remainder [s, L) (the block and everything after it) against the cached
                  prefix K/V [0, s);
  cache="dual":   the block [s, s + block_length) against the cached prefix AND suffix K/V;
so with one step per block the cached decodes equal the uncached one token for token
(tests/decoding/test_block.py), and otherwise they differ only through the cached K/V of the
committed-since-refresh positions (Fast-dLLM's approximation).

The block loop is unrolled (gen_length / block_length blocks, static starts: the prefix cache's
remainder has a different static length per block); each block's steps are a lax.while_loop.
Trace inside `categorical.x64_scope("float64")` (done by `decode`).
Dream's one-position shift (Dream predicts token i from the output at position i - 1:
logits = cat([l[:, :1], l[:, :-1]])) is applied by the model itself (`DLLM.shift_right`, one
place), so the full and refresh forwards already return aligned logits; a cached block forward
gets the token at s - 1 (`prev_token`) so that position s, the block's first, is predicted from
position s - 1 as in the full forward (without it, the block would be shifted on its own and
position s would see its own output). Tested against brute-force shifted logits in
tests/decoding/test_block.py. (Fast-dLLM's Dream loop also commits position s alone on each
block's first forward; that policy is not reproduced here.)
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from idlm_jax.decoding import r2 as r2_lib, r2_rules
from idlm_jax.diffusion import categorical

CACHES = ("none", "prefix", "dual")
REMASKING = ("low_confidence", "random")
COUNTS = ("floor", "threshold", "confidence_cluster", "token_cluster", "temporal")


class _Settings(NamedTuple):
  gen_length: int = 64
  block_length: int = 16
  steps: int = 0  # forwards per block (vanilla LLaDA); 0: adaptive (top-1 + threshold + rules)
  remasking: str = "low_confidence"
  temperature: float = 0.0
  cache: str = "none"
  r2: r2_lib.R2Options = r2_lib.R2Options(rules=())  # threshold + the R2 rules' settings


# the flat names of BlockOptions, in their positional order: its own settings and the fields
# of R2Options that block decoding reads (`threshold`: Fast-dLLM's tau, 0: off; `rules`: the R2
# rules after it, r2_rules.RULES minus "threshold"; the rules' settings)
FLAT_FIELDS = ("gen_length", "block_length", "steps", "threshold", "remasking", "temperature",
               "cache", "rules", "cluster_window", "cluster_max_unmasked", "spatial_threshold",
               "token_cluster_size", "token_cluster_select", "temporal_steps",
               "temporal_threshold", "temporal_eval")
RULE_FIELDS = tuple(f for f in FLAT_FIELDS if f not in _Settings._fields)


class BlockOptions(_Settings):
  """Decoding settings (hashable: the jit is static in them): gen_length, block_length, steps,
  remasking, temperature, cache, and `r2`, an R2Options holding the threshold and the R2 rule
  settings (decoding/r2.py; its MDLM-only fields floor, commit, block_length and clock are not
  read here). Built and read with the flat names as well: BlockOptions(threshold=0.9,
  rules=(...)), o.threshold, o._replace(rules=()) and `_asdict()` (FLAT_FIELDS) go to `r2`."""
  __slots__ = ()

  def __new__(cls, *args, r2: Optional[r2_lib.R2Options] = None, **kwargs):
    if len(args) > len(FLAT_FIELDS):
      raise TypeError(f"BlockOptions takes at most {len(FLAT_FIELDS)} positional settings")
    given = dict(zip(FLAT_FIELDS, args))
    twice = set(given) & set(kwargs)
    unknown = set(kwargs) - set(FLAT_FIELDS)
    if twice or unknown:
      raise TypeError(f"BlockOptions: unknown {sorted(unknown)} or repeated {sorted(twice)}")
    given.update(kwargs)
    rules = {k: v for k, v in given.items() if k in RULE_FIELDS}
    own = {k: v for k, v in given.items() if k not in RULE_FIELDS}
    base = cls._field_defaults["r2"] if r2 is None else r2
    return super().__new__(cls, **own, r2=base._replace(**rules))

  def __getattr__(self, name):
    if name in RULE_FIELDS:
      return getattr(self.r2, name)
    raise AttributeError(f"BlockOptions has no setting {name!r}")

  def _replace(self, **changes) -> "BlockOptions":
    flat = self._asdict()
    r2 = changes.pop("r2", self.r2)
    rules = {k: changes.pop(k) for k in RULE_FIELDS if k in changes}
    flat.update(changes)
    own = {k: v for k, v in flat.items() if k not in RULE_FIELDS}
    return BlockOptions(**own, r2=r2._replace(**rules))

  def __getnewargs_ex__(self):  # copy / pickle: rebuild from the own fields and `r2`
    return (), {**{k: getattr(self, k) for k in _Settings._fields}}

  def _asdict(self) -> dict:
    """The flat settings {name: value} in FLAT_FIELDS order (what results files record)."""
    return {k: getattr(self, k) for k in FLAT_FIELDS}


class BlockOutput(NamedTuple):
  tokens: jax.Array  # int32 [B, P + gen_length]: the prompt and the response
  nfe: jax.Array  # int32 []: forwards of the batch (cache refreshes included)
  row_nfe: jax.Array  # int32 [B]: forwards made while the row had a [MASK] in the block
  commits: jax.Array  # int32 [B, len(COUNTS)]: tokens committed by each rule, per row
  commit_step: jax.Array  # int32 [B, gen_length]: the row's forward index that committed it
  commit_rule: jax.Array  # int32 [B, gen_length]: its COUNTS index


def check_options(o: BlockOptions) -> None:
  """ValueError naming the first bad setting."""
  if o.block_length < 1 or o.gen_length % o.block_length:
    raise ValueError(f"gen_length {o.gen_length} must be a positive multiple of block_length "
                     f"{o.block_length}")
  if o.steps < 0 or o.steps > o.block_length:
    raise ValueError(f"steps per block must be in [0, block_length={o.block_length}], got "
                     f"{o.steps}")
  if o.steps == 0 and not 0.0 <= o.threshold <= 1.0:
    raise ValueError(f"threshold must be in [0, 1], got {o.threshold}")
  if o.cache not in CACHES:
    raise ValueError(f"cache must be one of {CACHES}, got {o.cache!r}")
  if o.remasking not in REMASKING:
    raise ValueError(f"remasking must be one of {REMASKING}, got {o.remasking!r}")
  bad = [r for r in o.rules if r not in COUNTS[2:]]
  if bad:
    raise ValueError(f"rules must be among {COUNTS[2:]}, got {bad}")


def transfer_counts(block_length: int, steps: int) -> jax.Array:
  """LLaDA's `get_num_transfer_tokens` for a block of n = block_length masks: k_j = n // steps,
  plus 1 for j < n % steps (int32 [steps])."""
  base, rem = divmod(block_length, steps)
  return jnp.asarray([base + (j < rem) for j in range(steps)], jnp.int32)


def confidence(logits: jax.Array, key: jax.Array, o: BlockOptions):
  """(argmax tokens a [B, n] int32, confidence c [B, n] float64) of block logits (float32)."""
  logits64 = logits.astype(jnp.float64)
  if o.temperature > 0:
    u = jax.random.uniform(key, logits.shape, jnp.float64, minval=1e-300)
    noisy = jnp.exp(logits64) / (-jnp.log(u)) ** o.temperature
    tokens = jnp.argmax(noisy, axis=-1)
  else:
    tokens = jnp.argmax(logits64, axis=-1)
  p = jax.nn.softmax(logits64, axis=-1)
  conf = jnp.take_along_axis(p, tokens[..., None], -1)[..., 0]
  if o.remasking == "random":
    conf = jax.random.uniform(jax.random.fold_in(key, 1), conf.shape, jnp.float64)
  return tokens.astype(jnp.int32), conf


def floor_commit(conf, cand, o: BlockOptions, step):
  """Step 1: the k_step most confident candidates (steps > 0) or the top-1 (steps = 0)."""
  if o.steps == 0:
    return r2_rules.top1_rule(conf, cand)
  k = transfer_counts(o.block_length, o.steps)[jnp.minimum(step, o.steps - 1)]
  score = jnp.where(cand, conf, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-score, axis=-1, stable=True), axis=-1, stable=True)
  return cand & (rank < k)


def commit_step(block, conf, tokens, streak, mask_id: int, o: BlockOptions, step, key):
  """One step's commits on the block [B, n]: (new block, new streak, [commit masks] in COUNTS
  order). Rules see the confidences of this forward, computed before any commit."""
  cand = block == mask_id
  r = o.r2
  conf32 = conf.astype(jnp.float32)
  floor = floor_commit(conf, cand, o, step)
  masks = [floor]
  done = floor
  if o.steps == 0 and r.threshold > 0:
    masks.append(cand & ~done & (conf >= r.threshold))
  else:
    masks.append(jnp.zeros_like(cand))
  done = done | masks[-1]
  segment = jnp.zeros(block.shape, jnp.int32)
  if "confidence_cluster" in r.rules:
    masks.append(r2_rules.confidence_cluster_rule(
        conf32, cand & ~done, cand & ~done, segment, window=r.cluster_window,
        max_unmasked=r.cluster_max_unmasked, tau=r.spatial_threshold))
  else:
    masks.append(jnp.zeros_like(cand))
  done = done | masks[-1]
  if "token_cluster" in r.rules:
    masks.append(r2_rules.token_cluster_rule(
        conf32, tokens, cand & ~done, segment, min_size=r.token_cluster_size,
        tau=r.spatial_threshold, select=r.token_cluster_select,
        priority=jax.random.uniform(jax.random.fold_in(key, 2), block.shape)))
  else:
    masks.append(jnp.zeros_like(cand))
  done = done | masks[-1]
  if "temporal" in r.rules:
    streak, commit = r2_rules.temporal_rule(streak, conf32, tokens, cand & ~done,
                                            steps=r.temporal_steps, tau=r.temporal_threshold,
                                            aggregate=r.temporal_eval)
    masks.append(commit)
  else:
    masks.append(jnp.zeros_like(cand))
  done = done | masks[-1]
  return jnp.where(done, tokens, block), streak, masks


def generate(model, prompt: jax.Array, key: jax.Array, *, mask_id: int, options: BlockOptions,
             attention_mask=None) -> BlockOutput:
  """Decode `options.gen_length` tokens after `prompt` int32 [B, P] (see the module docstring).
  attention_mask [B, P]: 0 on left pads of the prompt (None: no padding). Trace under
  float64 (`decode` does it)."""
  o = options
  check_options(o)
  b, p = prompt.shape
  length = p + o.gen_length
  x = jnp.concatenate([prompt.astype(jnp.int32),
                       jnp.full((b, o.gen_length), mask_id, jnp.int32)], axis=1)
  am = None
  if attention_mask is not None:
    am = jnp.concatenate([attention_mask.astype(jnp.int32),
                          jnp.ones((b, o.gen_length), jnp.int32)], axis=1)
  nfe = jnp.int32(0)
  row_nfe = jnp.zeros((b,), jnp.int32)
  counts = jnp.zeros((b, len(COUNTS)), jnp.int32)
  step_of = jnp.full((b, o.gen_length), -1, jnp.int32)
  rule_of = jnp.full((b, o.gen_length), -1, jnp.int32)
  max_steps = o.steps if o.steps > 0 else o.block_length
  for blk in range(o.gen_length // o.block_length):
    s = p + blk * o.block_length
    e = s + o.block_length
    cache = None

    def logits_of(x, first, s=s, e=e):
      """(block logits [B, n], refreshed cache or None) of the canvas x."""
      if first or o.cache == "none":
        if o.cache == "none":
          return model(x, attention_mask=am)[:, s:e], None
        full, kv = model.forward_with_cache(x, attention_mask=am)
        return full[:, s:e], kv
      # Dream: position s is predicted from position s - 1, outside the block (see above)
      prev = x[:, s - 1] if s > 0 else None
      if o.cache == "dual":
        return model.forward_block(x[:, s:e], s, cache, kind="dual", prev_token=prev,
                                   attention_mask=am), None
      out = model.forward_block(x[:, s:], s, cache, kind="prefix", prev_token=prev,
                                attention_mask=am)
      return out[:, :e - s], None

    def step(carry, logits, s=s, e=e, blk=blk):
      x, j, nfe, row_nfe, counts, step_of, rule_of, streak = carry
      block = x[:, s:e]
      active = (block == mask_id).any(-1)
      k = jax.random.fold_in(jax.random.fold_in(key, blk), j)
      tokens, conf = confidence(logits, k, o)
      new, streak, masks = commit_step(block, conf, tokens, streak, mask_id, o, j, k)
      new = jnp.where(active[:, None], new, block)
      counts = counts + jnp.stack([(m & active[:, None]).sum(-1) for m in masks], -1)
      here = (slice(None), slice(s - p, e - p))
      for r, m in enumerate(masks):
        m = m & active[:, None]
        step_of = step_of.at[here].set(jnp.where(m, row_nfe[:, None], step_of[here]))
        rule_of = rule_of.at[here].set(jnp.where(m, r, rule_of[here]))
      x = x.at[:, s:e].set(new)
      return (x, j + 1, nfe + 1, row_nfe + active.astype(jnp.int32), counts, step_of, rule_of,
              streak)

    streak = r2_rules.empty_streak((b, o.block_length))
    carry = (x, jnp.int32(0), nfe, row_nfe, counts, step_of, rule_of, streak)
    logits, cache = logits_of(x, True)  # the refresh forward (the only one with no cache)
    carry = step(carry, logits)

    def body(carry):
      return step(carry, logits_of(carry[0], False)[0])

    def more(carry, s=s, e=e):
      return (carry[0][:, s:e] == mask_id).any() & (carry[1] < max_steps)

    x, _, nfe, row_nfe, counts, step_of, rule_of, _ = jax.lax.while_loop(more, body, carry)
  return BlockOutput(x, nfe, row_nfe, counts, step_of, rule_of)


def decode(model, prompt, key, *, mask_id: int, options: BlockOptions, attention_mask=None):
  """`generate` of an nnx model as one jitted program under float64 (compiles per call: for
  repeated decoding keep `make_decoder`'s function)."""
  graphdef, params = nnx.split(model)
  return make_decoder(graphdef, options, mask_id)(params, prompt, key, attention_mask)


def make_decoder(graphdef, options: BlockOptions, mask_id: int):
  """fn(params, prompt, key, attention_mask=None) -> BlockOutput: `generate` as one jitted
  program of the model (graphdef + params), traced and run with float64 enabled."""
  check_options(options)

  @jax.jit
  def run(params, prompt, key, attention_mask):
    return generate(nnx.merge(graphdef, params), prompt, key, mask_id=mask_id, options=options,
                    attention_mask=attention_mask)

  def call(params, prompt, key, attention_mask=None):
    with categorical.x64_scope("float64"):
      return run(params, prompt, key, attention_mask)
  return call
