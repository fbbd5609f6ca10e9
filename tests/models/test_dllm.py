"""LLaDA / Dream (models/dllm.py, models/hf_dllm.py) against the official modeling code.

The fixtures in tests/models/data/{llada,dream}_tiny were produced by the OFFICIAL
modeling_llada.py / modeling_dream.py (see tests/models/data/README.md and
benchmarks/parity/make_dllm_parity.py) from random weights large enough that every convention
matters (norm weights U(0.9, 1.1), unit-variance embeddings, N(0, 1/fan_in) linears).
Float32 parity: 1e-4 on logits of magnitude ~4 (measured ~2e-6: float32 rounding of two
different summation orders through 2 layers, i.e. a few hundred ulps).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from idlm_jax.models import count_params, dllm, hf_dllm, layers
from idlm_jax.models.readers import ConversionError, read_safetensors
from idlm_jax.train import parallel

DATA = pathlib.Path(__file__).parent / "data"
ARCHS = ("llada", "dream")
PARITY_TOL = 1e-4   # float32 model vs the official float32 model
CACHE_TOL = 1e-5    # block forward vs full forward, same float32 model
WRONG_MIN = 1e-2    # a wrong convention must move the logits by more than this


def folder(arch: str) -> pathlib.Path:
  return DATA / f"{arch}_tiny"


def fixture(arch: str) -> dict:
  return dict(np.load(folder(arch) / "parity.npz"))


def official_shift(logits: np.ndarray) -> np.ndarray:
  """Dream's generation code: logits = cat([logits[:, :1], logits[:, :-1]], 1)."""
  return np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)


def official_logits(arch: str, key: str = "logits") -> np.ndarray:
  """The official logits as a sampler sees them: V columns, Dream shifted."""
  z = fixture(arch)
  out = z[key][..., :dllm.tiny(arch).vocab_size]
  return official_shift(out) if arch == "dream" else out


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
  return request.param


@pytest.fixture(scope="module")
def model(arch):
  return hf_dllm.load_pretrained(folder(arch))


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---------------------------------------------------------------------------- parity


def test_float32_logits_match_the_official_code(arch, model):
  z = fixture(arch)
  ids = jnp.asarray(z["input_ids"])
  assert (z["input_ids"] == model.config.mask_token_id).mean() > 0.2  # mask tokens included
  out = model(ids)
  assert out.shape == (3, 16, 300) and out.dtype == jnp.float32
  ref = official_logits(arch)
  assert np.abs(ref).max() > 2.0  # logits large enough to matter
  assert max_diff(out, ref) < PARITY_TOL
  # features/project split (the chunked loss) gives the same logits; sigma is ignored
  h = model.features(ids, jnp.ones((3,)))
  assert h.shape == (3, 16, 64)
  assert max_diff(model.project(h), out) == 0.0


def test_padded_batch_matches_the_official_code(arch, model):
  """LLaDA: 2-D attention_mask (additive bias on padded keys). Dream: the 4-D mask and the
  cumsum(mask) - 1 RoPE positions of its generation code; rows that read a padded position
  (padding queries, Dream's shifted ones) carry no meaning and are skipped."""
  z = fixture(arch)
  positions = z.get("positions_padded")
  out = model(jnp.asarray(z["input_ids_padded"]), attention_mask=jnp.asarray(z["pad_mask"]),
              positions=None if positions is None else jnp.asarray(positions))
  ref = official_logits(arch, "logits_padded")
  valid = z["pad_mask"].astype(bool)
  if arch == "dream":
    valid = official_shift(valid)
  assert (~valid).sum() >= 7
  assert max_diff(np.asarray(out)[valid], ref[valid]) < PARITY_TOL


def test_bfloat16_stays_close(arch):
  """bf16 matmuls (float32 params, residual, norms): no further from the official float32
  logits than the official model cast to bf16 is (x2), which measures what bf16 costs here."""
  z = fixture(arch)
  out = hf_dllm.load_pretrained(folder(arch), dtype=jnp.bfloat16)(jnp.asarray(z["input_ids"]))
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  ref = official_logits(arch)
  official_bf16_error = max_diff(official_logits(arch, "logits_bf16"), ref)
  assert 1e-3 < official_bf16_error < 0.1
  assert max_diff(out, ref) <= 2.0 * official_bf16_error


def _interleaved_rope(x, cos, sin):
  """The GPT-J / Meta-Llama-checkpoint convention (pairs (0,1), (2,3), ...): WRONG here."""
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., ::2], xf[..., 1::2]
  out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x.shape)
  return out.astype(x.dtype)


