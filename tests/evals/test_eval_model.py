"""mode=eval on a model outside any training workdir (eval.model): the shipped evaluator's
exact NLL against a brute-force scoring and its model card, the shipped demo teacher on a
user's text file, the output folder (no lock, no checkpoints), and the one-line errors."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idlm_jax import config as config_lib
from idlm_jax import main
from idlm_jax.data import pipeline, synthetic
from idlm_jax.evals import genppl
from idlm_jax.fields import ConfigError
from idlm_jax.train import teacher, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(spec, tmp_path, *extra):
  return config_lib.load_config(spec, [f"data.cache_dir='{tmp_path / 'cache'}'",
                                       "log.tensorboard=False", "mode='eval'", *extra])


def _no_training_files(out):
  assert not (out / "checkpoints").exists() and not (out / "best").exists()
  assert not (out / workdir_lock.LOCK_NAME).exists()
  assert not (out / "results.json").exists()  # only mode eval's own record


def _brute_force_nll(cfg, tokenizer, max_rows: int) -> tuple[float, float]:
  """(NLL/token, tokens) of the first `max_rows` validation rows under the shipped evaluator,
  read by genppl's own loader (from_hf_state_dict) and scored with genppl.token_nll over the
  rows' valid next-token targets."""
  ev = genppl.load_evaluator("embedded", max_length=cfg.data.seq_len)
  rows = pipeline.load_split(cfg.data, tokenizer, "validation")
  n = min(max_rows or rows.num_rows, rows.num_rows)
  batch = rows.gather(np.arange(n))
  score = jax.jit(lambda ids: genppl.token_nll(ev.model(ids), ids))
  total = count = 0.0
  for i in range(0, n, 64):
    ids = jnp.asarray(batch["input_ids"][i:i + 64])
    valid = np.asarray(batch["attention_mask"][i:i + 64, 1:], np.float64)
    total += float((np.asarray(score(ids), np.float64) * valid).sum())
    count += valid.sum()
  return total / count, count


def _eval_evaluator(tmp_path, *extra):
  cfg = _cfg("configs/ar_embedded.py", tmp_path, "eval.model='embedded'", *extra)
  out = tmp_path / "out"
  return cfg, out, main.run(cfg, out, devices=jax.devices()[:1])


def test_shipped_evaluator_nll_is_exact_and_matches_brute_force(tmp_path, capsys):
  cfg, out, run = _eval_evaluator(tmp_path, "data.max_val_rows=64")
  nll = run.results["val"]["nelbo"]
  want, tokens = _brute_force_nll(cfg, run.tokenizer, 64)
  assert nll == pytest.approx(want, rel=2e-6) and run.results["val"]["tokens"] == tokens
  stored = json.loads((out / "results_eval.json").read_text())
  card = json.loads((teacher.EVALUATOR / "card.json").read_text())
  assert stored["step"] == card["step"] and stored["model"] == "embedded"
  assert stored["val_nll"] == nll and stored["val_ppl"] == pytest.approx(math.exp(nll))
  assert "val_nelbo" not in stored and "val_ppl_bound" not in stored
  text = capsys.readouterr().out
  assert "NLL on the embedded validation split, exact" in text and "| PPL = exp(NLL) |" in text
  assert "bound" not in text
  _no_training_files(out)


@pytest.mark.slow
def test_shipped_evaluator_reproduces_its_card_on_the_whole_split(tmp_path):
  _, _, run = _eval_evaluator(tmp_path)
  card = json.loads((teacher.EVALUATOR / "card.json").read_text())  # what its export measured
  assert run.results["val"]["nelbo"] == pytest.approx(card["val_nll"], rel=2e-6)
  assert run.results["val"]["tokens"] == card["val_tokens"]


def test_shipped_demo_teacher_scores_a_text_file_as_a_bound(tmp_path, capsys):
  text = tmp_path / "mine.txt"
  lines = [f"Line {i}: it is a truth universally acknowledged that a test needs text."
           for i in range(12)]
  text.write_text("\n".join(lines) + "\n")
  cfg = _cfg("configs/demo_teacher.py", tmp_path, "eval.model='demo'",
             f"eval.zero_shot_path='{text}'")
  out = tmp_path / "out"
  run = main.run(cfg, out, devices=jax.devices()[:1])
  # the state holds the shipped weights (EMA = params), not a random init
  with np.load(teacher.DEMO / "params.npz") as shipped:
    flat = teacher.flatten(jax.device_get(run.state.ema_params))
    assert sorted(flat) == sorted(shipped.files)
    for name in shipped.files:
      np.testing.assert_array_equal(flat[name], shipped[name])
  val = run.results["val"]
  assert np.isfinite(val["nelbo"]) and 0 < val["nelbo"] < math.log(2048)  # below uniform
  stored = json.loads((out / "results_eval.json").read_text())
  assert stored["step"] == 4000 and stored["val_nelbo"] == val["nelbo"]
  assert stored["val_ppl_bound"] == pytest.approx(math.exp(val["nelbo"]))
  assert "val_nll" not in stored and stored["eval_data"] == f"zero-shot text {text}"
  printed = capsys.readouterr().out
  assert "a bound on the NLL" in printed and "| PPL <= exp(NELBO) |" in printed
  assert "exact" not in printed
  _no_training_files(out)


