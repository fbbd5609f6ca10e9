"""The authors' own models, converted, against their OFFICIAL code's outputs (issue #17 item 11).

Fixtures (tests/models/data/{sedd,idlm,didi}_tiny, see its README): tiny random models in the
layout each family releases, written and run by `benchmarks/parity/make_authors_parity.py`
with the official code (SEDD's `model/transformer.py`, IDLM's and DiDi-Instruct's
`models/dit.py`, DiDi's `DiscriminatorHead`), outputs recorded in float32. Here they go
through the torch-free converter (`convert.convert_all`, the CLI's path) into our DIT /
Discriminator and must give the official outputs to 1e-4. Vocabulary 40 = `symbols-36` (mask
= id 39, the official absorbing state V - 1); d=16, 2 heads, 2 blocks, cond 8.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax import convert as convert_cli
from idlm_jax.diffusion import sedd
from idlm_jax.models import layers
from idlm_jax.models import readers as conv
from idlm_jax.train import loop

from benchmarks.parity import authors_parity_errors as parity

DATA = parity.DATA
TOL = dict(rtol=1e-4, atol=1e-4)
# the fixtures' tiny model and its helpers, shared with the measurement that writes
# docs/converting.md's table (benchmarks/parity/authors_parity_errors.py)
_config, _npz, _dit, _disc, _logits = (parity.tiny_config, parity.fixture, parity.dit,
                                       parity.disc, parity.logits)


def test_sedd_matches_the_official_sedd_forward():
  cfg = _config()
  params, aux, info = convert_cli.convert_all(cfg, str(DATA / "sedd_tiny"))
  assert info["format"] == "hf_bin" and info["prefix"] == "" and aux == {}
  f = _npz("sedd_tiny")
  raw = _dit(cfg, params)(jnp.asarray(f["ids"]), jnp.asarray(f["sigma"]))
  got = np.asarray(sedd.log_score(raw, jnp.asarray(f["ids"]), jnp.asarray(f["sigma"]),
                                  "absorbing"))
  assert np.abs(f["log_score"]).max() > 3.0
  np.testing.assert_allclose(got, f["log_score"], **TOL)


def test_idlm_student_and_fake_match_the_official_dit():
  f = _npz("idlm_tiny")
  ckpt = str(DATA / "idlm_tiny" / "idlm.ckpt")
  cfg = _config("configs/idlm_synthetic.py")
  params, aux, info = convert_cli.convert_all(cfg, ckpt)
  assert info["weights"] == "ema" and info["prefix"] == "backbone."
  assert set(aux) == {"fake"} and info["aux_nets"]["fake"]["prefix"] == "fake_model."
  assert set(info["ignored_objects"]) == {"epoch", "global_step", "pytorch-lightning_version",
                                          "hyper_parameters"}
  np.testing.assert_allclose(_logits(cfg, params, f), f["student"], **TOL)
  np.testing.assert_allclose(_logits(cfg, aux["fake"], f), f["fake"], **TOL)
  # the raw (non-EMA) weights on request; the EMA and raw outputs differ by far more than TOL
  raw, aux_raw, _ = convert_cli.convert_all(cfg, ckpt, weights="state_dict")
  np.testing.assert_allclose(_logits(cfg, raw, f), f["student_raw"], **TOL)
  assert np.abs(f["student_raw"] - f["student"]).max() > 0.1
  # the fake model as THE model (--prefix=fake_model.) takes its own EMA list, ema_fake
  fake, none, _ = convert_cli.convert_all(cfg, ckpt, prefix="fake_model.")
  assert none == {}
  np.testing.assert_allclose(_logits(cfg, fake, f), f["fake"], **TOL)
  # with a config whose objective trains no fake model, its keys are listed as ignored
  _, aux_mdlm, info_mdlm = convert_cli.convert_all(_config(), ckpt)
  assert aux_mdlm == {}
  assert any("objective='idlm'" in reason for reason in info_mdlm["ignored_keys"])


def test_the_fixtures_see_a_wrong_rotary_convention(monkeypatch):
  """Negative control: with GPT-J (interleaved) RoPE in place of the GPT-NeoX rotate_half
  the official code uses, the converted student is far outside the tolerance."""
  def interleaved(x, cos, sin):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).reshape(x.shape)

  cfg = _config("configs/didi_synthetic.py")
  params, _, _ = convert_cli.convert_all(cfg, str(DATA / "didi_tiny"))
  f = _npz("didi_tiny")
  monkeypatch.setattr(layers, "apply_rope", interleaved)
  assert np.abs(_logits(cfg, params, f) - f["student"]).max() > 0.1


def test_idlm_hf_layout_with_student_and_fake(tmp_path):
  """An HF folder holding the Lightning state_dict's `backbone.*` and `fake_model.*` keys."""
  obj = conv.read_torch_file(DATA / "idlm_tiny" / "idlm.ckpt")
  folder = tmp_path / "idlm-mdlm"
  folder.mkdir()
  conv.write_safetensors(folder / "model.safetensors", obj["state_dict"], {"format": "pt"})
  cfg = _config("configs/idlm_synthetic.py")
  params, aux, info = convert_cli.convert_all(cfg, str(folder))
  assert info["format"] == "hf_safetensors" and info["weights"] == "published"
  f = _npz("idlm_tiny")
  np.testing.assert_allclose(_logits(cfg, params, f), f["student_raw"], **TOL)
  assert set(aux) == {"fake"}


