"""GPT-2 evaluator: NNX forward vs an independent float64 NumPy reference on HF-layout weights."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from idlm_jax.models import gpt2

V, P, D, H, NL = 37, 16, 32, 4, 2


def _hf_weights(seed=0):
  rng = np.random.default_rng(seed)
  w = {"wte.weight": rng.normal(0, 0.3, (V, D)), "wpe.weight": rng.normal(0, 0.3, (P, D)),
       "ln_f.weight": 1 + rng.normal(0, 0.1, D), "ln_f.bias": rng.normal(0, 0.1, D)}
  for i in range(NL):
    p = f"h.{i}."
    w.update({p + "ln_1.weight": 1 + rng.normal(0, 0.1, D), p + "ln_1.bias": rng.normal(0, .1, D),
              p + "ln_2.weight": 1 + rng.normal(0, 0.1, D), p + "ln_2.bias": rng.normal(0, .1, D),
              p + "attn.c_attn.weight": rng.normal(0, 0.2, (D, 3 * D)),
              p + "attn.c_attn.bias": rng.normal(0, 0.1, 3 * D),
              p + "attn.c_proj.weight": rng.normal(0, 0.2, (D, D)),
              p + "attn.c_proj.bias": rng.normal(0, 0.1, D),
              p + "mlp.c_fc.weight": rng.normal(0, 0.2, (D, 4 * D)),
              p + "mlp.c_fc.bias": rng.normal(0, 0.1, 4 * D),
              p + "mlp.c_proj.weight": rng.normal(0, 0.2, (4 * D, D)),
              p + "mlp.c_proj.bias": rng.normal(0, 0.1, D)})
  return {k: v.astype(np.float32) for k, v in w.items()}


def _ln(x, g, b):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * g + b


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def numpy_gpt2(w, ids):
  """Reference GPT-2 forward in float64 (HF Conv1D: y = x @ W + b with W [in, out])."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  b, l = ids.shape
  x = w["wte.weight"][ids] + w["wpe.weight"][:l]
  hd = D // H
  causal = np.tril(np.ones((l, l), bool))
  for i in range(NL):
    p = f"h.{i}."
    a = _ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
    qkv = a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
    q, k, v = np.split(qkv, 3, -1)
    q, k, v = (t.reshape(b, l, H, hd).transpose(0, 2, 1, 3) for t in (q, k, v))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    s = np.where(causal, s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = (s @ v).transpose(0, 2, 1, 3).reshape(b, l, D)
    x = x + o @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
    m = _ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
    m = _gelu_tanh(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
    x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
  x = _ln(x, w["ln_f.weight"], w["ln_f.bias"])
  return x @ w["wte.weight"].T


def _model():
  return gpt2.GPT2(vocab_size=V, n_positions=P, hidden_size=D, n_layers=NL, n_heads=H,
                   rngs=nnx.Rngs(0))


def test_forward_matches_numpy_reference():
  w = _hf_weights()
  model = gpt2.from_hf_state_dict({"transformer." + k: v for k, v in w.items()}, _model())
  ids = np.random.default_rng(1).integers(0, V, (2, 11))
  with jax.default_matmul_precision("highest"):
    out = np.asarray(model(ids))
  np.testing.assert_allclose(out, numpy_gpt2(w, ids), rtol=2e-4, atol=2e-4)


def test_causal_prefix_invariance():
  model = _model()
  ids = np.random.default_rng(2).integers(0, V, (1, 10))
  ids2 = ids.copy()
  ids2[0, 6:] = (ids2[0, 6:] + 1) % V
  np.testing.assert_allclose(np.asarray(model(ids))[0, :6], np.asarray(model(ids2))[0, :6],
                             atol=1e-5)


def test_safetensors_roundtrip_and_local_folder_load(tmp_path):
  w = _hf_weights(3)
  w16 = {k: v.astype(np.float16) for k, v in w.items()}
  gpt2.write_safetensors(tmp_path / "model.safetensors", w16, {"format": "np"})
  back = gpt2.read_safetensors(tmp_path / "model.safetensors")
  for k in w16:
    np.testing.assert_array_equal(back[k], w16[k])
  (tmp_path / "config.json").write_text(json.dumps(
      {"vocab_size": V, "n_positions": P, "n_embd": D, "n_layer": NL, "n_head": H}))
  model = gpt2.load_pretrained(str(tmp_path))
  ids = np.arange(8)[None] % V
  with jax.default_matmul_precision("highest"):
    out = np.asarray(model(ids))
  ref = numpy_gpt2({k: v.astype(np.float32) for k, v in w16.items()}, ids)
  np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4)


def test_bf16_safetensors_is_widened(tmp_path):
  import struct
  x = np.array([1.5, -2.0, 0.15625], np.float32)
  raw = (x.view(np.uint32) >> 16).astype("<u2").tobytes()
  header = json.dumps({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
  (tmp_path / "t.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + raw)
  np.testing.assert_array_equal(gpt2.read_safetensors(tmp_path / "t.safetensors")["a"], x)


def test_missing_key_and_offline_hub_errors(tmp_path, monkeypatch):
  w = _hf_weights()
  del w["h.1.mlp.c_fc.bias"]
  with pytest.raises(ValueError, match="h.1.mlp.c_fc.bias"):
    gpt2.from_hf_state_dict(w, _model())
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError, match="local folder"):
    gpt2.resolve_local("definitely-not-a-local-folder/gpt2-xyz")
