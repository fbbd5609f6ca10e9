"""Sampling a real (tiny) DiT: x64 scoping leaves the network unchanged; outputs are valid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax import decoding, models
from idlm_jax.diffusion import categorical, processes
from idlm_jax.evals import samples
from idlm_jax.objectives import state as objective_state
from idlm_jax.train import parallel, state as state_lib

MASK = 3  # demo-bpe-2048's [MASK]


def _tiny():
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", ["sample.steps=8", "sample.num_samples=4",
                                                         "sample.batch_size=4"])
  model = models.build_model(cfg.model, 2048, nnx.Rngs(0))
  graphdef, params = state_lib.split_params(model)
  # randomise the zero-initialised output layer so the samples depend on the input
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
  return cfg, graphdef, params


def _proc(cfg):
  return processes.get(cfg, vocab_size=2048, mask_id=MASK)


@pytest.mark.slow
def test_forward_is_unchanged_under_x64_scope():
  cfg, graphdef, params = _tiny()
  fwd = jax.jit(lambda p, x, s: nnx.merge(graphdef, p)(x, s))
  x = jnp.array(np.random.default_rng(0).integers(0, 2048, (2, cfg.data.seq_len)), jnp.int32)
  s = jnp.zeros((2,), jnp.float32)
  plain = fwd(params, x, s)
  with categorical.x64_scope("float64"):
    wide = fwd(params, x, s)
  assert wide.dtype == jnp.float32
  np.testing.assert_allclose(wide, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("precision", [pytest.param("float64", marks=pytest.mark.slow),
                                       "exact32"])
def test_generate_gives_clean_tokens_and_counts_nfe(precision):
  cfg, graphdef, params = _tiny()
  cfg.sample.precision = precision

  class Tok:  # decode ids as a string of numbers (the real tokenizers have their own tests)
    mask_id = MASK

    @staticmethod
    def decode_batch(ids):
      return [" ".join(map(str, row)) for row in ids]

  mesh = parallel.make_mesh(cfg.parallel, jax.devices()[:1])
  out = samples.generate(cfg, _proc(cfg), graphdef, params, Tok, mesh, seed=0)
  assert out["tokens"].shape == (4, cfg.data.seq_len)
  assert not np.any(out["tokens"] == MASK)
  assert 1 <= out["nfe"] <= cfg.sample.steps + 1
  again = samples.generate(cfg, _proc(cfg), graphdef, params, Tok, mesh, seed=0)
  np.testing.assert_array_equal(out["tokens"], again["tokens"])  # fixed seed, same samples


@pytest.mark.parametrize("sampler", ["analytic", "euler"])
def test_mdlm_model_through_score_samplers(sampler):
  """An MDLM model samples with SEDD's analytic/Euler samplers via the score conversion."""
  cfg, graphdef, params = _tiny()
  cfg.sample.sampler = sampler
  mesh = parallel.make_mesh(cfg.parallel, jax.devices()[:1])
  prompts = ["5 6"] if sampler == "analytic" else None  # prompts clamp here too (issue #8)
  out = samples.generate(cfg, _proc(cfg), graphdef, params, _PromptTok, mesh, seed=0, prefix_texts=prompts)
  assert out["tokens"].shape == (4, cfg.data.seq_len)
  assert not np.any(out["tokens"] == MASK) and out["nfe"] == cfg.sample.steps + 1
  if prompts:
    np.testing.assert_array_equal(out["tokens"][:, :3], [[1, 5, 6]] * 4)


class _PromptTok:
  """Ids as numbers; a prompt "5 6" encodes to [5, 6] ([BOS] = 1)."""
  mask_id, bos_id = MASK, 1

  @staticmethod
  def encode(text):
    return [int(w) for w in text.split()]

  @staticmethod
  def decode_batch(ids):
    return [" ".join(map(str, row)) for row in ids]


def test_r2_sampler_dispatch_with_prompts():
  """sample.sampler = "r2" builds `mdlm_r2` on the DiT (traced, not compiled: the sampler's
  values are tested in tests/decoding/test_r2.py; prompts through `generate` above)."""
  cfg, graphdef, params = _tiny()
  cfg.sample.sampler = "r2"
  cfg.sample.r2.rules = "threshold,confidence_cluster,token_cluster,temporal"
  config_lib.validate(cfg)
  sampler = decoding.make_sampler(cfg, _proc(cfg), graphdef, num_steps=4, batch_size=4)
  prefix = samples.prompt_prefix(_PromptTok, ["5 6 7", "9"], 4, cfg.data.seq_len)
  with categorical.x64_scope(cfg.sample.precision):
    out = jax.eval_shape(sampler, params, jax.random.key(0), prefix)
  assert out.tokens.shape == (4, cfg.data.seq_len) and out.nfe.shape == ()
  assert out.commits.shape == (6,) and out.row_nfe.shape == (4,)


