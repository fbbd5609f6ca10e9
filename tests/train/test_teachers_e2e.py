"""Every teacher trains end to end from its :smoke config on the embedded corpus, validates
(NELBO bound) and samples; paper configs stop offline with the data layer's message."""

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.data.sources import DataNotFoundError
from idlm_jax.train import loop

SMOKES = {  # config, vocabulary of its tokenizer
    "sedd_absorbing": ("configs/sedd_owt.py:smoke", ["sample.sampler='euler'"]),
    "sedd_uniform": ("configs/sedd_owt.py:uniform_smoke", []),
    "udlm": ("configs/udlm_lm1b.py:smoke", ["sample.top_p=0.9"]),
    "duo": ("configs/duo_lm1b.py:smoke", []),
}


def _config(spec, tmp_path, *overrides):
  return config_lib.load_config(spec, [
      f"data.cache_dir='{tmp_path / 'cache'}'", "ckpt.async_save=False", "log.tensorboard=False",
      "train.steps=6", "ckpt.every=100", "data.max_train_docs=300", "data.max_val_rows=16",
      "sample.steps=8", "sample.num_samples=4", "sample.batch_size=4", *overrides])


@pytest.mark.parametrize("name", sorted(SMOKES))
def test_teacher_smoke_trains_validates_samples(name, tmp_path):
  spec, extra = SMOKES[name]
  cfg = _config(spec, tmp_path, *extra)
  run = loop.run(cfg, tmp_path / name, devices=jax.devices()[:1])
  losses = [m["loss"] for _, m in run.results["train"]["history"]]
  assert len(losses) == cfg.train.steps and np.all(np.isfinite(losses))
  val = run.results["val"]
  assert np.isfinite(val["nelbo"]) and val["nelbo"] > 0 and val["tokens"] > 0
  out = run.results["samples"]
  assert out["tokens"].shape == (cfg.sample.num_samples, cfg.data.seq_len)
  assert out["nfe"] == cfg.sample.steps + 1
  if cfg.diffusion.process == "absorbing":
    assert not np.any(out["tokens"] == run.tokenizer.mask_id)
  assert (tmp_path / name / "results.json").exists()


def test_duo_curriculum_switches_to_udlm(tmp_path):
  """Duo's loss is the curriculum before curriculum_end and the plain UDLM NELBO after."""
  cfg = _config("configs/duo_lm1b.py:smoke", tmp_path, "train.steps=4",
                "diffusion.curriculum_end=2", "optim.lr=1e-12")
  run = loop.build(cfg, tmp_path / "duo", devices=jax.devices()[:1])
  hist = loop.train(run)["history"]
  assert len(hist) == 4 and all(np.isfinite(m["loss"]) for _, m in hist)


@pytest.mark.parametrize("spec", ["configs/duo_lm1b.py", "configs/duo_owt.py",
                                  "configs/udlm_lm1b.py", "configs/sedd_owt.py",
                                  "configs/sedd_owt.py:uniform"])
def test_paper_configs_stop_offline_with_data_message(spec, tmp_path, monkeypatch):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  cfg = _config(spec, tmp_path, f"data.tfds_data_dir='{tmp_path / 'no_tfds'}'",
                f"data.path='{tmp_path / 'no_owt'}'")
  with pytest.raises(DataNotFoundError):
    loop.build(cfg, tmp_path / "w", devices=jax.devices()[:1])