def test_didi_student_and_discriminator_match_the_official_code():
  f = _npz("didi_tiny")
  cfg = _config("configs/didi_synthetic.py")
  params, aux, info = convert_cli.convert_all(cfg, str(DATA / "didi_tiny"))
  assert info["prefix"] == "" and set(aux) == {"disc"}
  assert set(info["files"]) == {"model.safetensors", "discriminator.safetensors"}
  np.testing.assert_allclose(_logits(cfg, params, f), f["student"], **TOL)
  disc = _disc(cfg, aux["disc"])
  ids, sigma = jnp.asarray(f["ids"]), jnp.asarray(f["sigma"])
  np.testing.assert_allclose(np.asarray(disc(ids, sigma)), f["disc"], **TOL)
  # the official embedding softmaxes logit inputs; ours takes the probabilities
  soft = jax.nn.softmax(jnp.asarray(f["soft"]), axis=-1)
  np.testing.assert_allclose(np.asarray(disc(soft, sigma)), f["disc_soft"], **TOL)
  # torch's eval forward reads the stored (u, v): sigma = u^T W v. The estimate from u alone,
  # |W^T u|, is off after torch's 3 training-mode power iterations: sn_v matters here.
  head = aux["disc"]["head"]["linear_0"]
  k, u, v = head["kernel"], head["sn_u"], head["sn_v"]
  assert abs(float(v @ k @ u) - float(np.linalg.norm(k @ u))) > 1e-3 * float(v @ k @ u)


def test_didi_lightning_layout(tmp_path):
  """didi-instruct.ckpt as the DiDi repository's models/hf_to_ckpt.py rebuilds it:
  `student_ema.*` + `discriminator.*`, no EMA list (student_ema is the EMA)."""
  torch = pytest.importorskip("torch")
  folder = DATA / "didi_tiny"
  sd = {f"student_ema.{k}": torch.from_numpy(np.array(v))
        for k, v in conv.read_safetensors(folder / "model.safetensors").items()}
  sd.update({f"discriminator.{k}": torch.from_numpy(np.array(v))
             for k, v in conv.read_safetensors(folder / "discriminator.safetensors").items()})
  sd.update({f"backbone.{k[len('student_ema.'):]}": v for k, v in list(sd.items())
             if k.startswith("student_ema.")})  # the live student of a training checkpoint
  torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.5.3",
              "state_dict": sd}, tmp_path / "didi-instruct.ckpt")
  cfg = _config("configs/didi_synthetic.py")
  params, aux, info = convert_cli.convert_all(cfg, str(tmp_path / "didi-instruct.ckpt"))
  assert info["prefix"] == "student_ema." and info["weights"] == "student_ema"
  assert any("live student" in reason for reason in info["ignored_keys"])
  f = _npz("didi_tiny")
  np.testing.assert_allclose(_logits(cfg, params, f), f["student"], **TOL)
  np.testing.assert_allclose(
      np.asarray(_disc(cfg, aux["disc"])(jnp.asarray(f["ids"]), jnp.asarray(f["sigma"]))),
      f["disc"], **TOL)