def test_wrong_conventions_would_be_caught(arch, model, monkeypatch):
  """The fixtures resolve each convention: getting one wrong moves the logits by > 1e-2,
  100x the parity tolerance."""
  z = fixture(arch)
  ids = jnp.asarray(z["input_ids"])
  ref = official_logits(arch)
  # gate and up projections swapped (LLaDA: ff_proj is the silu'd gate, up_proj the up branch)
  sd = hf_dllm.read_weights(folder(arch))
  gate, up = (("ff_proj", "up_proj") if arch == "llada" else ("mlp.gate_proj", "mlp.up_proj"))
  swapped = {k.replace(gate, "@").replace(up, gate).replace("@", up): v for k, v in sd.items()}
  graphdef, state = nnx.split(model)
  wrong = nnx.merge(graphdef, hf_dllm.from_hf_state_dict(swapped, state, model.config))
  assert max_diff(wrong(ids), ref) > WRONG_MIN
  # RoPE theta of the other family
  other = model.config.replace(rope_theta=10000.0)
  wrong = nnx.merge(nnx.graphdef(dllm.DLLM(other, rngs=nnx.Rngs(0))), nnx.state(model))
  assert max_diff(wrong(ids), ref) > WRONG_MIN
  # Dream without its shift / LLaDA with one
  flipped = model.config.replace(shift_logits=not model.config.shift_logits)
  wrong = nnx.merge(nnx.graphdef(dllm.DLLM(flipped, rngs=nnx.Rngs(0))), nnx.state(model))
  assert max_diff(wrong(ids), ref) > WRONG_MIN
  # interleaved instead of rotate-half rotary embedding
  monkeypatch.setattr(layers, "apply_rope", _interleaved_rope)
  assert max_diff(model(ids), ref) > WRONG_MIN


# ---------------------------------------------------------------------------- KV cache


def _block_fn(model, kind):
  """A jitted block forward with a traced start; counts its traces."""
  graphdef, state = nnx.split(model)
  traces = []

  @jax.jit
  def run(state, block, start, cache, prev):
    traces.append(1)
    m = nnx.merge(graphdef, state)
    return m.forward_block(block, start, cache, kind=kind, prev_token=prev)

  return lambda *args: run(state, *args), traces


def test_dual_cache_block_equals_full_forward(arch, model):
  """Cache of the full forward over x; block [s, e) of the same x: the full logits on it."""
  ids = jnp.asarray(fixture(arch)["input_ids"])
  full, cache = model.forward_with_cache(ids)
  assert max_diff(full, model(ids)) == 0.0
  assert cache.k.shape == (2, 3, 16, model.config.n_kv_heads, 16)
  run, traces = _block_fn(model, "dual")
  lb = 4
  for s in (0, 5, 12):  # first block, middle, last (ends at L)
    out = run(ids[:, s:s + lb], jnp.int32(s), cache, ids[:, max(s - 1, 0)])
    assert max_diff(out, full[:, s:s + lb]) < CACHE_TOL, s
  assert len(traces) == 1  # one compilation for every start
  if arch == "dream":  # without prev_token: Fast-dLLM's block-local shift
    s = 5
    out = model.forward_block(ids[:, s:s + lb], s, cache)
    assert max_diff(out[:, 1:], full[:, s + 1:s + lb]) < CACHE_TOL
    assert max_diff(out[:, 0], full[:, s + 1]) < CACHE_TOL  # position s's own output
    assert max_diff(out[:, 0], full[:, s]) > WRONG_MIN


@pytest.mark.slow
def test_prefix_cache_block_equals_truncated_forward(arch, model):
  """The prefix cache attends to positions < e only, so the exact reference is the full
  forward of the truncated sequence x[:, :e]; the cache must come from a forward in which the
  prefix did not see positions >= e (attention_mask = pos < e)."""
  ids = jnp.asarray(fixture(arch)["input_ids"])
  run, traces = _block_fn(model, "prefix")
  lb = 4
  for s in (0, 6):
    e = s + lb
    seen = jnp.broadcast_to(jnp.arange(16) < e, ids.shape)
    _, cache = model.forward_with_cache(ids, attention_mask=seen)
    out = run(ids[:, s:e], jnp.int32(s), cache, ids[:, max(s - 1, 0)])
    ref = model(ids[:, :e])[:, s:e]
    assert max_diff(out, ref) < CACHE_TOL, s
  assert len(traces) == 1
  # a cache made from all 16 positions has prefix K/V that saw the suffix: not that forward
  _, stale = model.forward_with_cache(ids)
  out = model.forward_block(ids[:, 6:10], 6, stale, kind="prefix", prev_token=ids[:, 5])
  assert max_diff(out, model(ids[:, :10])[:, 6:10]) > WRONG_MIN