def test_prompt_config_field(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_text("first prompt\n\nsecond\n")
  assert samples.load_prompts("") is None
  assert samples.load_prompts("hello there") == ["hello there"]
  assert samples.load_prompts(str(path)) == ["first prompt", "second"]
  table = samples.prompt_prefix(_PromptTok, ["5 6", "7"], 3, 8)
  np.testing.assert_array_equal(table, [[1, 5, 6], [1, 7, -1], [1, 5, 6]])
  with pytest.raises(ValueError, match="no room"):
    samples.prompt_prefix(_PromptTok, ["5 6 7"], 1, 4)


def test_r2_config_validation():
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", ["sample.sampler=r2",
                                                         "sample.r2.rules=temporal,threshold"])
  assert cfg.sample.sampler == "r2"
  with pytest.raises(config_lib.ConfigError, match="sample.r2.rules"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["sample.r2.rules=temporal,bogus"])
  with pytest.raises(config_lib.ConfigError, match="sample.r2.temporal_eval"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["sample.r2.temporal_eval=ave"])
  with pytest.raises(config_lib.ConfigError, match="sample.sampler"):
    config_lib.load_config("configs/duo_lm1b.py:smoke", ["sample.sampler=r2"])


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_rgas_sampler_reads_the_discriminator_and_counts_its_calls():
  """sample.sampler="rgas" on a didi config: generate() with aux={"disc": ...} gives clean
  tokens, student NFE N + 1 and the discriminator's calls apart (RGAS: tilt + M x re-rank)."""
  from idlm_jax.models import discriminator as disc_lib
  cfg = config_lib.load_config("configs/didi_mdlm_owt.py:smoke", [
      "data.tokenizer='demo-bpe-2048'", "distill.teacher='x'", "sample.sampler=rgas",
      "sample.steps=4", "sample.num_samples=4", "sample.batch_size=4",
      "distill.didi.rgas_candidates=3"])
  tiny_cfg, graphdef, params = _tiny()
  cfg.model.update(tiny_cfg.model.to_dict())  # the tiny DiT's shape
  disc = disc_lib.init_from_teacher(params, jax.random.key(2), cfg.model.hidden_size)

  class State:  # the slice of a TrainState that sampler_aux reads
    aux = {"disc": objective_state.NetState(step=0, params=disc, opt_state=None, ema_params=disc)}

  class Tok:
    mask_id = MASK

    @staticmethod
    def decode_batch(ids):
      return [" ".join(map(str, row)) for row in ids]

  mesh = parallel.make_mesh(cfg.parallel, jax.devices()[:1])
  aux = decoding.sampler_aux(cfg, State)
  out = samples.generate(cfg, _proc(cfg), graphdef, params, Tok, mesh, seed=0, aux=aux)
  assert out["tokens"].shape == (4, cfg.data.seq_len) and not np.any(out["tokens"] == MASK)
  # 4 steps, rerank ratio 0.5: 2 tilt steps (forward + backward) and 2 x 3 re-rank forwards
  assert (out["nfe"], out["disc_forwards"], out["disc_grads"]) == (5.0, 8.0, 2.0)
  with pytest.raises(ValueError, match="discriminator"):
    samples.generate(cfg, _proc(cfg), graphdef, params, Tok, mesh, seed=0)  # no aux


def test_rgas_needs_a_didi_run():
  with pytest.raises(config_lib.ConfigError, match="sample.sampler.*'didi'"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["sample.sampler=rgas"])
  with pytest.raises(config_lib.ConfigError, match="'rgas'.*objective='idlm'"):
    config_lib.load_config("configs/demo.py:smoke", ["distill.teacher='x'",
                                                     "eval.samplers='ancestral,rgas'"])
  cfg = config_lib.load_config("configs/didi_mdlm_owt.py:smoke", ["distill.teacher='x'",
                                                                  "sample.sampler=rgas"])
  assert decoding.sampler_aux(config_lib.load_config("configs/didi_mdlm_owt.py:smoke", [
      "distill.teacher='x'"]), None) is None  # other samplers read the model only
  cfg.objective = "idlm"  # as a config built in code, past validation
  with pytest.raises(config_lib.ConfigError, match="rgas"):
    decoding.make_sampler(cfg, None, None, num_steps=4, batch_size=4)
