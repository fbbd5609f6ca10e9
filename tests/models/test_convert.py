"""Conversion of published PyTorch DDiT checkpoints (models/readers.py and the convert CLI).

Random weights on the demo:smoke model (vocab 2048, d=32, 2 blocks, 2 heads, cond 32) are
written in each published layout (Lightning .ckpt with EMA, HF folders with `backbone.`,
SDTT `backbone.backbone.`, SEDD without prefix; safetensors and torch .bin), converted, and
the converted model's logits are compared with the float64 NumPy DDiT of tests/models/test_dit.py.
The torch-file tests need PyTorch (`pip install torch`) and are skipped without it.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax import convert as convert_cli
from idlm_jax import models
from idlm_jax.models import readers as conv
from idlm_jax.models import torch_pickle
from idlm_jax import main
from idlm_jax.train import loop
from tests.models.test_dit import np_ddit, randomize

ROOT = pathlib.Path(__file__).resolve().parents[2]
VOCAB, N_HEADS = 2048, 2  # demo-bpe-2048 model vocabulary; demo:smoke heads


def _config(tmp_path, *overrides):
  return config_lib.load_config("configs/demo_teacher.py:smoke", [
      f"data.cache_dir='{tmp_path / 'cache'}'", "ckpt.async_save=False", "log.tensorboard=False",
      "model.n_blocks=2", *overrides])


def _model(params=None, cfg=None):
  """The test model, holding `params` (a pure dict, as in the train state) or zeros.

  Built from nnx.eval_shape: eager initialisation compiles op by op (seconds on 2 cores).
  """
  cfg = cfg or config_lib.load_config("configs/demo_teacher.py:smoke", ["model.n_blocks=2"])
  abstract = nnx.eval_shape(lambda: models.build_model(cfg.model, VOCAB, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract, nnx.Param)
  state = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state)
  if params is not None:
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


_forward = nnx.jit(lambda model, ids, sigma: model(ids, sigma))


@pytest.fixture(scope="module")
def weights():
  """Two random float32 state dicts (PyTorch names, parameters() order) of the test model."""
  return [{k: v.astype(np.float32) for k, v in randomize(_model(), seed).items()}
          for seed in (0, 1)]


def _with_buffer(sd, prefix=""):
  """`prefix` + keys in PyTorch state_dict order (the RoPE buffer after sigma_map)."""
  out = {}
  for k, v in sd.items():
    out[prefix + k] = v
    if k == "sigma_map.mlp.2.bias":
      out[prefix + "rotary_emb.inv_freq"] = models.rotary_inv_freq(32 // N_HEADS)
  return out


def _hf_folder(path, tensors, config=None):
  path.mkdir(parents=True)
  conv.write_safetensors(path / "model.safetensors", tensors, {"format": "pt"})
  (path / "config.json").write_text(json.dumps(config or {"n_heads": N_HEADS,
                                                          "time_conditioning": False}))
  return path


def _logits_match(params, sd, cfg):
  """Converted params give the NumPy reference's logits (float64, PyTorch-named weights)."""
  model = _model(params, cfg)
  rng = np.random.default_rng(5)
  ids = rng.integers(0, VOCAB, (2, 16))
  sigma = rng.uniform(0.1, 3.0, (2,))
  got = np.asarray(_forward(model, jnp.asarray(ids, jnp.int32), jnp.asarray(sigma, jnp.float32)))
  sd64 = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  used_sigma = sigma if cfg.model.time_conditioning else np.zeros_like(sigma)
  want = np_ddit(sd64, sd64["vocab_embed.embedding"][ids], used_sigma, cfg.model.n_heads)
  assert np.abs(want).max() > 1.0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  try:  # and PyTorch's own primitives, when installed
    import torch
  except ImportError:
    return
  ref = _torch_ddit(torch, sd64, ids, used_sigma, cfg.model.n_heads)
  np.testing.assert_allclose(ref, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


def _torch_ddit(torch, sd, ids, sigma, n_heads):
  """MDLM DIT.forward in float64 with torch's own primitives (F.layer_norm, tanh GELU, SDPA)."""
  F = torch.nn.functional
  w = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in sd.items()}
  lin = lambda x, n, bias=True: F.linear(x, w[n + ".weight"], w[n + ".bias"] if bias else None)
  norm = lambda x, n: F.layer_norm(x, x.shape[-1:], w[n], None, 1e-5)
  x = w["vocab_embed.embedding"][torch.from_numpy(ids)]
  b, seq, d = x.shape
  hd = d // n_heads
  freqs = torch.exp(-np.log(10000.0) * torch.arange(128, dtype=torch.float64) / 128)
  args = torch.from_numpy(sigma)[:, None] * freqs[None]
  temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
  c = F.silu(lin(F.silu(lin(temb, "sigma_map.mlp.0")), "sigma_map.mlp.2"))
  inv = 1.0 / 10000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
  emb = torch.cat([torch.outer(torch.arange(seq, dtype=torch.float64), inv)] * 2, -1)
  cos, sin = emb.cos()[None, None], emb.sin()[None, None]
  rope = lambda t: t * cos + torch.cat([-t[..., hd // 2:], t[..., :hd // 2]], -1) * sin
  for i in range(len([k for k in sd if k.endswith("attn_qkv.weight")])):
    p = f"blocks.{i}."
    m = lin(c, p + "adaLN_modulation")[:, None].chunk(6, dim=-1)
    h = norm(x, p + "norm1.weight") * (1 + m[1]) + m[0]
    q, k, v = lin(h, p + "attn_qkv", False).view(b, seq, 3, n_heads, hd).permute(
        2, 0, 3, 1, 4)
    att = F.scaled_dot_product_attention(rope(q), rope(k), v)
    x = x + m[2] * lin(att.transpose(1, 2).reshape(b, seq, d), p + "attn_out", False)
    h = norm(x, p + "norm2.weight") * (1 + m[4]) + m[3]
    x = x + m[5] * lin(F.gelu(lin(h, p + "mlp.0"), approximate="tanh"), p + "mlp.2")
  shift, scale = lin(c, "output_layer.adaLN_modulation")[:, None].chunk(2, dim=-1)
  h = norm(x, "output_layer.norm_final.weight") * (1 + scale) + shift
  return lin(h, "output_layer.linear").numpy()


def _assert_params_equal(params, sd):
  flat = models.to_torch_state_dict(_model(params))
  assert flat.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(flat[k], np.asarray(sd[k], np.float32), err_msg=k)


# ---------------------------------------------------------------------------- safetensors


def test_safetensors_reader_handmade_bf16(tmp_path):
  """A file written byte by byte (not by our writer): BF16 1.0 = 0x3F80, -2.5 = 0xC020."""
  header = {"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
            "b": {"dtype": "F32", "shape": [1, 1], "data_offsets": [4, 8]},
            "__metadata__": {"format": "pt"}}
  head = json.dumps(header).encode()
  data = (len(head).to_bytes(8, "little") + head + bytes([0x80, 0x3F, 0x20, 0xC0]) +
          np.float32(3.25).tobytes())
  (tmp_path / "x.safetensors").write_bytes(data)
  out = conv.read_safetensors(tmp_path / "x.safetensors")
  assert out["a"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(out["a"].astype(np.float32), [1.0, -2.5])
  np.testing.assert_array_equal(out["b"], [[3.25]])


def test_safetensors_roundtrip_and_corrupt(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"f": rng.standard_normal((3, 4)).astype(np.float32),
             "h": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
             "i": np.arange(6, dtype=np.int64).reshape(2, 3)}
  conv.write_safetensors(tmp_path / "t.safetensors", tensors)
  back = conv.read_safetensors(tmp_path / "t.safetensors")
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape
    np.testing.assert_array_equal(back[k], v)
  data = (tmp_path / "t.safetensors").read_bytes()
  (tmp_path / "bad.safetensors").write_bytes(data[:-8])
  with pytest.raises(conv.ConversionError, match="inconsistent data offsets"):
    conv.read_safetensors(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------------------- HF folders


@pytest.mark.parametrize("layout", ["mdlm_hf", "sdtt", "sedd", "mdlm_hf_bf16"])
def test_hf_safetensors_layouts_convert(tmp_path, weights, layout):
  sd = weights[0]
  cfg = _config(tmp_path)
  if layout == "mdlm_hf":  # kuleshov-group/mdlm-owt, s-sahoo/duo, s-sahoo/duo-distilled
    tensors = _with_buffer(sd, "backbone.")
  elif layout == "mdlm_hf_bf16":
    sd = {k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}
    tensors = _with_buffer(sd, "backbone.")
  elif layout == "sdtt":  # jdeschena/sdtt: the whole MultiRoundSDTT module, with a teacher
    tensors = {**_with_buffer(sd, "backbone.backbone."), **_with_buffer(weights[1], "teacher.")}
  else:  # louaaron/sedd-*: no prefix, time-conditioned
    tensors = _with_buffer(sd)
    cfg = _config(tmp_path, "model.time_conditioning=True")
  folder = _hf_folder(tmp_path / layout, tensors, {
      "model": {"n_heads": N_HEADS}} if layout == "sedd" else None)
  params, info = convert_cli.convert_weights(cfg, str(folder))
  assert info["format"] == "hf_safetensors" and info["weights"] == "published"
  assert info["prefix"] == {"sedd": "", "sdtt": "backbone.backbone."}.get(layout, "backbone.")
  assert list(info["files"]) == ["model.safetensors"]
  if layout == "sdtt":
    assert sorted(sum(info["ignored_keys"].values(), [])) == sorted(
        _with_buffer(weights[1], "teacher."))
  else:
    assert info["ignored_keys"] == {}
  assert info["architecture"] == {"vocab_size": VOCAB, "hidden_size": 32, "n_blocks": 2,
                                  "cond_dim": 32, "mlp_ratio": 4, "n_heads": N_HEADS,
                                  **({} if layout == "sedd" else {"time_conditioning": False})}
  _assert_params_equal(params, {k: np.asarray(v, np.float32) for k, v in sd.items()})
  _logits_match(params, sd, cfg)


def test_sharded_safetensors_index(tmp_path, weights):
  tensors = _with_buffer(weights[0], "backbone.")
  keys = list(tensors)
  folder = tmp_path / "sharded"
  folder.mkdir()
  shards = {"model-00001-of-00002.safetensors": keys[:7],
            "model-00002-of-00002.safetensors": keys[7:]}
  for name, ks in shards.items():
    conv.write_safetensors(folder / name, {k: tensors[k] for k in ks})
  (folder / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {k: n for n, ks in shards.items() for k in ks}}))
  params, info = convert_cli.convert_weights(_config(tmp_path), str(folder))
  assert sorted(info["files"]) == sorted(shards)
  _assert_params_equal(params, weights[0])


# ---------------------------------------------------------------------------- errors


def _convert_error(tmp_path, tensors, *overrides, **kw):
  folder = _hf_folder(tmp_path / "bad", tensors)
  with pytest.raises(conv.ConversionError) as e:
    convert_cli.convert_weights(_config(tmp_path, *overrides), str(folder), **kw)
  return str(e.value)


def test_missing_unexpected_and_wrong_shape_keys_are_listed(tmp_path, weights):
  tensors = _with_buffer(weights[0], "backbone.")
  del tensors["backbone.blocks.1.mlp.0.bias"]
  tensors["backbone.blocks.0.attn_out.weight"] = np.zeros((32, 30), np.float32)
  tensors["backbone.blocks.0.extra.weight"] = np.zeros(3, np.float32)
  tensors["classifier.weight"] = np.zeros((2, 2), np.float32)  # not in the ignore list
  folder = _hf_folder(tmp_path / "bad", tensors)
  with pytest.raises(ValueError) as e:  # models.from_torch_state_dict's report
    convert_cli.convert_weights(_config(tmp_path), str(folder))
  msg = str(e.value)
  assert "missing key 'blocks.1.mlp.0.bias' (model shape (128,)" in msg
  assert "key 'blocks.0.attn_out.weight': checkpoint shape (32, 30) != model shape (32, 32)" in msg
  assert "unexpected key 'blocks.0.extra.weight' with shape (3,)" in msg
  assert "unexpected key 'classifier.weight' with shape (2, 2)" in msg


def test_config_mismatch_names_the_fields(tmp_path, weights):
  tensors = _with_buffer(weights[0], "backbone.")
  msg = _convert_error(tmp_path, tensors, "data.tokenizer='gpt2'", "model.cond_dim=64",
                       "model.n_heads=4", "model.time_conditioning=True")
  assert "config.data.tokenizer='gpt2' gives a model vocabulary of 50258" in msg
  assert "set --config.data.tokenizer=demo-bpe-2048" in msg
  assert "config.model.cond_dim=64: set --config.model.cond_dim=32" in msg
  assert "config.model.n_heads=4: set --config.model.n_heads=2" in msg
  assert "set --config.model.time_conditioning=False" in msg


def test_hidden_and_blocks_mismatch(tmp_path, weights):
  msg = _convert_error(tmp_path, _with_buffer(weights[0], "backbone."), "model.hidden_size=64",
                       "model.n_heads=4", "model.n_blocks=3")
  assert "set --config.model.hidden_size=32" in msg and "set --config.model.n_blocks=2" in msg


def test_unknown_source_and_no_weights(tmp_path):
  cfg = _config(tmp_path)
  with pytest.raises(conv.ConversionError, match="does not exist"):
    convert_cli.convert_weights(cfg, str(tmp_path / "nope.ckpt"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(conv.ConversionError, match="no weights found.*model.safetensors"):
    convert_cli.convert_weights(cfg, str(tmp_path / "empty"))


def test_hub_name_offline_or_without_huggingface_hub(tmp_path, monkeypatch):
  cfg = _config(tmp_path)
  constants = pytest.importorskip("huggingface_hub.constants")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(conv.ConversionError,
                     match=r"cannot get hub model 'kuleshov-group/mdlm-owt'.*huggingface-cli "
                           r"download kuleshov-group/mdlm-owt --local-dir DIR"):
    convert_cli.convert_weights(cfg, "kuleshov-group/mdlm-owt", cache_dir=str(tmp_path / "hf"))
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  with pytest.raises(conv.ConversionError, match="huggingface_hub is not installed.*--revision "
                                                 "teacher_1M_sm"):
    convert_cli.convert_weights(cfg, "jdeschena/sdtt@teacher_1M_sm")


# ---------------------------------------------------------------------------- torch files


def _lightning(torch, ema_sd, raw_sd, extra=None, ema=True):
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  ckpt = {"state_dict": {k: t(v) for k, v in _with_buffer(raw_sd, "backbone.").items()},
          "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.2.0",
          "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4}]}]}
  if ema:  # MDLM ema.py: shadow_params in backbone.parameters() order (no buffers)
    ckpt["ema"] = {"decay": 0.9999, "num_updates": 1000,
                   "shadow_params": [t(v) for v in ema_sd.values()]}
  ckpt.update(extra or {})
  return ckpt


def test_torch_files_are_read_without_torch(tmp_path, weights, monkeypatch):
  """torch writes the file; reading and converting it works with torch unimportable."""
  torch = pytest.importorskip("torch")
  path = tmp_path / "mdlm.ckpt"
  torch.save(_lightning(torch, weights[0], weights[1]), path)
  monkeypatch.setitem(sys.modules, "torch", None)
  params, info = convert_cli.convert_weights(_config(tmp_path), str(path))
  assert info["weights"] == "ema"
  _assert_params_equal(params, weights[0])


def test_not_a_torch_zip_is_a_clear_error(tmp_path):
  (tmp_path / "mdlm.ckpt").write_bytes(b"not a checkpoint")
  with pytest.raises(conv.ConversionError, match="not a zip-format PyTorch checkpoint"):
    convert_cli.convert_weights(_config(tmp_path), str(tmp_path / "mdlm.ckpt"))


def test_lightning_ckpt_takes_ema_weights(tmp_path, weights):
  torch = pytest.importorskip("torch")
  path = tmp_path / "mdlm.ckpt"
  torch.save(_lightning(torch, weights[0], weights[1]), path)
  cfg = _config(tmp_path)
  params, info = convert_cli.convert_weights(cfg, str(path))
  assert info["format"] == "lightning" and info["weights"] == "ema"
  assert info["sha256"] == conv.sha256(path) and len(info["sha256"]) == 64
  _assert_params_equal(params, weights[0])
  _logits_match(params, weights[0], cfg)
  raw, info = convert_cli.convert_weights(cfg, str(path), weights="state_dict")
  assert info["weights"] == "state_dict"
  _assert_params_equal(raw, weights[1])


def test_lightning_without_ema_needs_the_flag(tmp_path, weights):
  torch = pytest.importorskip("torch")
  path = tmp_path / "noema.ckpt"
  torch.save(_lightning(torch, weights[0], weights[1], ema=False), path)
  with pytest.raises(conv.ConversionError, match="no EMA weights.*--weights=state_dict"):
    convert_cli.convert_weights(_config(tmp_path), str(path))
  params, _ = convert_cli.convert_weights(_config(tmp_path), str(path), weights="state_dict")
  _assert_params_equal(params, weights[1])


def test_lightning_ema_list_in_wrong_order_is_an_error(tmp_path, weights):
  torch = pytest.importorskip("torch")
  ckpt = _lightning(torch, weights[0], weights[1])
  shadow = ckpt["ema"]["shadow_params"]
  shadow[0], shadow[1] = shadow[1], shadow[0]
  torch.save(ckpt, tmp_path / "x.ckpt")
  with pytest.raises(conv.ConversionError, match=r"shadow_params\[0\] has shape .* "
                                                 r"'backbone.vocab_embed.embedding'"):
    convert_cli.convert_weights(_config(tmp_path), str(tmp_path / "x.ckpt"))


def test_lightning_state_dict_out_of_module_order_is_an_error(tmp_path, weights):
  """Same-shaped tensors (norm1 / norm2) in another order cannot be told apart by shape."""
  torch = pytest.importorskip("torch")
  swapped = dict(weights[1])
  keys = list(swapped)
  i, j = keys.index("blocks.0.norm1.weight"), keys.index("blocks.0.norm2.weight")
  keys[i], keys[j] = keys[j], keys[i]
  torch.save(_lightning(torch, weights[0], {k: swapped[k] for k in keys}), tmp_path / "x.ckpt")
  with pytest.raises(conv.ConversionError, match=r"not in the DDiT's parameters\(\) order "
                                                 r"\(position \d+: 'blocks.0.norm2.weight'"):
    convert_cli.convert_weights(_config(tmp_path), str(tmp_path / "x.ckpt"))


class _Exploit:
  """Unpickling this with pickle.load would run a shell command."""

  def __init__(self, target):
    self.target = str(target)

  def __reduce__(self):
    return (os.system, (f"touch {self.target}",))


def test_pickled_objects_are_never_executed(tmp_path, weights):
  """MDLM's Lightning module calls save_hyperparameters(), which pickles its config and
  tokenizer; such objects (and a malicious one) are kept as inert records, never run."""
  torch = pytest.importorskip("torch")
  path = tmp_path / "objects.ckpt"
  extra = {"hyper_parameters": argparse.Namespace(lr=3e-4),
           "exploit": _Exploit(tmp_path / "pwned")}
  torch.save(_lightning(torch, weights[0], weights[1], extra), path)
  cfg = _config(tmp_path)
  raw = conv.read_torch_file(path)
  assert not (tmp_path / "pwned").exists()
  assert isinstance(raw["exploit"], torch_pickle.Opaque) and raw["exploit"].name.endswith("system")
  assert raw["hyper_parameters"].state == {"lr": 3e-4}
  params, info = convert_cli.convert_weights(cfg, str(path))
  assert info["weights"] == "ema"
  _assert_params_equal(params, weights[0])


def test_sedd_pytorch_model_bin_bf16(tmp_path, weights):
  torch = pytest.importorskip("torch")
  folder = tmp_path / "sedd-small"
  folder.mkdir()
  sd = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in _with_buffer(weights[0]).items()}
  torch.save(sd, folder / "pytorch_model.bin")
  cfg = _config(tmp_path, "model.time_conditioning=True")
  params, info = convert_cli.convert_weights(cfg, str(folder))
  assert info["format"] == "hf_bin" and info["prefix"] == ""
  rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in weights[0].items()}
  _assert_params_equal(params, rounded)
  _logits_match(params, rounded, cfg)


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_convert_then_eval(tmp_path, weights):
  folder = _hf_folder(tmp_path / "mdlm-owt", _with_buffer(weights[0], "backbone."))
  work = tmp_path / "work"
  cfg = _config(tmp_path)
  info = convert_cli.convert_to_workdir(cfg, str(folder), work)
  assert info["checkpoint"].endswith("checkpoints/0")
  assert json.loads((work / "conversion.json").read_text())["prefix"] == "backbone."
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    convert_cli.convert_to_workdir(cfg, str(folder), work)

  run = main.run(_config(tmp_path, "mode='eval'", "data.max_train_docs=300",
                         "data.max_val_rows=16"), work, devices=jax.devices()[:1])
  assert np.isfinite(run.results["val"]["nelbo"])
  assert int(run.state.step) == 0 and run.train_iter is None  # eval reads no training data
  # fine-tuning from the converted weights: no saved data position, the iterator starts at 0
  tune = loop.build(_config(tmp_path, "data.max_train_docs=300"), work,
                    devices=jax.devices()[:1])
  assert loop.restore_latest(tune) == 0
  assert tune.train_iter.get_state()["epoch"] == 0 and tune.train_iter.get_state()["batch"] == 0
  _assert_params_equal(jax.device_get(run.state.ema_params), weights[0])
  _assert_params_equal(jax.device_get(run.state.params), weights[0])
  meta = run.ckpt.restore(0, loop.state_lib.abstract_state(run.state, run.shardings))[2]
  assert meta["converted_from"]["format"] == "hf_safetensors"
  assert meta["converted_from"]["weights"] == "published"
  results = json.loads((work / "results_eval.json").read_text())  # mode eval's own file
  assert results["step"] == 0 and np.isfinite(results["val_nelbo"])
  # the converted workdir scored read-only (eval.model): same number, results elsewhere
  before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
  out = tmp_path / "scores"
  scored = main.run(_config(tmp_path, "mode='eval'", "data.max_val_rows=16",
                            f"eval.model='{work}'"), out, devices=jax.devices()[:1])
  assert scored.results["val"]["nelbo"] == run.results["val"]["nelbo"]
  assert json.loads((out / "results_eval.json").read_text())["model"] == str(work)
  assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before
  assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_cli(tmp_path, weights):
  folder = _hf_folder(tmp_path / "sedd", _with_buffer(weights[0]),
                      {"model": {"n_heads": N_HEADS}})
  cmd = [sys.executable, "-m", "idlm_jax.convert", "--config=configs/demo_teacher.py:smoke",
         f"--source={folder}", f"--workdir={tmp_path / 'out'}", "--config.model.n_blocks=2",
         "--config.model.time_conditioning=True"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": os.environ["IDLM_JAX_TEST_XLA_FLAGS_1"]}  # one device
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "prefix ''" in out.stdout and (tmp_path / "out" / "checkpoints" / "0").is_dir()
  bad_cmd = [c for c in cmd if "n_blocks" not in c and "--workdir" not in c]
  bad = subprocess.run(bad_cmd + [f"--workdir={tmp_path / 'out2'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0
  assert "conversion failed" in bad.stderr and "--config.model.n_blocks=2" in bad.stderr


# ---------------------------------------------------------------------------- issue #19 item 9


def test_wrong_shape_is_a_conversion_error_naming_the_config_field(tmp_path, weights):
  tensors = _with_buffer(weights[0], "backbone.")
  tensors["backbone.blocks.1.mlp.0.weight"] = np.zeros((64, 32), np.float32)
  msg = _convert_error(tmp_path, tensors)
  assert ("key 'blocks.1.mlp.0.weight': checkpoint shape (64, 32) != model shape (128, 32) "
          "(torch layout; axis 0 is config.model.mlp_ratio x config.model.hidden_size)") in msg
  tensors = _with_buffer(weights[0], "backbone.")
  tensors["backbone.blocks.1.adaLN_modulation.weight"] = np.zeros((192, 16), np.float32)
  msg = _convert_error(tmp_path / "2", tensors)
  assert "(192, 16) != model shape (192, 32) (torch layout; axis 1 is config.model.cond_dim)" \
      in msg


@pytest.mark.slow
def test_cli_prints_a_conversion_error_as_one_line(tmp_path, weights):
  """Before: models/dit.py's ValueError escaped the CLI as a traceback. Now one line, exit 1."""
  tensors = _with_buffer(weights[0])
  tensors["blocks.1.attn_out.weight"] = np.zeros((32, 30), np.float32)
  folder = _hf_folder(tmp_path / "sedd", tensors, {"model": {"n_heads": N_HEADS}})
  cmd = [sys.executable, "-m", "idlm_jax.convert", "--config=configs/demo_teacher.py:smoke",
         f"--source={folder}", f"--workdir={tmp_path / 'out'}", "--config.model.n_blocks=2",
         "--config.model.time_conditioning=True", f"--n_heads={N_HEADS}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": os.environ["IDLM_JAX_TEST_XLA_FLAGS_1"]}  # one device
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert lines == [
      "conversion failed: PyTorch state_dict does not match the DIT: key "
      "'blocks.1.attn_out.weight': checkpoint shape (32, 30) != model shape (32, 32) (torch "
      "layout; axis 1 is config.model.hidden_size)"], lines


def test_one_line_and_printable():
  err = conv.ConversionError("the checkpoint does not match the config:\n  a: x\n  b: y\x1b[2J")
  assert convert_cli.one_line(err) == ("the checkpoint does not match the config: a: x; "
                                       "b: y\\x1b[2J")


def _no_buffer(sd, prefix="backbone."):
  return {prefix + k: v for k, v in sd.items()}


def test_unverifiable_head_count_needs_it_explicitly(tmp_path, weights):
  """No rotary_emb.inv_freq and no head count in config.json: the attention weights have
  the same shapes for any head count, so config.model.n_heads cannot be checked."""
  folder = _hf_folder(tmp_path / "nobuf", _no_buffer(weights[0]), {"time_conditioning": False})
  cfg = _config(tmp_path)
  with pytest.raises(conv.ConversionError, match=r"cannot verify the number of attention heads"
                                                 r".*confirm it with --n_heads=2 "
                                                 r"\(convert_weights\(\.\.\., n_heads=2\)\)"):
    convert_cli.convert_weights(cfg, str(folder))
  # the reported case: a wrong config.model.n_heads no longer converts silently
  with pytest.raises(conv.ConversionError, match="config.model.n_heads=4 would convert "
                                                 "silently"):
    convert_cli.convert_weights(_config(tmp_path, "model.n_heads=4"), str(folder))
  with pytest.raises(conv.ConversionError, match="n_heads=4 was given explicitly but "
                                                 "config.model.n_heads=2"):
    convert_cli.convert_weights(cfg, str(folder), n_heads=4)
  params, info = convert_cli.convert_weights(cfg, str(folder), n_heads=N_HEADS)
  assert info["n_heads_verified_by"].startswith("given explicitly")
  _assert_params_equal(params, weights[0])
  # verified by the buffer or by config.json: no explicit count needed
  _, info = convert_cli.convert_weights(cfg, str(_hf_folder(
      tmp_path / "buf", _with_buffer(weights[0], "backbone."), {})))
  assert info["n_heads_verified_by"].startswith("rotary_emb.inv_freq")
  _, info = convert_cli.convert_weights(cfg, str(_hf_folder(
      tmp_path / "cfg", _no_buffer(weights[0]), {"n_heads": N_HEADS})))
  assert info["n_heads_verified_by"] == "config.json"


def test_buffer_and_config_json_contradicting_is_an_error(tmp_path, weights):
  folder = _hf_folder(tmp_path / "x", _with_buffer(weights[0], "backbone."), {"n_heads": 4})
  with pytest.raises(conv.ConversionError, match=r"contradicts itself: its rotary_emb.inv_freq "
                                                 r"buffer gives head_dim 16, so 2 heads, but "
                                                 r"config.json says n_heads=4"):
    convert_cli.convert_weights(_config(tmp_path), str(folder))


def test_lightning_without_buffer_is_refused_without_n_heads(tmp_path, weights):
  torch = pytest.importorskip("torch")
  ckpt = _lightning(torch, weights[0], weights[1])
  del ckpt["state_dict"]["backbone.rotary_emb.inv_freq"]
  torch.save(ckpt, tmp_path / "x.ckpt")
  with pytest.raises(conv.ConversionError, match="--n_heads=2"):
    convert_cli.convert_weights(_config(tmp_path), str(tmp_path / "x.ckpt"))
  params, _ = convert_cli.convert_weights(_config(tmp_path), str(tmp_path / "x.ckpt"),
                                          n_heads=N_HEADS)
  _assert_params_equal(params, weights[0])


class Callback:
  def __init__(self, monitor):
    self.monitor = monitor


def test_ignored_objects_are_reported(tmp_path, weights, caplog):
  """hyper_parameters, callbacks, optimizer states, ...: listed in the conversion meta, logged
  and printed by the CLI, instead of being dropped without a word."""
  torch = pytest.importorskip("torch")
  extra = {"hyper_parameters": argparse.Namespace(lr=3e-4),
           "callbacks": {"ModelCheckpoint": Callback("val/nll")},
           "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": 3}}}}
  ckpt = _lightning(torch, weights[0], weights[1], extra)
  ckpt["ema"]["collected_params"] = [torch.zeros(2)]
  torch.save(ckpt, tmp_path / "x.ckpt")
  with caplog.at_level("INFO", logger="idlm_jax.models.readers"):
    _, info = convert_cli.convert_weights(_config(tmp_path), str(tmp_path / "x.ckpt"))
  objects = info["ignored_objects"]
  assert objects["hyper_parameters"] == "pickled object argparse.Namespace"
  assert objects["callbacks"].startswith("dict of 1 entries; pickled objects inside: ")
  assert objects["callbacks"].endswith("test_convert.Callback")  # (module name as imported)
  assert objects["epoch"] == "int 3" and objects["pytorch-lightning_version"] == "str '2.2.0'"
  assert objects["optimizer_states"] == "list of 1 entries"
  assert objects["loops"] == "dict of 1 entries"
  assert objects["ema.collected_params"] == "list of 1 entries; 1 tensor inside"
  assert "state_dict" not in objects and "ema" not in objects
  assert any("8 entries not converted" in r.getMessage() and "hyper_parameters" in
             r.getMessage() for r in caplog.records), caplog.records
  info["checkpoint"] = "/out/checkpoints/0"
  lines = convert_cli.report_lines(info, N_HEADS, "/out")
  assert ("  not converted: 8 other entries of the file (pickled objects among them are inert "
          "records, never executed):") in lines
  assert "    hyper_parameters: pickled object argparse.Namespace" in lines
  assert any(line.startswith("  number of heads (2) verified by: rotary_emb.inv_freq")
             for line in lines)
  # raw state_dict weights: the EMA entry is reported as not converted too
  _, info = convert_cli.convert_weights(_config(tmp_path), str(tmp_path / "x.ckpt"),
                                        weights="state_dict")
  assert info["ignored_objects"]["ema"] == "dict of 4 entries; 31 tensors inside"


def test_crafted_torch_file_is_a_named_conversion_error(tmp_path):
  """A tensor reading past its storage, through the converter: one ConversionError."""
  from tests.models import reader_fuzz

  reader_fuzz.write_torch_zip(tmp_path / "x.bin", reader_fuzz.tensor_pickle(
      {"vocab_embed.embedding": ("0", "FloatStorage", 4, 0, (2048, 32), (32, 1))}),
      {"0": np.zeros(4, np.float32).tobytes()})
  with pytest.raises(conv.UnsafeTensorError, match="reach element 65535, but the storage "
                                                   "holds 4 elements"):
    convert_cli.convert_weights(_config(tmp_path), str(tmp_path / "x.bin"))


def test_rope_buffer_of_a_non_float_dtype_is_a_conversion_error(tmp_path, weights):
  tensors = _with_buffer(weights[0], "backbone.")
  tensors["backbone.rotary_emb.inv_freq"] = np.ones(8, np.int16)
  assert "has dtype int16; the RoPE buffer is floating point" in _convert_error(tmp_path, tensors)