def test_cache_holds_keys_after_rope_and_block_updates_it(model):
  ids = jnp.asarray(fixture(model.config.arch)["input_ids"])
  _, cache = model.forward_with_cache(ids)
  layer = model.layers[0]
  h = layer.attn_norm(model.embed.embedding[...][ids])
  k = layer.k_proj(h).reshape(3, 16, model.config.n_kv_heads, 16)
  rope = dllm.rope_cos_sin(jnp.arange(16)[None], 16, model.config.rope_theta)
  assert max_diff(cache.k[0], layers.apply_rope(k, *rope)) < 1e-6
  assert max_diff(cache.v[0], layer.v_proj(h).reshape(k.shape)) < 1e-6
  # return_cache: the block's fresh K/V written in (same tokens: the same cache)
  _, updated = model.forward_block(ids[:, 4:8], 4, cache, return_cache=True)
  assert max_diff(updated.k, cache.k) < CACHE_TOL and max_diff(updated.v, cache.v) < CACHE_TOL
  # new tokens in the block change exactly the block's slots of layer 0
  other = jnp.full((3, 4), model.config.mask_token_id, jnp.int32)
  _, updated = model.forward_block(other, 4, cache, return_cache=True)
  changed = np.abs(np.asarray(updated.k[0] - cache.k[0])).max(axis=(0, 2, 3)) > 0
  assert changed.tolist() == [False] * 4 + [True] * 4 + [False] * 8
  with pytest.raises(ValueError, match="kind"):
    model.forward_block(other, 4, cache, kind="suffix")


# ---------------------------------------------------------------------------- conversion


def test_config_json_gives_the_tiny_preset_and_round_trips(arch):
  raw = json.loads((folder(arch) / "config.json").read_text())
  assert hf_dllm.config_from_hf(raw) == dllm.tiny(arch)
  for config in (dllm.tiny(arch), dllm.llada_8b() if arch == "llada" else dllm.dream_7b()):
    assert hf_dllm.config_from_hf(hf_dllm.config_to_hf(config)) == config


def test_export_round_trip_is_exact(arch, model, tmp_path):
  original = read_safetensors(folder(arch) / "model.safetensors")
  exported = hf_dllm.to_hf_state_dict(model, model.config)
  assert sorted(exported) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  hf_dllm.save_pretrained(model, tmp_path)
  assert max_diff(hf_dllm.load_pretrained(tmp_path)(jnp.zeros((1, 5), jnp.int32)),
                  model(jnp.zeros((1, 5), jnp.int32))) == 0.0


