"""End to end on tiny configs: the "ar" objective trains a GPT-2 evaluator that exports and
scores Gen PPL; mode=eval_samplers writes results.json, a Markdown table and PNG plots."""

import json

import jax
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax.evals import genppl
from idlm_jax import export, main

COMMON = ["ckpt.async_save=False", "log.tensorboard=False", "train.steps=2", "data.seq_len=16",
          "data.max_train_docs=200", "data.max_val_rows=16", "ckpt.every=2", "sample.steps=2",
          "sample.num_samples=8", "sample.batch_size=8"]


def _cfg(spec, tmp_path, *extra):
  return config_lib.load_config(spec, [f"data.cache_dir='{tmp_path / 'cache'}'", *COMMON, *extra])


@pytest.fixture(scope="module")
def evaluator_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ar")
  cfg = _cfg("configs/ar_embedded.py:smoke", tmp, "model.n_positions=32")
  run = main.run(cfg, tmp / "run", devices=jax.devices()[:1])
  assert np.isfinite(run.results["val"]["nelbo"])
  assert "samples" not in run.results  # an AR run has no diffusion sampler
  card = export.export_evaluator(cfg, str(tmp / "run"), str(tmp / "eval"), "test")
  assert card["val_ppl"] == pytest.approx(run.results["val"]["ppl"], rel=1e-5)
  return tmp / "eval"


def test_exported_evaluator_scores_gen_ppl(evaluator_dir):
  ev = genppl.load_evaluator(str(evaluator_dir), max_length=1024)
  assert ev.max_length == 32 and ev.tokenizer.name == "demo-bpe-2048"
  texts = ["[BOS] It is a truth universally acknowledged [EOS]", "the the the the"] * 3
  out = genppl.gen_ppl(ev, texts, batch_size=4)  # 6 samples: the last batch is padded
  assert 1.0 < out["gen_ppl"] < 1e5 and out["tokens"] > 0
  # pooled over samples: equals scoring one at a time and pooling by hand when padding adds
  # no target (both end with EOS; a sample without EOS would gain its first pad EOS)
  pair = ["[BOS] It is a truth universally acknowledged [EOS]", "the the [EOS]"]
  sums = [genppl.gen_ppl(ev, [t], batch_size=1) for t in pair]
  pooled = np.exp(sum(s["nll"] * s["tokens"] for s in sums) / sum(s["tokens"] for s in sums))
  out2 = genppl.gen_ppl(ev, pair, batch_size=2)
  assert out2["gen_ppl"] == pytest.approx(pooled, rel=1e-4)
  assert out2["tokens"] == sum(s["tokens"] for s in sums)


@pytest.mark.slow
def test_eval_samplers_mode_with_gen_ppl(evaluator_dir, tmp_path):
  work = tmp_path / "mdlm"
  main.run(_cfg("configs/demo_teacher.py:smoke", tmp_path), work, devices=jax.devices()[:1])
  cfg = _cfg("configs/demo_teacher.py:smoke", tmp_path, "mode='eval_samplers'",
             f"eval.evaluator='{evaluator_dir}'", "eval.num_samples=8",
             "eval.sampling_steps='2,4'")
  run = main.run(cfg, work, devices=jax.devices()[:1])
  res = json.loads((work / "eval_samplers" / "results.json").read_text())
  assert [r["steps"] for r in res["rows"]] == [None, 2, 4]  # the held-out data row first
  assert res["rows"][0]["sampler"].startswith("data") and res["rows"][0]["gen_ppl"] > 1
  for r in res["rows"][1:]:
    assert r["gen_ppl_se"] > 0 and r["entropy_se"] >= 0  # (equal entropies at smoke size)
    assert r["gen_ppl"] > 1 and r["entropy"] > 0 and r["nfe"] <= r["steps"] + 1
    assert r["tokens_per_s"] > 0 and 0 < r["distinct_1"] <= 1
  assert "Gen PPL" in (work / "eval_samplers" / "results.md").read_text()
  assert (work / "eval_samplers" / "quality_vs_nfe.png").stat().st_size > 1000
  assert (work / "eval_samplers" / "frontier.png").is_file()
  assert run.results["eval_samplers"]["header"]["evaluator"].startswith(str(evaluator_dir))


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_eval_samplers_on_synthetic_source(tmp_path):
  work = tmp_path / "syn"
  cfg = _cfg("configs/synthetic_mdlm.py:smoke", tmp_path, "data.synthetic.num_train_docs=200",
             "data.synthetic.num_val_docs=16")
  main.run(cfg, work, devices=jax.devices()[:1])
  cfg = _cfg("configs/synthetic_mdlm.py:smoke", tmp_path, "data.synthetic.num_train_docs=200",
             "data.synthetic.num_val_docs=16",
             "mode='eval_samplers'", "eval.num_samples=8", "eval.sampling_steps='2'")
  res = main.run(cfg, work, devices=jax.devices()[:1]).results["eval_samplers"]
  data, row = res["rows"]
  assert data["steps"] is None and data["valid_fraction"] == 1.0  # source samples are valid
  assert 0 <= row["valid_fraction"] <= 1 and "gen_ppl" not in row
  assert row["ngram_kl_4"] > 0 and 0 <= row["dup_rate"] <= 1 and row["exact_nll_se"] > 0
  assert res["header"]["source_entropy_per_token"] > 0
  assert res["header"]["ngram_floor"]["ngram_kl_4"]["mean"] > 0
  assert (work / "eval_samplers" / "results.md").is_file()
