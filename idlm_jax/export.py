"""Export trained checkpoints as the small assets the library ships or loads.

python -m idlm_jax.export teacher <teacher workdir> <out folder> [--raw]
    <out>/params.npz (EMA params, float32) + teacher.json (its config): a folder
    `distill.teacher` accepts (how idlm_jax/assets/demo_teacher was made).
python -m idlm_jax.export evaluator --config=configs/ar_embedded.py --workdir=DIR [--out=...]
    a trained "ar" checkpoint as an HF-layout GPT-2 evaluator folder (config.json,
    model.safetensors, card.json with its validation NLL) for eval.evaluator.
"""

import argparse
import json
import pathlib
import shlex
import sys

import numpy as np
from etils import epath

from idlm_jax import config as config_lib
from idlm_jax.evals import genppl, modes
from idlm_jax.models import gpt2, readers
from idlm_jax.train import checkpoint, loop, parallel, teacher


def _flat_cfg(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flat_cfg(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def saved_config(workdir):
  """The config a run saved in <workdir>/config.json, on today's defaults (fields the run did
  not know keep their defaults; fields no longer known are dropped)."""
  saved = json.loads((checkpoint.as_path(workdir) / "config.json").read_text())
  cfg = config_lib.defaults()
  known = _flat_cfg(cfg.to_dict())
  cfg.update_from_flattened_dict({k: tuple(v) if isinstance(v, list) else v
                                  for k, v in _flat_cfg(saved).items() if k in known})
  return cfg


def export_teacher(workdir, out, use_ema: bool = True) -> epath.Path:
  """Write <out>/params.npz (the EMA params, float32) and <out>/teacher.json (its config)."""
  workdir, out = checkpoint.as_path(workdir), checkpoint.as_path(out)
  cfg = saved_config(workdir)
  cfg.mode = "sample"  # the teacher's own run, rebuilt without data
  run = loop.build(cfg, workdir)
  step = loop.restore_latest(run)
  params = run.state.ema_params if use_ema else run.state.params
  out.mkdir(parents=True, exist_ok=True)
  with (out / "params.npz").open("wb") as f:
    np.savez(f, **teacher.flatten(parallel.to_host(params)))
  meta = {"step": step, "source": str(workdir), "tokenizer": cfg.data.tokenizer,
          "config": json.loads(cfg.to_json_best_effort()), "ema": use_ema}
  (out / "teacher.json").write_text(json.dumps(meta, indent=2) + "\n")
  run.ckpt.close()
  return out


def export_evaluator(config, workdir: str, out: str, command: str) -> dict:
  """Write the (EMA) params of a trained "ar" run as an HF-layout evaluator folder."""
  run = loop.build(config, workdir, datasets=True)
  step = loop.restore_latest(run)
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}")
  params = parallel.to_host(loop.eval_params(run))  # also when sharded over hosts
  val = modes.validate_now(run, step)
  flat = {}

  def walk(tree, path):
    if isinstance(tree, dict):
      for k, v in tree.items():
        walk(v, path + (k,))
    else:
      flat[gpt2.hf_key(path)] = np.asarray(tree, np.float32)

  walk(params, ())
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  readers.write_safetensors(out / "model.safetensors", flat)
  m = config.model
  (out / "config.json").write_text(json.dumps({
      "model_type": "gpt2", "vocab_size": int(run.tokenizer.model_vocab_size),
      "n_positions": int(m.n_positions), "n_embd": int(m.hidden_size),
      "n_layer": int(m.n_blocks), "n_head": int(m.n_heads)}, indent=2) + "\n")
  card = {"tokenizer": config.data.tokenizer, "trained_by": "configs/ar_embedded.py",
          "command": command, "step": int(step), "val_nll": val["nelbo"],
          "val_ppl": val["ppl"], "val_tokens": val["tokens"],
          "data": f"embedded corpus ({config.data.embedded_corpora}), seq_len "
                  f"{config.data.seq_len}, validation = hash split of passages",
          "use_ema": bool(config.eval.use_ema)}
  (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
  run.close()
  return card


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="what", required=True)
  t = sub.add_parser("teacher", help="a teacher run as a params.npz + teacher.json folder")
  t.add_argument("workdir")
  t.add_argument("out")
  t.add_argument("--raw", action="store_true", help="the raw params instead of the EMA")
  e = sub.add_parser("evaluator", help='an "ar" run as a GPT-2 evaluator folder')
  e.add_argument("--config", default="configs/ar_embedded.py")
  e.add_argument("--workdir", required=True)
  e.add_argument("--out", default=str(genppl.EMBEDDED))
  e.add_argument("--train_command", default="")
  a = p.parse_args(argv)
  if a.what == "teacher":
    print(export_teacher(a.workdir, a.out, use_ema=not a.raw))
    return
  config = config_lib.load_config(a.config)
  cmd = a.train_command or f"python -m idlm_jax.main --config={a.config} --workdir={a.workdir}"
  card = export_evaluator(config, a.workdir, a.out, cmd)
  card["export_command"] = "python -m idlm_jax.export " + shlex.join(sys.argv[1:])
  (pathlib.Path(a.out) / "card.json").write_text(json.dumps(card, indent=2) + "\n")
  print(json.dumps(card, indent=2))


if __name__ == "__main__":
  main()
