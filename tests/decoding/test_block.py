"""Block decoding for prompted generation (decoding/block.py): LLaDA's vanilla loop against a
brute-force Python reference, the threshold rule on hand-made confidences, NFE counts, and the
KV-cached decodes against the uncached one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax.decoding import block as B
from idlm_jax.diffusion import categorical
from idlm_jax.models import dllm

MASK = 299


@pytest.fixture(scope="module")
def model():
  """The tiny LLaDA with a sharpened head (confident, varied predictions)."""
  m = dllm.build(dllm.tiny("llada"), seed=3)
  m.lm_head.kernel[...] = m.lm_head.kernel[...] * 60.0
  return m


def _prompt(b=2, p=5, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 290, (b, p)), jnp.int32)


def test_transfer_counts_is_llada():
  assert B.transfer_counts(16, 5).tolist() == [4, 3, 3, 3, 3]
  assert B.transfer_counts(8, 8).tolist() == [1] * 8


def test_threshold_rule_on_hand_made_confidences():
  """Top-1 plus every masked position with c >= tau; unmasked positions never change."""
  o = B.BlockOptions(gen_length=6, block_length=6, threshold=0.9)
  block = jnp.array([[MASK, MASK, 5, MASK, MASK, MASK], [MASK, MASK, MASK, 7, MASK, MASK]])
  conf = jnp.array([[0.3, 0.95, 0.99, 0.9, 0.2, 0.1], [0.5, 0.6, 0.4, 0.99, 0.3, 0.2]],
                   jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) + 100
  streak = B.r2_rules.empty_streak(block.shape)
  new, _, masks = B.commit_step(block, conf, tokens, streak, MASK, o, 0, jax.random.key(0))
  floor, thr = np.asarray(masks[0]), np.asarray(masks[1])
  assert floor.tolist() == [[0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]  # top-1 (5 is unmasked)
  assert thr.tolist() == [[0, 0, 0, 1, 0, 0], [0] * 6]  # 0.9 >= 0.9; row 2: top-1 only
  assert np.asarray(new).tolist() == [[MASK, 101, 5, 103, MASK, MASK],
                                      [MASK, 107, MASK, 7, MASK, MASK]]


def _reference_llada(model, prompt, gen, block, steps):
  """LLaDA's `generate` (greedy, low-confidence remasking), written out in Python/NumPy;
  `model` is any function of ids [B, L] -> logits [B, L, V]."""
  x = np.concatenate([np.asarray(prompt), np.full((prompt.shape[0], gen), MASK)], 1)
  p = prompt.shape[1]
  for blk in range(gen // block):
    s, e = p + blk * block, p + (blk + 1) * block
    counts = np.asarray(B.transfer_counts(block, steps))
    for j in range(steps):
      logits = np.asarray(model(jnp.asarray(x, jnp.int32)), np.float64)
      x0 = logits.argmax(-1)
      prob = np.exp(logits - logits.max(-1, keepdims=True))
      prob /= prob.sum(-1, keepdims=True)
      conf = np.take_along_axis(prob, x0[..., None], -1)[..., 0]
      conf[:, :s] = -np.inf
      conf[:, e:] = -np.inf
      conf = np.where(x == MASK, conf, -np.inf)
      for r in range(x.shape[0]):
        top = np.argsort(-conf[r], kind="stable")[:counts[j]]
        x[r, top] = x0[r, top]
  return x


def test_vanilla_matches_reference_and_counts_nfe(model):
  prompt = _prompt()
  o = B.BlockOptions(gen_length=8, block_length=4, steps=2, threshold=0.0)
  out = B.decode(model, prompt, jax.random.key(0), mask_id=MASK, options=o)
  ref = _reference_llada(model, prompt, 8, 4, 2)
  assert np.asarray(out.tokens).tolist() == ref.tolist()
  assert int(out.nfe) == 4 and np.asarray(out.row_nfe).tolist() == [4, 4]
  assert np.asarray(out.commits)[:, 0].tolist() == [8, 8]
  assert (np.asarray(out.commit_step) >= 0).all()


@pytest.mark.parametrize("cache", [pytest.param("prefix", marks=pytest.mark.slow), "dual"])
def test_cached_equals_uncached_with_one_step_per_block(model, cache):
  """One step per block: every forward is a block's refresh forward, so the cached decode
  must equal the uncached one token for token (and count the same NFE)."""
  prompt = _prompt(p=6, seed=1)
  am = jnp.array([[0, 0, 1, 1, 1, 1], [1] * 6], jnp.int32)
  base = B.BlockOptions(gen_length=12, block_length=4, steps=1, threshold=0.0)
  ref = B.decode(model, prompt, jax.random.key(0), mask_id=MASK, options=base,
                 attention_mask=am)
  got = B.decode(model, prompt, jax.random.key(0), mask_id=MASK,
                 options=base._replace(cache=cache), attention_mask=am)
  assert np.asarray(got.tokens).tolist() == np.asarray(ref.tokens).tolist()
  assert int(got.nfe) == int(ref.nfe) == 3


@pytest.mark.slow
def test_threshold_decoding_nfe_and_cached_close(model):
  """Adaptive NFE within [blocks, gen_length]; every position decoded; the dual-cache decode
  makes its first forward of each block exactly (same first-step commits) and finishes."""
  prompt = _prompt(p=4, seed=2)
  o = B.BlockOptions(gen_length=8, block_length=4, steps=0, threshold=0.5)
  out = B.decode(model, prompt, jax.random.key(0), mask_id=MASK, options=o)
  assert not (np.asarray(out.tokens) == MASK).any()
  assert 2 <= int(out.nfe) <= 8
  assert (np.asarray(out.row_nfe) <= int(out.nfe)).all()
  assert np.asarray(out.commits).sum() == 2 * 8
  dual = B.decode(model, prompt, jax.random.key(0), mask_id=MASK,
                  options=o._replace(cache="dual"))
  first = (np.asarray(out.commit_step) == 0)
  assert ((np.asarray(dual.commit_step) == 0) == first).all()
  assert not (np.asarray(dual.tokens) == MASK).any()


def test_r2_rules_run_and_are_counted(model):
  prompt = _prompt(p=4, seed=3)
  o = B.BlockOptions(gen_length=8, block_length=8, steps=0, threshold=0.9,
                     rules=("confidence_cluster", "token_cluster", "temporal"),
                     spatial_threshold=0.3, temporal_threshold=0.3)
  out = B.decode(model, prompt, jax.random.key(0), mask_id=MASK, options=o)
  plain = B.decode(model, prompt, jax.random.key(0), mask_id=MASK,
                   options=o._replace(rules=()))
  c = np.asarray(out.commits)
  assert c.sum() == 16 and c[:, 2:].sum() > 0
  assert int(out.nfe) <= int(plain.nfe)


@pytest.mark.slow
def test_make_decoder_is_one_program(model):
  """One jitted program: the same tokens as tracing `generate` inside a caller's jit."""
  graphdef, params = nnx.split(model)
  o = B.BlockOptions(gen_length=8, block_length=4, steps=0, threshold=0.5, cache="dual")
  run = B.make_decoder(graphdef, o, MASK)
  prompt = _prompt(p=4, seed=2)
  a = run(params, prompt, jax.random.key(0))
  with categorical.x64_scope("float64"):
    b = jax.jit(lambda p: B.generate(nnx.merge(graphdef, p), prompt, jax.random.key(0),
                                     mask_id=MASK, options=o))(params)
  assert np.asarray(a.tokens).tolist() == np.asarray(b.tokens).tolist()
  assert int(a.nfe) == int(b.nfe)