@pytest.mark.parametrize("spec,name", [("configs/synthetic_mdlm.py", "synthetic"),
                                       ("configs/synthetic_duo.py", "synthetic_duo")])
def test_shipped_synthetic_teachers_bound_the_source_entropy(spec, name, tmp_path):
  """The shipped synthetic teachers load into their configs and their validation NELBO, an
  upper bound on their NLL, lies above the source's exact entropy per token (an expectation
  the bound cannot beat) and within 15% of it (measured per token: MDLM 0.725, Duo 0.802;
  entropy 0.714 per symbol, 0.692 per token with [BOS]/[EOS], which cost ~0)."""
  cfg = _cfg(spec, tmp_path, f"eval.model='{name}'")
  run = main.run(cfg, tmp_path / "out", devices=jax.devices()[:1])
  with np.load(teacher.SHIPPED[name] / "params.npz") as shipped:
    flat = teacher.flatten(jax.device_get(run.state.ema_params))
    np.testing.assert_array_equal(flat[shipped.files[0]], shipped[shipped.files[0]])
  symbols = cfg.data.seq_len - 2  # [BOS] + 62 symbols + [EOS]
  entropy = synthetic.sequence_entropy(synthetic.from_config(cfg.data.synthetic), symbols)
  nelbo = run.results["val"]["nelbo"]  # per token, [BOS]/[EOS] included
  assert entropy / cfg.data.seq_len < nelbo < 1.15 * entropy / symbols, (nelbo, entropy)


def test_eval_model_errors_name_the_field(tmp_path):
  with pytest.raises(ConfigError, match=r"config.eval.model: read by mode eval / sample"):
    config_lib.load_config("configs/demo_teacher.py", ["eval.model='demo'"])
  with pytest.raises(ConfigError, match=r"sampler 'rgas' reads the disc network"):
    config_lib.load_config("configs/didi_synthetic.py", ["eval.model='synthetic'",
                                                         "mode='sample'", "sample.sampler='rgas'"])
  devices = jax.devices()[:1]
  with pytest.raises(FileNotFoundError, match=r"'nowhere' does not exist \(shipped names: "
                     r"'demo', 'synthetic', 'synthetic_duo', 'embedded'\)"):
    main.run(_cfg("configs/demo_teacher.py", tmp_path, "eval.model='nowhere'"), tmp_path / "a",
             devices=devices)
  with pytest.raises(ConfigError, match=r"is a GPT-2 causal LM, this config builds "
                     r"model.name='dit' \(use configs/ar_embedded.py\)"):
    main.run(_cfg("configs/demo_teacher.py", tmp_path, "eval.model='embedded'"),
             tmp_path / "b", devices=devices)
  with pytest.raises(ConfigError, match=r"model.hidden_size: model 128 vs config 64"):
    main.run(_cfg("configs/ar_embedded.py", tmp_path, "eval.model='embedded'",
                  "model.hidden_size=64"), tmp_path / "c", devices=devices)
  with pytest.raises(ConfigError, match=r"model.name: teacher 'dit' vs config 'gpt2'"):
    main.run(_cfg("configs/ar_embedded.py", tmp_path, "eval.model='demo'"), tmp_path / "d",
             devices=devices)


def test_output_dir_is_required_unless_a_model_is_named(tmp_path, capsys):
  with pytest.raises(ConfigError, match=r"--workdir is required \(or score a shipped"):
    main.output_dir(_cfg("configs/demo_teacher.py", tmp_path), None)
  cfg = _cfg("configs/demo_teacher.py", tmp_path, "eval.model='demo'")
  assert main.output_dir(cfg, str(tmp_path / "mine")) == str(tmp_path / "mine")
  out = main.output_dir(cfg, None)
  assert os.path.isdir(out) and os.listdir(out) == []
  assert capsys.readouterr().out == f"results go to {out} (pass --workdir to choose the folder)\n"
  os.rmdir(out)


@pytest.mark.slow
def test_cli_scores_the_shipped_teacher_without_a_workdir(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=os.environ["IDLM_JAX_TEST_XLA_FLAGS_1"],
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "idlm_jax.main", "--config=configs/demo_teacher.py",
       "--config.mode=eval", "--config.eval.model=demo", "--config.data.max_val_rows=16",
       f"--config.data.cache_dir={tmp_path / 'cache'}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  first = proc.stdout.splitlines()[0]
  assert first.startswith("results go to ")
  out = first.split()[3]
  try:
    stored = json.loads(pathlib.Path(out, "results_eval.json").read_text())
    assert stored["model"] == "demo" and stored["val_tokens"] == 16 * 64
    assert f"| PPL <= exp(NELBO) | {stored['val_ppl_bound']:.2f} |" in proc.stdout
    assert not os.path.exists(os.path.join(out, "checkpoints"))
  finally:
    shutil.rmtree(out)  # the temporary folder the CLI made (under $TMPDIR, not tmp_path)
