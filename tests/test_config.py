"""Configs: every shipped config and variant validates; bad input fails naming the field."""

import pathlib

import pytest

from idlm_jax import config as config_lib
from idlm_jax import objectives

CONFIGS = sorted(p.name for p in pathlib.Path("configs").glob("*.py")
                 if p.name not in ("__init__.py", "base.py"))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("variant", ["", ":smoke", ":tiny"])
def test_shipped_configs_validate(name, variant):
  try:
    config_lib.load_config(f"configs/{name}{variant}")
  except config_lib.ConfigError as e:  # distillation configs need their teacher's workdir
    assert "config.distill.teacher" in str(e)
    cfg = config_lib.load_config(f"configs/{name}{variant}", ["distill.teacher='/a/teacher'"])
    assert objectives.get(cfg.objective).teacher


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1.0", r"config\.optim\.lrr: unknown field"),
    ("nosuch.field=1", r"config\.nosuch\.field: unknown field"),
    ("train.steps='many'", r"config\.train\.steps"),
    ("optim.lr=-1.0", r"config\.optim\.lr: must be positive"),
    ("sample.precision='float16'", r"config\.sample\.precision: 'float16' is not one of"),
    ("model.n_heads=5", r"config\.model\.hidden_size: .* heads"),
    ("parallel.ici_mesh=(1, -1, -1)", r"config\.parallel\.ici_mesh"),
    ("data.source='wikipedia'", r"config\.data\.source"),
])
def test_bad_overrides_fail_naming_the_field(override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load_config("configs/demo.py", [override])


def test_synthetic_chain_needs_its_state_count():
  with pytest.raises(config_lib.ConfigError, match=r"num_states: an order-1 chain over 24 "
                     r"symbols has 24 states, got 100"):
    config_lib.load_config("configs/synthetic_mdlm.py", ["data.synthetic.num_states=100"])


def test_unknown_field_added_by_a_config_file(tmp_path):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "bad.py").write_text(
      "from configs import base\n"
      "def get_config(arg=None):\n"
      "  c = base.get_config()\n"
      "  c.model.unlock()\n"
      "  c.model.n_layers = 3\n"
      "  return c\n")
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.n_layers: unknown field"):
    config_lib.load_config(str(tmp_path / "configs" / "bad.py"))


def test_unknown_variant_and_missing_file():
  with pytest.raises(ValueError, match="unknown config variant 'huge'"):
    config_lib.load_config("configs/demo.py:huge")
  with pytest.raises(config_lib.ConfigError, match="config file not found"):
    config_lib.load_config("configs/nope.py")


def _cli(*args, env=None):
  import os
  import subprocess
  import sys
  return subprocess.run([sys.executable, "-m", "idlm_jax.main", *args], capture_output=True,
                        text=True, timeout=180, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cli_user_errors_are_one_line_and_help_lists_the_configs(tmp_path):
  work = f"--workdir={tmp_path}"
  cases = [
      (["--config=configs/demo.py", work, "--config.optim.lrr=1"],
       "error: config.optim.lrr: unknown field (did you mean 'optim.lr'?)"),
      (["--config=configs/demo.py", work, "--config.optim.lr=-1"],
       "error: config.optim.lr: must be positive, got -1"),
      (["--config=configs/demo.py:huge", work], "error: unknown config variant 'huge'"),
      (["--config=configs/nope.py", work], "error: config file not found"),
      (["--config=configs/demo.py"], "error: --workdir is required (or score a shipped"),
      ([work], "error: --config is required"),
      # a paper config scores with gpt2-large: offline, it stops before any work
      (["--config=configs/mdlm_owt.py", work, "--config.mode=eval_samplers"],
       "error: config.eval.evaluator='gpt2-large': "),
  ]
  for args, message in cases:
    out = _cli(*args, env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, (args, out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), (args, out.stderr[-2000:])
  verbose = _cli("--config=configs/demo.py", work, "--config.optim.lr=-1", "--verbose")
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr
  help_ = _cli("--help")
  assert help_.returncode == 0
  assert "configs/demo.py  [scratch, smoke, tiny]" in help_.stdout
  assert "IDLM distillation of the shipped demo teacher" in help_.stdout
