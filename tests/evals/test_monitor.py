"""The distillation monitor's entropy floor and best-checkpoint rule (evals/monitor.py), and
teacher export (idlm_jax/export.py) and loading with vocabulary padding (train/teacher.py)."""

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax import models
from idlm_jax.data import tokenizers
from idlm_jax import export
from idlm_jax.evals import evaluate, monitor
from idlm_jax.train import loop, parallel, state as state_lib, teacher


def _cfg(**distill):
  c = config_lib.load_config("configs/demo.py:smoke")
  c.unlock()
  c.distill.update(distill)
  return c


def test_entropy_band_around_the_teachers_reference_entropy_or_an_explicit_floor():
  hist = [{"step": 0, "entropy": 4.0, "reference_entropy": 3.9}, {"step": 10, "entropy": 3.0}]
  lo, hi = monitor.entropy_band(_cfg(entropy_band=0.1), hist)
  assert (lo, hi) == (pytest.approx(3.8), pytest.approx(4.0))
  assert monitor.entropy_band(_cfg(entropy_floor=2.5), hist) == (2.5, float("inf"))
  assert monitor.entropy_band(_cfg(), []) == (-float("inf"), float("inf"))  # no reference yet


def test_best_rule_lowest_metric_inside_the_entropy_band():
  rows = [{"step": 0, "entropy": 4.0, "gen_ppl": 10.0},   # the teacher copy: never "best"
          {"step": 5, "entropy": 3.9, "gen_ppl": 50.0},
          {"step": 10, "entropy": 3.0, "gen_ppl": 20.0},  # collapsed: below the band
          {"step": 12, "entropy": 4.5, "gen_ppl": 5.0},   # above the band
          {"step": 15, "entropy": 3.8, "gen_ppl": 40.0},
          {"step": 20, "entropy": 3.85, "gen_ppl": float("nan")}]
  best = None
  picks = []
  for r in rows:
    if monitor.is_better(r, best, "gen_ppl", band=(3.6, 4.2)):
      best = r
      picks.append(r["step"])
  assert picks == [5, 15]
  assert not monitor.is_better(rows[1], None, "none", (0.0, 9.0))


def test_fit_vocab_pads_and_cuts_only_vocabulary_axes():
  x = np.arange(12.0).reshape(6, 2)  # 6 rows, true vocabulary 5
  padded = np.asarray(teacher.fit_vocab(x, (8, 2), vocab_size=5))
  np.testing.assert_array_equal(padded[:6], x)
  assert (padded[6:] == 0).all()
  np.testing.assert_array_equal(teacher.fit_vocab(padded, (6, 2), vocab_size=5), x)
  with pytest.raises(ValueError, match="shape"):
    teacher.fit_vocab(x, (6, 3), vocab_size=5)  # a hidden axis differs: a real mismatch
  with pytest.raises(ValueError, match="shape"):
    teacher.fit_vocab(x, (4, 2), vocab_size=5)  # would cut real vocabulary rows


def test_export_then_load_as_teacher_with_other_padding(tmp_path):
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", [
      "train.steps=1", f"data.cache_dir='{tmp_path / 'cache'}'", "ckpt.async_save=False"])
  run = loop.build(cfg, tmp_path / "t", devices=jax.devices()[:1])
  loop.save(run, 0, force=True)  # the initial state is a valid checkpoint (no step compiled)
  run.ckpt.wait()
  (tmp_path / "t" / "config.json").write_text(cfg.to_json_best_effort())
  out = export.export_teacher(tmp_path / "t", tmp_path / "exported")
  dcfg = config_lib.load_config("configs/demo.py:smoke", [
      f"distill.teacher='{out}'", "model.vocab_pad_multiple=0", "mode='sample'"])
  tok = tokenizers.get_tokenizer(dcfg.data.tokenizer)
  _, abstract = state_lib.abstract_model(
      lambda r: models.build_model(dcfg.model, tok.model_vocab_size, r), 0)
  mesh = parallel.make_mesh(dcfg.parallel, jax.devices()[:1])
  params = teacher.load(dcfg, abstract, mesh, tok.model_vocab_size)
  emb, src = params["vocab_embed"]["embedding"], run.state.ema_params["vocab_embed"]["embedding"]
  assert emb.shape[0] == tok.model_vocab_size  # unpadded here, padded in the teacher run
  np.testing.assert_array_equal(emb, np.asarray(src)[:tok.model_vocab_size])


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_monitor_samples_are_disjoint_from_the_reported_samples(tmp_path):
  """Checkpoint selection never sees the reported samples: with the same params, seed, sampler,
  steps and batch size, no monitor row equals a reported row (the old scheme drew the monitor's
  rows as the first half of the report's)."""
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", [
      "train.steps=1", f"data.cache_dir='{tmp_path / 'cache'}'", "ckpt.async_save=False",
      "eval.evaluator=''", "distill.monitor_samples=8", "sample.batch_size=4"])
  run = loop.build(cfg, tmp_path / "t", devices=jax.devices()[:1])
  params = run.state.params
  mon = monitor.Monitor(run).cell(params, steps=4)["tokens"]
  rep = evaluate.draw(cfg, run.process, run.graphdef, params, run.mesh, num_steps=4,
                      num_samples=16, seed=cfg.eval.seed)["tokens"]
  assert mon.shape == (8, cfg.data.seq_len)
  assert not (mon[:, None, :] == rep[None, :, :]).all(-1).any()
  again = evaluate.draw(cfg, run.process, run.graphdef, params, run.mesh, num_steps=4,
                        num_samples=16, seed=cfg.eval.seed)["tokens"]
  np.testing.assert_array_equal(rep, again)  # fixed keys: the report itself is reproducible
