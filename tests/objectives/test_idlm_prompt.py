"""IDLM on prompted rows (objectives/idlm.py "Prompted rows"): the prompt is clamped in the
student's input, in the re-noised sample teacher and fake score, and gets no loss."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax import models
from idlm_jax.data import reasoning, tokenizers
from idlm_jax.diffusion import processes
from idlm_jax.models import dllm
from idlm_jax.objectives import idlm
from idlm_jax.train import state as state_lib

SPEC = "configs/idlm_reasoning.py:smoke"


@pytest.fixture(scope="module")
def setup():
  config = config_lib.load_config(SPEC, ["model.hidden_size=32", "model.n_blocks=1",
                                         "model.n_heads=2"])
  tok = tokenizers.get_tokenizer("reasoning")
  nets = []
  for seed in range(3):  # student, fake, teacher: different random LLaDA decoders
    model = models.build_model(config.model, tok.model_vocab_size, nnx.Rngs(params=seed))
    graphdef, params = state_lib.split_params(model)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(10 + seed), len(leaves))
    nets.append(jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape)
                                             for x, k in zip(leaves, keys)]))
  rows, _ = reasoning.load_reasoning_split("train", 6, seq_len=64, families=["arithmetic"],
                                           tokenizer=tok, prompt_width=16)
  batch = {k: jnp.asarray(v) for k, v in rows.gather(np.arange(6)).items()}
  proc = idlm.parts(config, processes.get(config, vocab_size=tok.model_vocab_size,
                                          mask_id=tok.mask_id))
  return functools.partial(nnx.merge, graphdef), nets, batch, proc, tok


def test_prompt_is_clamped_in_student_and_renoised_sample(setup):
  net, (student, _, _), batch, proc, tok = setup
  prompt = np.asarray(batch["prompt_mask"]) > 0
  assert prompt.any() and (~prompt).any()
  x0 = np.asarray(batch["input_ids"])
  masked_response = 0
  for i in range(4):
    G, r = idlm.student_sample(proc, net, student, batch, jax.random.key(i),
                               jax.random.key(100 + i))
    G = np.asarray(G)
    one_hot = np.eye(G.shape[-1], dtype=G.dtype)[x0]
    np.testing.assert_array_equal(G[prompt], one_hot[prompt])  # never masked for the student
    tokens, net_in = np.asarray(r.tokens), np.asarray(r.net_in)
    np.testing.assert_array_equal(tokens[prompt], x0[prompt])  # teacher and fake see it
    np.testing.assert_array_equal(net_in[prompt], x0[prompt])
    masked_response += int((tokens[~prompt] == tok.mask_id).sum())
  assert masked_response > 0  # the response is re-noised


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_prompt_gets_no_loss(setup):
  net, (student, fake, teacher), batch, proc, _ = setup
  prompt = np.asarray(batch["prompt_mask"]) > 0
  G, r = idlm.student_sample(proc, net, student, batch, jax.random.key(0), jax.random.key(1))
  out_t = proc.output(idlm.conditional(net(teacher), batch), r)
  out_f = proc.output(idlm.conditional(net(fake), batch), r)
  fake_pos = np.asarray(proc.fake_loss(out_f, r, G))
  inverse_pos = np.asarray(proc.inverse_loss(out_t, out_f, r, G))
  assert (fake_pos[prompt] == 0).all() and (inverse_pos[prompt] == 0).all()
  assert np.abs(fake_pos[~prompt]).sum() > 0 and np.abs(inverse_pos[~prompt]).sum() > 0
  # the losses average over response tokens only
  response = np.asarray(batch["attention_mask"]) * (1 - np.asarray(batch["prompt_mask"]))
  loss, tokens = idlm.fake_loss(proc, net, fake, student, batch, jax.random.key(2))
  assert float(tokens) == response.sum() and np.isfinite(float(loss))
  loss, tokens = idlm.inverse_loss(proc, net, student, fake, teacher, batch, jax.random.key(3))
  assert float(tokens) == response.sum() and np.isfinite(float(loss))
  grads = jax.grad(lambda p: idlm.inverse_loss(proc, net, p, fake, teacher, batch,
                                               jax.random.key(3))[0])(student)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_left_prompt_pads_are_hidden_from_every_network(setup):
  """The pad tokens left of a prompt (attention 0) change neither loss: the LLaDA decoder gets
  the key padding mask and the pads are outside the loss."""
  net, (student, fake, teacher), batch, proc, tok = setup
  pads = np.asarray(batch["attention_mask"]) == 0
  assert pads.any()
  other = dict(batch, input_ids=jnp.where(jnp.asarray(pads), 7, batch["input_ids"]))
  for fn in (lambda b: idlm.fake_loss(proc, net, fake, student, b, jax.random.key(4)),
             lambda b: idlm.inverse_loss(proc, net, student, fake, teacher, b,
                                         jax.random.key(5))):
    np.testing.assert_allclose(float(fn(batch)[0]), float(fn(other)[0]), rtol=1e-5, atol=1e-6)


def test_unprompted_rows_are_unchanged(setup):
  """Without a prompt_mask nothing is clamped and every valid token is in the loss."""
  net, (student, fake, _), batch, proc, _ = setup
  plain = {k: batch[k] for k in ("input_ids", "attention_mask")}
  G, r = idlm.student_sample(proc, net, student, plain, jax.random.key(0), jax.random.key(1))
  assert idlm.clamp_prompt(r, plain) is r and idlm.conditional(net(student), plain) is not None
  _, tokens = idlm.fake_loss(proc, net, fake, student, plain, jax.random.key(2))
  assert float(tokens) == float(np.asarray(plain["attention_mask"]).sum())


def test_idlm_reasoning_config_resolves():
  c = config_lib.load_config("configs/idlm_reasoning.py")
  assert c.objective == "idlm" and c.diffusion.algo == "mdlm" and c.model.name == "llada"
  assert c.data.source == "reasoning" and c.distill.teacher.endswith("reasoning_llada")
  with pytest.raises(config_lib.ConfigError, match="clamps prompts"):
    config_lib.validate(config_lib.load_config("configs/idlm_reasoning.py", [
        "diffusion.algo='sedd'", "diffusion.parameterization='score'",
        "model.time_conditioning=True", "sample.sampler='analytic'"]))


@pytest.mark.parametrize("objective", ["didi", "sdtt", "diffusion"])
def test_objectives_without_prompt_clamping_refuse_prompted_rows(objective):
  """DiDi, SDTT and plain pretraining would treat the prompt as text to generate: a clear
  config error names the objectives that clamp it."""
  with pytest.raises(config_lib.ConfigError, match="does not handle prompted rows.*idlm"):
    config_lib.validate(config_lib.load_config("configs/idlm_reasoning.py",
                                               [f"objective='{objective}'"]))


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
def test_chunked_losses_equal_unchunked_on_the_llada_decoder(setup, tie):
  """model.loss_chunk on prompted LLaDA rows (key padding mask, clamped prompt): both losses
  and the gradients through the head (`DLLM.head`: lm_head, or the tied embedding) as
  unchunked."""
  _, _, batch, _, tok = setup
  overrides = ["model.hidden_size=32", "model.n_blocks=1", "model.n_heads=2"]
  config = config_lib.load_config(SPEC, overrides)
  layout = dataclasses.replace(models.llada_config(config.model, tok.model_vocab_size),
                               tie_embeddings=tie)
  nets = []
  for seed in range(3):
    graphdef, params = state_lib.split_params(dllm.DLLM(layout, rngs=nnx.Rngs(params=seed)))
    nets.append(jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(seed), x.shape),
                             params))
  net, (student, fake, teacher) = functools.partial(nnx.merge, graphdef), nets
  chunked = config_lib.load_config(SPEC, overrides + ["model.loss_chunk=24"])
  fake_size = None
  for fn, args in ((idlm.fake_loss, (fake, student)),
                   (idlm.inverse_loss, (student, fake, teacher))):
    out = []
    for c in (config, chunked):
      proc = idlm.parts(c, processes.get(c, vocab_size=tok.model_vocab_size, mask_id=tok.mask_id))
      out.append(jax.jit(jax.value_and_grad(functools.partial(fn, proc, net), has_aux=True))(
          *args, batch, jax.random.key(6)))
    (v0, _), g0 = out[0]
    (v1, _), g1 = out[1]
    # the inverse loss is a difference of teacher and fake cross-entropies, each about the
    # fake loss's size (5.7 for tie=False, 100x the difference): its rounding scales with them
    # (jax 0.11.2 sums in another order than 0.10.2: 6.7e-8 apart, 1.2e-6 of the difference)
    fake_size = fake_size or abs(float(v0))
    np.testing.assert_allclose(float(v1), float(v0), rtol=0, atol=1e-6 * fake_size)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
