"""Tests of the DDiT denoiser against reference/teachers.md §1.4-1.5 and a NumPy reference."""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import spmd as core_spmd

from idlm_jax.models import (
    DIT,
    build_model,
    count_params,
    from_torch_state_dict,
    rotary_inv_freq,
    to_torch_state_dict,
    torch_param_names,
)

TINY = dict(vocab_size=37, hidden_size=32, n_blocks=2, n_heads=4, cond_dim=16)
B, L = 3, 12


def make(**overrides) -> DIT:
  """A tiny DIT with the given constructor overrides (and init seed)."""
  seed = overrides.pop("seed", 0)
  return DIT(**{**TINY, **overrides}, rngs=nnx.Rngs(seed))


def randomize(model: DIT, seed: int = 0) -> dict:
  """Random values for ALL parameters (zero-init ones too), set through the torch mapping."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, value in to_torch_state_dict(model).items():
    if key.endswith("norm1.weight") or key.endswith("norm2.weight") or "norm_final" in key:
      sd[key] = 1.0 + 0.2 * rng.standard_normal(value.shape)
    elif key == "vocab_embed.embedding":
      sd[key] = rng.standard_normal(value.shape)
    elif value.ndim == 2:
      gain = 0.5 if "adaLN" in key else 1.0
      sd[key] = gain * rng.standard_normal(value.shape) / math.sqrt(value.shape[1])
    else:
      sd[key] = 0.1 * rng.standard_normal(value.shape)
  sd = {k: v.astype(np.float32) for k, v in sd.items()}
  nnx.update(model, from_torch_state_dict(sd, nnx.state(model)))
  return {k: v.astype(np.float64) for k, v in sd.items()}


def inputs(seed: int = 1, vocab: int = TINY["vocab_size"]):
  """Random ids [B, L] and sigma [B]."""
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.integers(0, vocab, (B, L)), jnp.int32),
          jnp.asarray(rng.uniform(0.0, 5.0, (B,)), jnp.float32))


# ---------------------------------------------------------------------------- NumPy reference
# Written from teachers.md §1.4 with the PyTorch-named weights, float64, independent of the
# Flax code (full-width rotate_half with cat(freqs, freqs), einsum attention).


def np_linear(x, sd, name, bias=True):
  y = x @ sd[name + ".weight"].T
  return y + sd[name + ".bias"] if bias else y


def np_layer_norm(x, w):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * w


def np_silu(x):
  return x / (1.0 + np.exp(-x))


def np_gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_rope(x):
  _, seq, _, hd = x.shape
  inv_freq = 1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd)
  freqs = np.outer(np.arange(seq), inv_freq)
  emb = np.concatenate([freqs, freqs], -1)[None, :, None, :]
  rotated = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
  return x * np.cos(emb) + rotated * np.sin(emb)


def np_ddit(sd, x, sigma, n_heads):
  """MDLM DIT.forward from an input embedding x [B, L, d] and sigma [B]."""
  bsz, seq, d = x.shape
  hd = d // n_heads
  freqs = np.exp(-math.log(10000.0) * np.arange(128) / 128)
  args = sigma[:, None] * freqs[None]
  temb = np.concatenate([np.cos(args), np.sin(args)], -1)
  c = np_silu(np_linear(np_silu(np_linear(temb, sd, "sigma_map.mlp.0")), sd, "sigma_map.mlp.2"))
  n_blocks = len([k for k in sd if k.endswith("attn_qkv.weight")])
  for i in range(n_blocks):
    p = f"blocks.{i}."
    mods = np_linear(c, sd, p + "adaLN_modulation")[:, None]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = np.split(mods, 6, -1)
    h = np_layer_norm(x, sd[p + "norm1.weight"]) * (1 + scale_msa) + shift_msa
    qkv = np_linear(h, sd, p + "attn_qkv", bias=False).reshape(bsz, seq, 3, n_heads, hd)
    q, k, v = np_rope(qkv[:, :, 0]), np_rope(qkv[:, :, 1]), qkv[:, :, 2]
    att = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    att = np.exp(att - att.max(-1, keepdims=True))
    att = att / att.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", att, v).reshape(bsz, seq, d)
    x = x + gate_msa * np_linear(out, sd, p + "attn_out", bias=False)
    h = np_layer_norm(x, sd[p + "norm2.weight"]) * (1 + scale_mlp) + shift_mlp
    h = np_linear(np_gelu_tanh(np_linear(h, sd, p + "mlp.0")), sd, p + "mlp.2")
    x = x + gate_mlp * h
  shift, scale = np.split(np_linear(c, sd, "output_layer.adaLN_modulation")[:, None], 2, -1)
  h = np_layer_norm(x, sd["output_layer.norm_final.weight"]) * (1 + scale) + shift
  return np_linear(h, sd, "output_layer.linear")


def expected_torch_shapes(V, d, n_blocks, cond, hd):
  """The PyTorch state_dict keys and shapes of teachers.md §1.5, in parameters() order."""
  shapes = {"vocab_embed.embedding": (V, d),
            "sigma_map.mlp.0.weight": (cond, 256), "sigma_map.mlp.0.bias": (cond,),
            "sigma_map.mlp.2.weight": (cond, cond), "sigma_map.mlp.2.bias": (cond,)}
  for i in range(n_blocks):
    p = f"blocks.{i}."
    shapes.update({
        p + "norm1.weight": (d,), p + "attn_qkv.weight": (3 * d, d),
        p + "attn_out.weight": (d, d), p + "norm2.weight": (d,),
        p + "mlp.0.weight": (4 * d, d), p + "mlp.0.bias": (4 * d,),
        p + "mlp.2.weight": (d, 4 * d), p + "mlp.2.bias": (d,),
        p + "adaLN_modulation.weight": (6 * d, cond), p + "adaLN_modulation.bias": (6 * d,)})
  shapes.update({
      "output_layer.norm_final.weight": (d,),
      "output_layer.linear.weight": (V, d), "output_layer.linear.bias": (V,),
      "output_layer.adaLN_modulation.weight": (2 * d, cond),
      "output_layer.adaLN_modulation.bias": (2 * d,)})
  return shapes


# ---------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_shapes_dtypes_and_zero_initial_logits():
  ids, sigma = inputs()
  for dtype in (jnp.float32, jnp.bfloat16):
    logits = make(dtype=dtype)(ids, sigma)
    assert logits.shape == (B, L, TINY["vocab_size"]) and logits.dtype == jnp.float32
    assert np.all(np.asarray(logits) == 0.0)


def test_initialisation_matches_mdlm():
  model = make(hidden_size=64, n_heads=4)
  emb = np.asarray(model.vocab_embed.embedding[...])
  assert np.abs(emb).max() <= 1 / math.sqrt(64) and np.abs(emb).max() > 0.9 / math.sqrt(64)
  w = np.asarray(model.blocks[0].mlp_2.kernel[...])  # torch nn.Linear(256, 64)
  assert np.abs(w).max() <= 1 / math.sqrt(256) and np.abs(w).max() > 0.9 / math.sqrt(256)
  assert np.all(np.asarray(model.blocks[0].norm1.scale[...]) == 1.0)
  for layer in (model.blocks[1].adaLN_modulation, model.output_layer.adaLN_modulation,
                model.output_layer.linear):
    assert not np.any(np.asarray(layer.kernel[...])) and not np.any(np.asarray(layer.bias[...]))


@pytest.mark.parametrize("vocab, expected", [(50258, 169_627_218), (30522, 139_292_986)])
def test_paper_small_param_count(vocab, expected):
  abstract = nnx.eval_shape(lambda: DIT(vocab_size=vocab, hidden_size=768, n_blocks=12,
                                        n_heads=12, cond_dim=128, rngs=nnx.Rngs(0)))
  assert count_params(abstract) == expected
  assert count_params(nnx.state(abstract.blocks[0])) == 7_677_696


def test_torch_keys_and_shapes_tiny():
  model = make()
  sd = to_torch_state_dict(model, head_dim=8)
  expected = expected_torch_shapes(37, 32, 2, 16, 8)
  expected["rotary_emb.inv_freq"] = (4,)
  assert list(sd) == list(expected)  # same keys, in parameters() order (EMA shadow_params)
  assert {k: v.shape for k, v in sd.items()} == expected
  assert all(v.dtype == np.float32 for v in sd.values())
  assert count_params(model) == sum(math.prod(s) for k, s in expected.items()
                                    if k != "rotary_emb.inv_freq")


def test_torch_shapes_paper_small_abstract():
  abstract = nnx.state(nnx.eval_shape(lambda: DIT(
      vocab_size=50258, hidden_size=768, n_blocks=12, n_heads=12, cond_dim=128,
      rngs=nnx.Rngs(0))))
  flat = dict(nnx.to_flat_state(abstract))
  shapes = {}
  for key, (path, transpose) in torch_param_names(abstract).items():
    shape = tuple(flat[path].get_value().shape)
    shapes[key] = shape[::-1] if transpose else shape
  expected = expected_torch_shapes(50258, 768, 12, 128, 64)
  assert list(shapes) == list(expected) and shapes == expected
  assert expected["blocks.0.attn_qkv.weight"] == (2304, 768)
  assert rotary_inv_freq(64).shape == (32,)


def test_matches_numpy_reference():
  model = make()
  sd = randomize(model)
  ids, sigma = inputs()
  got = np.asarray(model(ids, sigma))
  emb = sd["vocab_embed.embedding"][np.asarray(ids)]
  want = np_ddit(sd, emb, np.asarray(sigma, np.float64), TINY["n_heads"])
  assert np.abs(want).max() > 1.0  # the random model is far from the zero init
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_probability_inputs():
  model = make()
  sd = randomize(model)
  ids, sigma = inputs()
  one_hot = jax.nn.one_hot(ids, TINY["vocab_size"], dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(model(one_hot, sigma)), np.asarray(model(ids, sigma)))
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(3), one_hot.shape) * 2.0)
  got = np.asarray(model(probs, sigma))
  want = np_ddit(sd, np.asarray(probs, np.float64) @ sd["vocab_embed.embedding"],
                 np.asarray(sigma, np.float64), TINY["n_heads"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_time_conditioning_false_ignores_sigma():
  conditioned, unconditioned = make(), make(time_conditioning=False)
  randomize(conditioned)
  nnx.update(unconditioned, nnx.state(conditioned))
  ids, sigma = inputs()
  out = np.asarray(unconditioned(ids, sigma))
  np.testing.assert_array_equal(out, np.asarray(unconditioned(ids, sigma + 1.0)))
  np.testing.assert_allclose(out, np.asarray(conditioned(ids, jnp.zeros_like(sigma))),
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(out, np.asarray(conditioned(ids, sigma)))


def test_dropout():
  model = make(dropout=0.3)
  randomize(model)
  ids, sigma = inputs()
  eval_out = np.asarray(model(ids, sigma))
  np.testing.assert_array_equal(eval_out, np.asarray(model(ids, sigma, dropout_key=None)))
  key = jax.random.key(0)
  train_out = np.asarray(model(ids, sigma, dropout_key=key))
  assert not np.allclose(train_out, eval_out)
  np.testing.assert_array_equal(train_out, np.asarray(model(ids, sigma, dropout_key=key)))
  assert not np.allclose(train_out, np.asarray(model(ids, sigma, dropout_key=jax.random.key(1))))
  no_rate = make(dropout=0.0)
  nnx.update(no_rate, nnx.state(model))
  np.testing.assert_array_equal(np.asarray(no_rate(ids, sigma, dropout_key=key)), eval_out)


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_bfloat16_close_to_float32_and_params_stay_float32():
  fp32, bf16 = make(), make(dtype=jnp.bfloat16)
  randomize(fp32)
  nnx.update(bf16, nnx.state(fp32))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(bf16)))
  ids, sigma = inputs()
  ref, low = np.asarray(fp32(ids, sigma)), np.asarray(bf16(ids, sigma))
  assert low.dtype == np.float32
  assert np.abs(low - ref).max() < 0.05 * np.abs(ref).max()


def test_jit_matches_eager():
  model = make(dropout=0.1)
  randomize(model)
  ids, sigma = inputs()
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, ids, sigma, key):
    return nnx.merge(graphdef, state)(ids, sigma, dropout_key=key)

  key = jax.random.key(5)
  np.testing.assert_allclose(np.asarray(forward(state, ids, sigma, key)),
                             np.asarray(model(ids, sigma, dropout_key=key)),
                             rtol=1e-5, atol=1e-5)


def test_logical_partition_specs():
  spec = {tuple(path): tuple(v.get_value())
          for path, v in nnx.to_flat_state(nnx.get_partition_spec(nnx.state(make())))}
  expected_by_suffix = {
      ("vocab_embed", "embedding"): ("vocab", "embed"),
      ("sigma_map", "mlp_0", "kernel"): (None, "cond"),
      ("sigma_map", "mlp_2", "bias"): ("cond",),
      ("norm1", "scale"): ("embed",), ("norm2", "scale"): ("embed",),
      ("norm_final", "scale"): ("embed",),
      ("attn_qkv", "kernel"): ("embed", "heads"), ("attn_out", "kernel"): ("heads", "embed"),
      ("mlp_0", "kernel"): ("embed", "mlp"), ("mlp_0", "bias"): ("mlp",),
      ("mlp_2", "kernel"): ("mlp", "embed"), ("mlp_2", "bias"): ("embed",),
      ("adaLN_modulation", "kernel"): ("cond", "adaln"), ("adaLN_modulation", "bias"): ("adaln",),
      ("linear", "kernel"): ("embed", "vocab"), ("linear", "bias"): ("vocab",)}
  for path, names in spec.items():
    matches = [v for suffix, v in expected_by_suffix.items() if path[-len(suffix):] == suffix]
    if path[0] == "sigma_map":
      matches = [(None, "cond") if path[-1] == "kernel" else ("cond",)]
    assert matches and names == matches[0], (path, names)
  rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"),
           ("adaln", "fsdp"))
  with core_spmd.logical_axis_rules(rules):
    mapped = nnx.get_partition_spec(nnx.state(make()))
  assert tuple(mapped["blocks"][0]["mlp_0"]["kernel"].get_value()) == ("fsdp", "tensor")
  assert tuple(mapped["output_layer"]["linear"]["kernel"].get_value()) == ("fsdp", "tensor")


def test_activation_sharding_hints_under_a_mesh():
  model = make()
  randomize(model)
  ids, sigma = inputs()
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda st, x, s: nnx.merge(graphdef, st)(x, s))
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  rules = (("activation_batch", "data"), ("embed", None))
  with jax.set_mesh(mesh), core_spmd.logical_axis_rules(rules):
    hinted = forward(state, ids, sigma)
    assert "sharding_constraint" in forward.lower(state, ids, sigma).as_text()
  assert "sharding_constraint" not in forward.lower(state, ids, sigma).as_text()
  np.testing.assert_allclose(np.asarray(hinted), np.asarray(model(ids, sigma)), rtol=1e-5,
                             atol=1e-5)


def test_torch_state_dict_round_trip_and_errors():
  model = make()
  randomize(model)
  sd = to_torch_state_dict(model, head_dim=8)
  abstract = nnx.state(nnx.eval_shape(lambda: make()))
  state = from_torch_state_dict(sd, abstract, head_dim=8)
  fresh = make(seed=1)
  nnx.update(fresh, state)
  ids, sigma = inputs()
  np.testing.assert_array_equal(np.asarray(fresh(ids, sigma)), np.asarray(model(ids, sigma)))

  missing = {k: v for k, v in sd.items() if k != "blocks.1.mlp.0.bias"}
  with pytest.raises(ValueError, match=r"missing key 'blocks\.1\.mlp\.0\.bias'.*\(128,\)"):
    from_torch_state_dict(missing, abstract)
  with pytest.raises(ValueError, match=r"unexpected key 'blocks\.2\.norm1\.weight'.*\(32,\)"):
    from_torch_state_dict({**sd, "blocks.2.norm1.weight": np.ones(32)}, abstract)
  wrong = {**sd, "blocks.0.attn_qkv.weight": np.zeros((32, 96), np.float32)}
  with pytest.raises(ValueError, match=r"'blocks\.0\.attn_qkv\.weight'.*\(32, 96\).*\(96, 32\)"):
    from_torch_state_dict(wrong, abstract)
  with pytest.raises(ValueError, match="rotary_emb.inv_freq"):
    from_torch_state_dict({**sd, "rotary_emb.inv_freq": np.ones(4, np.float32)}, abstract,
                          head_dim=8)


def _base_config():
  """configs/base.py's get_config(), loaded from its file."""
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "base.py"
  spec = importlib.util.spec_from_file_location("idlm_base_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.slow
def test_build_model_from_config():
  cfg = _base_config().model
  abstract = nnx.eval_shape(lambda: build_model(cfg, 50258, nnx.Rngs(0)))
  assert abstract.padded_vocab_size == 50304  # model.vocab_pad_multiple = 128
  assert count_params(abstract) - abstract.padding_params == 169_627_218
  assert count_params(abstract) == 169_627_218 + 46 * (2 * 768 + 1)
  assert abstract.dropout == cfg.dropout and abstract.time_conditioning is False
  cfg.hidden_size, cfg.n_blocks, cfg.n_heads, cfg.cond_dim, cfg.dtype = 32, 1, 2, 8, "bfloat16"
  model = build_model(cfg, 11, nnx.Rngs(0))
  assert model.dtype == jnp.bfloat16 and len(model.blocks) == 1
  assert model(jnp.zeros((1, 4), jnp.int32), jnp.ones((1,))).shape == (1, 4, 11)
  cfg.dtype = "float16"
  with pytest.raises(ValueError, match="dtype"):
    build_model(cfg, 11, nnx.Rngs(0))
  cfg.dtype, cfg.name = "float32", "transformer"
  with pytest.raises(ValueError, match="name"):
    build_model(cfg, 11, nnx.Rngs(0))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_xla():
  models = {a: make(hidden_size=128, n_heads=2, dtype=jnp.bfloat16, attention=a)
            for a in ("xla", "cudnn", "auto")}
  randomize(models["xla"])
  for a in ("cudnn", "auto"):
    nnx.update(models[a], nnx.state(models["xla"]))
  ids, sigma = inputs()
  ref = np.asarray(models["xla"](ids, sigma))
  for a in ("cudnn", "auto"):
    np.testing.assert_allclose(np.asarray(models[a](ids, sigma)), ref, rtol=0.0,
                               atol=0.03 * np.abs(ref).max())