def test_sharded_index_with_two_shards_loads(arch, model, tmp_path):
  total = sum(v.nbytes for v in read_safetensors(folder(arch) / "model.safetensors").values())
  hf_dllm.save_pretrained(model, tmp_path, max_shard_bytes=total // 2 + 70_000)
  shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
  assert len(shards) == 2 and not (tmp_path / "model.safetensors").exists()
  ids = jnp.asarray(fixture(arch)["input_ids"])
  assert max_diff(hf_dllm.load_pretrained(tmp_path)(ids), official_logits(arch)) < PARITY_TOL
  # an index that names the wrong shard for a tensor is refused, naming it
  index = json.loads((tmp_path / hf_dllm.INDEX_FILE).read_text())
  name = next(k for k, v in index["weight_map"].items() if v == shards[0])
  index["weight_map"][name] = shards[1]
  (tmp_path / hf_dllm.INDEX_FILE).write_text(json.dumps(index))
  with pytest.raises(ConversionError, match=f"'{name}' is indexed in '{shards[1]}'"):
    hf_dllm.read_weights(tmp_path)


def test_name_and_shape_errors_are_clear():
  config = dllm.tiny("llada")
  sd = hf_dllm.read_weights(folder("llada"))
  state = nnx.state(nnx.eval_shape(lambda: dllm.DLLM(config, rngs=nnx.Rngs(0))), nnx.Param)
  q = "model.transformer.blocks.1.q_proj.weight"
  broken = dict(sd)
  del broken["model.transformer.ln_f.weight"]
  broken["model.transformer.blocks.0.extra.weight"] = np.zeros((2,), np.float32)
  broken[q] = sd[q][:, :32]
  with pytest.raises(ConversionError) as err:
    hf_dllm.from_hf_state_dict(broken, state, config)
  msg = str(err.value)
  assert "missing tensor 'model.transformer.ln_f.weight' (expected shape (64,))" in msg
  assert "unexpected tensor 'model.transformer.blocks.0.extra.weight' with shape (2,)" in msg
  assert f"tensor '{q}': checkpoint shape (64, 32) != expected (64, 64)" in msg
  # a Dream checkpoint under a LLaDA config: every name is reported
  with pytest.raises(ConversionError, match="missing tensor 'model.transformer.wte.weight'"):
    hf_dllm.from_hf_state_dict(hf_dllm.read_weights(folder("dream")), state, config)
  # config.json options the official code has but DLLM does not implement
  raw = json.loads((folder("llada") / "config.json").read_text())
  with pytest.raises(ConversionError, match="activation_type='swiglu'"):
    hf_dllm.config_from_hf({**raw, "activation_type": "swiglu"})
  with pytest.raises(ConversionError, match="neither LLaDA nor Dream"):
    hf_dllm.config_from_hf({"model_type": "qwen2"})
  with pytest.raises(ValueError, match="n_kv_heads"):
    config.replace(n_kv_heads=3)


# ---------------------------------------------------------------------------- 8B sharding


@pytest.mark.parametrize("preset,params", [("llada_8b", 8.016e9), ("dream_7b", 7.616e9)])
def test_abstract_8b_shards_over_the_mesh(preset, params):
  """nnx.eval_shape (no allocation): the published sizes, and every parameter maps to mesh
  axes under LOGICAL_RULES (FSDP over 'fsdp', tensor parallel over 'tensor')."""
  config = dllm.PRESETS[preset]()
  abstract = nnx.eval_shape(lambda: dllm.DLLM(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  assert abs(count_params(abstract) / params - 1) < 1e-3
  mesh = Mesh(np.asarray(jax.devices()).reshape(1, 4, 2), parallel.MESH_AXES)
  shardings = parallel.param_shardings(nnx.state(abstract, nnx.Param), mesh)
  specs = {path: s.spec for path, s in nnx.to_flat_state(nnx.State(shardings))}
  fsdp_tp, tp_fsdp = P("fsdp", "tensor"), P("tensor", "fsdp")
  expected = {("embed", "embedding"): tp_fsdp, ("lm_head", "kernel"): fsdp_tp,
              ("final_norm", "scale"): P("fsdp")}
  for i in (0, config.n_layers - 1):
    expected.update({("layers", i, "q_proj", "kernel"): fsdp_tp,
                     ("layers", i, "k_proj", "kernel"): fsdp_tp,
                     ("layers", i, "o_proj", "kernel"): tp_fsdp,
                     ("layers", i, "gate_proj", "kernel"): fsdp_tp,
                     ("layers", i, "down_proj", "kernel"): tp_fsdp,
                     ("layers", i, "attn_norm", "scale"): P("fsdp")})
  if config.qkv_bias:
    expected[("layers", 0, "k_proj", "bias")] = P("tensor")
  for path, spec in expected.items():
    assert specs[path] == spec, (path, specs[path])
  assert all(any(axis is not None for axis in spec) for spec in specs.values())


def test_sharded_tiny_forward_matches(model):
  """The tiny model placed by those rules on a (1, 4, 2) mesh computes the same logits."""
  mesh = Mesh(np.asarray(jax.devices()).reshape(1, 4, 2), parallel.MESH_AXES)
  graphdef, state = nnx.split(model)
  shardings = parallel.param_shardings(nnx.state(model, nnx.Param), mesh)
  placed = jax.tree.map(jax.device_put, nnx.to_pure_dict(state), shardings)
  assert placed["layers"][0]["k_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")
  ids = jnp.asarray(fixture(model.config.arch)["input_ids"])
  nnx.replace_by_pure_dict(state, placed)
  with parallel.mesh_context(mesh):
    out = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids)
  assert max_diff(out, model(ids)) < 1e-5


# ---------------------------------------------------------------------------- interface


@pytest.mark.slow
def test_probabilities_dropout_and_remat(model):
  ids = jnp.asarray(fixture(model.config.arch)["input_ids"])[:1]
  ref = model(ids)
  onehot = jax.nn.one_hot(ids, model.config.vocab_size)
  assert max_diff(model(onehot), ref) < 1e-6  # probability input: the expected embedding
  graphdef, state = nnx.split(model)
  dropped = nnx.merge(nnx.graphdef(dllm.DLLM(model.config, dropout=0.5, rngs=nnx.Rngs(0))),
                      state)
  assert max_diff(dropped(ids), ref) == 0.0  # no key: evaluation
  assert max_diff(dropped(ids, dropout_key=jax.random.key(0)), ref) > WRONG_MIN
  remat = nnx.merge(nnx.graphdef(dllm.DLLM(model.config, remat="block", rngs=nnx.Rngs(0))),
                    state)

  def loss(m):
    return jnp.mean(jax.nn.log_softmax(m(ids))[..., 0])

  g1, g2 = nnx.grad(loss)(model), nnx.grad(loss)(remat)
  assert max(max_diff(a, b) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))) < 1e-6
