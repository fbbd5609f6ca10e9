"""Every teacher trains end to end from its :smoke config on the embedded corpus, validates
(NELBO bound) and samples; paper configs stop offline with the data layer's message."""

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.data.sources import DataNotFoundError
from idlm_jax import main
from idlm_jax.train import loop

DEMO = "data.tokenizer='demo-bpe-2048'"
SMOKES = {  # config, overrides
    "sedd_absorbing": ("configs/sedd_owt.py:smoke", [DEMO, "sample.sampler='euler'"]),
    "sedd_uniform": ("configs/sedd_owt.py:uniform_smoke", [DEMO]),
    "udlm": ("configs/udlm_lm1b.py:smoke", [DEMO, "sample.top_p=0.9"]),
    # 4 rows: the curriculum's Gaussian draws over [rows, L, 30522] are most of its time
    "duo_bert": ("configs/duo_lm1b.py:smoke", ["sample.noise_removal='argmax'",
                                               "diffusion.curriculum_end=3",
                                               "train.global_batch_size=4", "eval.batch_size=4",
                                               "data.max_val_rows=4"]),
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """One tokenized-data cache for the module (each tokenizer tokenizes the corpus once)."""
  return tmp_path_factory.mktemp("cache")


def _config(spec, cache, *overrides):
  # the demo BPE (2048 ids) keeps the CPU test fast; the paper tokenizers' vocabularies (30522,
  # 50258) only change sizes, and one smoke run keeps bert-base-uncased (duo_bert).
  return config_lib.load_config(spec, [
      f"data.cache_dir='{cache}'", "ckpt.async_save=False", "log.tensorboard=False",
      "train.steps=6", "ckpt.every=100", "data.max_train_docs=300", "data.max_val_rows=16",
      "sample.steps=8", "sample.num_samples=4", "sample.batch_size=4", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKES))
def test_teacher_smoke_trains_validates_samples(name, tmp_path, cache_dir):
  spec, extra = SMOKES[name]
  cfg = _config(spec, cache_dir, *extra)
  run = main.run(cfg, tmp_path / name, devices=jax.devices()[:1])
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
  if name == "udlm":  # zero-shot: the checkpoint's bound on every line of a text file
    text = tmp_path / "zero_shot.txt"
    lines = [f"line {i} of a small text the model has never seen." for i in range(21)]
    text.write_text("\n".join(lines) + "\n")
    ev = main.run(_config(spec, cache_dir, *extra, "mode='eval'",
                          f"eval.zero_shot_path='{text}'"), tmp_path / name,
                  devices=jax.devices()[:1])
    assert ev.val_split.num_rows == len(lines)  # no train/validation split of the file
    assert np.isfinite(ev.results["val"]["nelbo"]) and ev.results["val"]["tokens"] > len(lines)


@pytest.mark.parametrize("spec", ["configs/duo_lm1b.py", "configs/duo_owt.py",
                                  "configs/udlm_lm1b.py", "configs/sedd_owt.py",
                                  "configs/sedd_owt.py:uniform"])
def test_paper_configs_stop_offline_with_data_message(spec, tmp_path, monkeypatch, cache_dir):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  cfg = _config(spec, cache_dir, f"data.tfds_data_dir='{tmp_path / 'no_tfds'}'",
                f"data.path='{tmp_path / 'no_owt'}'")
  with pytest.raises(DataNotFoundError):
    loop.build(cfg, tmp_path / "w", devices=jax.devices()[:1])