def test_bad_options():
  with pytest.raises(ValueError, match="multiple of block_length"):
    B.check_options(B.BlockOptions(gen_length=10, block_length=4))
  with pytest.raises(ValueError, match="cache"):
    B.check_options(B.BlockOptions(cache="full"))


@pytest.fixture(scope="module")
def dream_pair():
  """A one-layer tiny Dream (with a sharpened head) and the same weights without the shift.
  One layer: the K/V of every position depend on its own token only, so the dual and prefix
  caches are exact and every cached decode must equal the brute force."""
  cfg = dllm.tiny("dream").replace(n_layers=1)
  m = dllm.build(cfg, seed=5)
  m.lm_head.kernel[...] = m.lm_head.kernel[...] * 60.0
  graphdef, state = nnx.split(m)
  raw = nnx.merge(nnx.split(dllm.build(cfg.replace(shift_logits=False)))[0], state)
  return m, raw


@pytest.mark.parametrize("cache", ["none", "dual", "prefix"])
def test_dream_block_decoding_commits_the_shifted_predictions(dream_pair, cache):
  """Dream predicts token i from position i - 1 (logits = cat([l[:, :1], l[:, :-1]])): block
  decoding of a Dream model, with every cache kind and several steps per block, equals
  LLaDA's loop run on the brute-force shifted logits of the unshifted twin."""
  dream, raw = dream_pair

  def shifted(x):
    logits = raw(x)
    return jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)

  prompt = _prompt(p=5, seed=2)
  o = B.BlockOptions(gen_length=8, block_length=4, steps=4, threshold=0.0, cache=cache)
  out = B.decode(dream, prompt, jax.random.key(0), mask_id=MASK, options=o)
  ref = _reference_llada(shifted, prompt, 8, 4, 4)
  unshifted = _reference_llada(raw, prompt, 8, 4, 4)
  assert ref.tolist() != unshifted.tolist()  # the shift matters for these prompts
  assert np.asarray(out.tokens).tolist() == ref.tolist()
  assert int(out.nfe) == 8


def test_block_options_hold_an_r2_options():
  """The rule settings live once, in R2Options; the flat names reach them."""
  o = B.BlockOptions(gen_length=8, block_length=4, threshold=0.5, rules=("temporal",),
                     spatial_threshold=0.3)
  assert isinstance(o.r2, B.r2_lib.R2Options) and "threshold" not in o._fields
  assert (o.r2.threshold, o.r2.rules, o.r2.spatial_threshold) == (0.5, ("temporal",), 0.3)
  assert o.threshold == 0.5 and o.block_length == 4 and o.r2.block_length == 0
  default = B.BlockOptions().r2
  assert default == B.r2_lib.R2Options(rules=())
  changed = o._replace(rules=(), cache="dual", temporal_steps=2)
  assert (changed.r2.rules, changed.cache, changed.r2.temporal_steps) == ((), "dual", 2)
  assert changed.r2.threshold == 0.5 and list(o._asdict()) == list(B.FLAT_FIELDS)
  with pytest.raises(TypeError, match="bogus"):
    B.BlockOptions(bogus=1)