@pytest.mark.slow  # ~20 s each on 2 cores (state creation, orbax save and restore)
@pytest.mark.parametrize("family,config,net", [
    ("idlm_tiny/idlm.ckpt", "configs/idlm_synthetic.py", "fake"),
    ("didi_tiny", "configs/didi_synthetic.py", "disc")])
def test_converted_workdir_restores_with_its_aux_network(tmp_path, family, config, net):
  """The step-0 checkpoint is the objective's own train state: loop.build (as every mode does)
  restores it, the aux network included, and the restored networks give the official
  outputs."""
  overrides = [f"data.cache_dir='{tmp_path / 'cache'}'", "data.synthetic.num_train_docs=64",
               "data.synthetic.num_val_docs=16", "distill.report_teacher_steps=''"]
  cfg = _config(config, *overrides)
  work = tmp_path / "work"
  info = convert_cli.convert_to_workdir(cfg, str(DATA / family), work)
  assert set(info["aux_nets"]) == {net}
  run = loop.build(_config(config, *overrides), work,
                   devices=jax.devices()[:1])
  assert loop.restore_latest(run) == 0
  f = _npz(family.split("/")[0])
  state = jax.device_get(run.state)
  np.testing.assert_allclose(_logits(cfg, state.ema_params, f), f["student"], **TOL)
  aux = state.aux[net]
  if net == "fake":
    np.testing.assert_allclose(_logits(cfg, aux.params, f), f["fake"], **TOL)
  else:
    got = _disc(cfg, aux.params)(jnp.asarray(f["ids"]), jnp.asarray(f["sigma"]))
    np.testing.assert_allclose(np.asarray(got), f["disc"], **TOL)
  run.ckpt.close()


def test_a_discriminator_that_does_not_fit_is_one_clear_error(tmp_path):
  """Missing spectral-norm vectors and a wrong head shape are listed in one ConversionError,
  printed by the CLI as one line."""
  folder = tmp_path / "didi"
  folder.mkdir()
  (folder / "model.safetensors").write_bytes((DATA / "didi_tiny" / "model.safetensors")
                                             .read_bytes())
  disc = conv.read_safetensors(DATA / "didi_tiny" / "discriminator.safetensors")
  del disc["output_layer.main.0.weight_v"]
  disc["output_layer.main.2.weight_orig"] = np.zeros((2, 16), np.float32)
  disc["output_layer.extra"] = np.zeros(3, np.float32)
  conv.write_safetensors(folder / "discriminator.safetensors", disc, {"format": "pt"})
  with pytest.raises(conv.ConversionError) as e:
    convert_cli.convert_all(_config("configs/didi_synthetic.py"), str(folder))
  msg = str(e.value)
  assert "missing key 'output_layer.main.0.weight_v'" in msg
  assert "'output_layer.main.2.weight_orig': checkpoint shape (2, 16) != model shape (1, 16)" \
      in msg
  assert "unexpected key 'output_layer.extra'" in msg
  assert "\n" not in convert_cli.one_line(e.value)


def test_committed_error_table_is_this_conversion():
  """benchmarks/results/authors_parity.json (docs/converting.md's table) holds every output
  that parity.outputs() compares, each within float32 noise of a fresh conversion."""
  import json
  committed = json.loads((parity.ROOT / "benchmarks/results/authors_parity.json").read_text())
  fresh = {(fam, name): np.abs(ours - official).max()
           for fam, name, ours, official in parity.outputs()}
  rows = {(r["family"], r["output"]): r["max_abs_error"] for r in committed["rows"]}
  assert set(rows) == set(fresh)
  for key, err in fresh.items():
    assert err <= 1e-5 and rows[key] <= 1e-5 and abs(rows[key] - err) <= 2e-6, key
