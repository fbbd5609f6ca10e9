"""Performance options of the DIT (issue #10): vocabulary padding, block rematerialisation and
logits in the compute dtype.

Each must leave the model's function unchanged: same logits (exactly V of them), same
gradients, same PyTorch state dict.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax.models import DIT, from_torch_state_dict, layers, to_torch_state_dict
from idlm_jax.models.dit import pad_vocab_rows

from tests.models.test_dit import TINY, inputs, make, randomize

PAD = 16  # TINY vocab 37 -> 48


def _loss(model: DIT, ids, sigma, key=None) -> jax.Array:
  """A scalar touching every logit: mean log-softmax at the input ids plus a logit square."""
  logits = model(ids, sigma, dropout_key=key)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, ids[..., None], -1).mean() + 1e-3 * (logits ** 2).mean()


def _grads(model: DIT, ids, sigma, key=None) -> nnx.State:
  return nnx.grad(_loss)(model, ids, sigma, key)


def test_padded_vocab_size():
  assert layers.padded_vocab_size(50258, 128) == 50304
  assert layers.padded_vocab_size(30522, 128) == 30592
  assert layers.padded_vocab_size(2048, 128) == 2048
  assert layers.padded_vocab_size(37, 0) == layers.padded_vocab_size(37, 1) == 37
  with pytest.raises(ValueError, match="vocab_pad_multiple"):
    layers.padded_vocab_size(37, -1)


def test_padded_model_shapes_and_same_init_as_unpadded():
  plain, padded = make(seed=3), make(seed=3, vocab_pad_multiple=PAD)
  assert padded.padded_vocab_size == 48 and padded.vocab_size == 37
  emb = np.asarray(padded.vocab_embed.embedding[...])
  assert emb.shape == (48, 32) and padded.output_layer.linear.kernel[...].shape == (32, 48)
  np.testing.assert_array_equal(emb[:37], np.asarray(plain.vocab_embed.embedding[...]))
  assert not emb[37:].any()
  assert padded.padding_params == 11 * (2 * 32 + 1)


@pytest.mark.slow
def test_padded_logits_and_grads_equal_unpadded():
  plain, padded = make(), make(vocab_pad_multiple=PAD)
  sd = randomize(plain)
  nnx.update(padded, from_torch_state_dict({k: v.astype(np.float32) for k, v in sd.items()},
                                           nnx.state(padded)))
  ids, sigma = inputs()
  out = padded(ids, sigma)
  assert out.shape == (3, 12, 37)
  np.testing.assert_allclose(np.asarray(out), np.asarray(plain(ids, sigma)), rtol=1e-6, atol=1e-6)
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (3, 12, 37)))
  np.testing.assert_allclose(np.asarray(padded(probs, sigma)), np.asarray(plain(probs, sigma)),
                             rtol=1e-6, atol=1e-6)
  g_plain = to_torch_state_dict(_grads(plain, ids, sigma))
  g_pad_full = to_torch_state_dict(_grads(padded, ids, sigma))
  g_pad = to_torch_state_dict(_grads(padded, ids, sigma), vocab_size=37)
  for key, value in g_plain.items():
    np.testing.assert_allclose(g_pad[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
  for key in ("vocab_embed.embedding", "output_layer.linear.weight", "output_layer.linear.bias"):
    assert g_pad_full[key].shape[0] == 48 and not g_pad_full[key][37:].any(), key


def test_conversion_pads_and_unpads():
  padded = make(vocab_pad_multiple=PAD)
  sd = randomize(padded)  # goes through to_torch_state_dict (unpadded) and back (padded)
  out = to_torch_state_dict(padded)
  assert out["vocab_embed.embedding"].shape == (37, 32)
  assert out["output_layer.linear.weight"].shape == (37, 32)
  assert out["output_layer.linear.bias"].shape == (37,)
  for key, value in sd.items():
    np.testing.assert_array_equal(out[key], value.astype(np.float32), err_msg=key)
  assert not np.asarray(padded.output_layer.linear.kernel[...])[:, 37:].any()
  # a checkpoint with more rows than the padded model still fails, naming the key
  big = {k: np.zeros((60, *v.shape[1:]), np.float32) if k == "vocab_embed.embedding" else v
         for k, v in out.items()}
  with pytest.raises(ValueError, match=r"'vocab_embed\.embedding'.*\(60, 32\)"):
    from_torch_state_dict(big, nnx.state(padded))
  # inconsistent vocabulary keys are left for the shape check to report
  odd = {**out, "output_layer.linear.bias": np.zeros((36,), np.float32)}
  assert pad_vocab_rows(odd, 48) is odd


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_remat_block_same_outputs_and_grads(dropout):
  plain, remat = make(dropout=dropout), make(dropout=dropout, remat="block")
  randomize(plain)
  nnx.update(remat, nnx.state(plain))
  ids, sigma = inputs()
  key = jax.random.key(7) if dropout else None
  np.testing.assert_array_equal(np.asarray(remat(ids, sigma, dropout_key=key)),
                                np.asarray(plain(ids, sigma, dropout_key=key)))
  g_plain = jax.tree.leaves(_grads(plain, ids, sigma, key))
  g_remat = jax.tree.leaves(_grads(remat, ids, sigma, key))
  for a, b in zip(g_remat, g_plain):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_remat_under_jit_with_split_state():
  model = make(remat="block", vocab_pad_multiple=PAD)
  graphdef, state = nnx.split(model)
  ids, sigma = inputs()

  @jax.jit
  def loss(state):
    return _loss(nnx.merge(graphdef, state), ids, sigma)

  value, grads = jax.value_and_grad(loss)(state)
  assert np.isfinite(float(value))
  assert jax.tree.structure(grads) == jax.tree.structure(state)


def test_bad_remat_and_config_validation():
  with pytest.raises(ValueError, match="remat"):
    make(remat="all")
  with pytest.raises(config_lib.ConfigError, match="model.remat"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["model.remat=all"])
  with pytest.raises(config_lib.ConfigError, match="model.vocab_pad_multiple"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["model.vocab_pad_multiple=-8"])
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke",
                               ["model.vocab_pad_multiple=0", "model.remat=block"])
  assert cfg.model.vocab_pad_multiple == 0 and cfg.model.remat == "block"
  assert TINY["vocab_size"] == 37


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compute_dtype_logits_are_the_float32_logits_before_the_cast(dtype):
  model = make(dtype=dtype, vocab_pad_multiple=PAD)
  randomize(model)
  ids, sigma = inputs()
  full = model(ids, sigma)
  raw = model(ids, sigma, logits_dtype=None)
  assert full.dtype == jnp.float32 and raw.dtype == dtype and raw.shape == full.shape
  np.testing.assert_array_equal(np.asarray(raw.astype(jnp.float32)), np.asarray(full))
