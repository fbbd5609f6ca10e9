"""CLI: convert a published PyTorch teacher or distilled student into an idlm_jax checkpoint.

  python -m idlm_jax.convert --config=configs/mdlm_owt.py \\
      --source=/path/to/mdlm.ckpt | /path/to/hf_folder | kuleshov-group/mdlm-owt[@revision] \\
      --workdir=/out [--weights=ema|state_dict] [--prefix=backbone.] [--n_heads=N]
      [--config.x=y ...]

writes <workdir>/checkpoints/0/ (orbax, through train/checkpoint.py): step 0, params =
ema_params = the converted weights, a fresh optimizer state, and meta["converted_from"]
recording the source, its sha256 (files), format, key prefix, ignored keys and which weights
were taken (EMA for Lightning files). Then

  python -m idlm_jax.main --config=configs/mdlm_owt.py --workdir=/out --config.mode=eval

evaluates (or samples, or fine-tunes) it directly; the data iterator starts from scratch.
Readers and key handling: idlm_jax/models/readers.py.

The authors' distilled students come with a second trained network: IDLM's fake model
(`fake_model.*`, EMA `ema_fake`) and DiDi-Instruct's discriminator (`discriminator.*`, or
discriminator.safetensors beside the student_ema's model.safetensors). Converted with a config
of the objective that trains it (objective 'idlm' / 'didi', AUX_BY_OBJECTIVE), it becomes
TrainState.aux['fake'] / aux['disc'] of the step-0 checkpoint (written through
train/state.create_state, so that the objective resumes from it and RGAS reads the
discriminator); with another config it is listed among the ignored keys. docs/converting.md.

A checkpoint that cannot be converted (unreadable or crafted file, wrong shapes, config
mismatch, unverifiable head count) ends the CLI with one line `conversion failed: ...` on
stderr and exit status 1, no traceback. The number of attention heads is verified from the
file (`rotary_emb.inv_freq`, or config.json); a file with neither converts only with
--n_heads=N (equal to config.model.n_heads) stating it explicitly. Entries of a Lightning file
that are not converted (hyper_parameters, callbacks, optimizer states, ...) are listed in the
output and in meta["converted_from"]["ignored_objects"]; pickled objects among them are inert
records, never executed.
"""

import json
import os
import pathlib
import time
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import models  # noqa: E402
from idlm_jax.data import tokenizers  # noqa: E402
from idlm_jax.models import discriminator as disc_lib  # noqa: E402
from idlm_jax.models import readers as conv  # noqa: E402
from idlm_jax.models.readers import ConversionError  # noqa: E402
from idlm_jax.objectives import state as state_lib  # noqa: E402
from idlm_jax.train import checkpoint, loop, parallel  # noqa: E402
from idlm_jax.train import state as train_state  # noqa: E402

FLAGS = flags.FLAGS
# The aux networks a converted checkpoint can carry: objective -> the net its trainer keeps in
# TrainState.aux (IDLM's fake model, a DIT; DiDi-Instruct's discriminator).
AUX_BY_OBJECTIVE = {"idlm": "fake", "didi": "disc"}


def convert_weights(config, source: str, *, weights: str = "ema", prefix: Optional[str] = None,
                    cache_dir: Optional[str] = None, n_heads: Optional[int] = None):
  """(params as a pure dict of float32 NumPy arrays, info dict) for `config`'s model.

  `n_heads` states the checkpoint's number of attention heads when the file cannot tell
  (no rotary_emb.inv_freq buffer, no config.json); it must equal config.model.n_heads.
  Every problem is a ConversionError. (`convert_all` also returns the aux networks.)
  """
  params, _, info = convert_all(config, source, weights=weights, prefix=prefix,
                                cache_dir=cache_dir, n_heads=n_heads)
  return params, info


def convert_all(config, source: str, *, weights: str = "ema", prefix: Optional[str] = None,
                cache_dir: Optional[str] = None, n_heads: Optional[int] = None):
  """(params, {aux net name: params}, info): the model, and the other trained network the
  config's objective keeps (AUX_BY_OBJECTIVE) when the source holds it: IDLM's fake model
  (`fake_model.*`) for objective 'idlm', DiDi-Instruct's discriminator (`discriminator.*` or
  discriminator.safetensors) for 'didi'. A source network the objective does not train is
  listed under info['ignored_keys'] with how to keep it."""
  if config.model.name != "dit":
    raise conv.ConversionError(f"the published teachers are DDiTs: conversion needs "
                               f"model.name='dit', got config.model.name={config.model.name!r}")
  hub = None
  path = pathlib.Path(source).expanduser()
  if conv.is_hub_name(source):
    hub = source
    path = conv.download(source, cache_dir)
  loaded = conv.load_source(path, weights, prefix)
  sd, prefix, ignored = conv.extract_backbone(loaded.state_dict, prefix)
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  arch = conv.infer_architecture(sd, loaded.hf_config)
  conv.check_config(arch, config.model, config.data.tokenizer, tokenizer.model_vocab_size)
  heads_from = conv.check_head_count(sd, loaded.hf_config, config.model.n_heads, n_heads)
  abstract = nnx.eval_shape(lambda: models.build_model(
      config.model, tokenizer.model_vocab_size, nnx.Rngs(params=jax.random.key(0))))
  abstract_params = nnx.state(abstract, nnx.Param)
  if loaded.param_order:
    conv.check_parameter_order(loaded.param_order, prefix,
                               list(models.torch_param_names(abstract_params)))
  head_dim = config.model.hidden_size // config.model.n_heads
  loaded.notes += conv.check_half_precision_buffer(sd, head_dim)
  state = models.from_torch_state_dict(sd, abstract_params, head_dim=head_dim)
  params = nnx.to_pure_dict(state)
  aux, aux_info = {}, {}
  wanted = AUX_BY_OBJECTIVE.get(config.objective)
  for name, aux_sd in conv.extract_aux(loaded.state_dict, prefix).items():
    aux_prefix, what = next((p, w) for p, (n, w) in conv.AUX_NETS.items() if n == name)
    if name != wanted:
      objective = next(o for o, n in AUX_BY_OBJECTIVE.items() if n == name)
      ignored.setdefault(f"{what}: kept only by a conversion with an objective='{objective}' "
                         f"config", []).extend(aux_prefix + k for k in aux_sd)
      continue
    loaded.notes += conv.check_half_precision_buffer(aux_sd, head_dim)
    if name == "disc":
      disc_abstract = disc_lib.abstract(config.model, tokenizer.model_vocab_size)[1]
      aux[name] = disc_lib.from_torch_state_dict(aux_sd, disc_abstract, head_dim=head_dim)
    else:
      aux[name] = nnx.to_pure_dict(models.from_torch_state_dict(aux_sd, abstract_params,
                                                                head_dim=head_dim))
    aux_info[name] = {"what": what, "prefix": aux_prefix,
                      "num_params": models.count_params(aux[name])}
  if wanted and wanted not in aux:
    start = {"fake": "a copy of the converted model",
             "disc": "the converted model's trunk with a fresh head"}[wanted]
    loaded.notes.append(f"objective '{config.objective}' trains a '{wanted}' network that the "
                        f"source does not hold: it starts as {start}, as the objective's "
                        f"trainer initialises it from its initial params")
  info = {
      "source": source,
      "resolved_path": str(path.resolve()),
      "hub_repo": hub,
      "format": loaded.format,
      "weights": loaded.weights,
      "prefix": prefix,
      "files": {str(f.relative_to(path) if path.is_dir() else f.name): conv.sha256(f)
                for f in loaded.files},
      "ignored_keys": ignored,
      "ignored_objects": loaded.ignored_objects,
      "architecture": arch,
      "n_heads_verified_by": heads_from,
      "notes": loaded.notes,
      "num_params": models.count_params(abstract_params),
      "aux_nets": aux_info,
  }
  if not path.is_dir():
    info["sha256"] = info["files"][path.name]
  return params, aux, info


def write_checkpoint(config, params, workdir, info: dict,
                     aux: Optional[dict] = None) -> pathlib.Path:
  """Save step 0 into <workdir>/checkpoints: the train state the config's objective starts
  from (`train/state.create_state`: fresh optimizers, EMA = params), holding `params` as the
  model and each `aux` network's params (and EMA) in TrainState.aux, so that the objective's
  trainer resumes from it and every eval mode restores it."""
  workdir = pathlib.Path(workdir).expanduser()
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", every=config.ckpt.every,
                                 keep=config.ckpt.keep, async_save=False)
  try:
    if ckpt.latest_step() is not None:
      raise FileExistsError(f"{ckpt.directory} already holds checkpoints (latest step "
                            f"{ckpt.latest_step()}): convert into an empty workdir")
    state = initial_state(config, params, aux or {})
    meta = {"saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), "step": 0,
            "config": json.loads(config.to_json_best_effort()),
            "tokenizer": config.data.tokenizer, "converted_from": info}
    ckpt.save(0, state, {}, meta, force=True)
    ckpt.wait()
  finally:
    ckpt.close()
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "conversion.json").write_text(json.dumps(info, indent=2) + "\n")
  return ckpt.directory / "0"


def initial_state(config, params, aux: dict):
  """The objective's step-0 TrainState (as loop.build creates it) starting at `params`, with
  the converted aux networks in place of the ones the objective would initialise."""
  tokenizer = tokenizers.get_tokenizer(config.data.tokenizer)
  vocab = tokenizer.model_vocab_size
  mesh = parallel.make_mesh(config.parallel)
  tx = state_lib.make_optimizer(config.optim, config.train.steps)
  build_model = lambda rngs: models.build_model(config.model, vocab, rngs)
  graphdef, _ = train_state.abstract_model(build_model, config.seed)
  objective, _ = loop.make_objective(config, graphdef, tx, tokenizer)
  unknown = sorted(set(aux) - set(objective.aux_txs))
  if unknown:
    raise ConversionError(f"objective '{config.objective}' trains no {unknown} network")
  _, state, shardings = train_state.create_state(
      build_model, tx, config.seed, mesh, init_params=jax.tree.map(jnp.asarray, params),
      aux_txs=objective.aux_txs)
  nets = dict(state.aux)
  for name, p in aux.items():  # optimizer moments start at zero whatever the params
    p = jax.device_put(jax.tree.map(jnp.asarray, p), shardings.aux[name].params)
    nets[name] = nets[name].replace(params=p, ema_params=jax.tree.map(jnp.copy, p))
  return state.replace(aux=nets)


def convert_to_workdir(config, source: str, workdir, *, weights: str = "ema",
                       prefix: Optional[str] = None, cache_dir: Optional[str] = None,
                       n_heads: Optional[int] = None) -> dict:
  """Convert `source` for `config`'s model and write it as the workdir's step-0 checkpoint.

  The config is validated as for a run that loads no teacher (a distillation config in mode
  'train' needs distill.teacher to train, not to be converted into)."""
  checked = config
  if config.mode == "train":
    checked = ml_collections.ConfigDict(config.to_dict())
    checked.mode = "sample"
  config_lib.validate(checked)
  params, aux, info = convert_all(config, source, weights=weights, prefix=prefix,
                                  cache_dir=cache_dir, n_heads=n_heads)
  info["checkpoint"] = str(write_checkpoint(config, params, workdir, info, aux))
  return info


def printable(text: str) -> str:
  """`text` with control characters escaped (key names come from untrusted files)."""
  return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(error: BaseException) -> str:
  """An error message on one line: its first line, then the others joined by '; '."""
  lines = [printable(line.strip()) for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    info = convert_to_workdir(FLAGS.config, FLAGS.source, FLAGS.workdir, weights=FLAGS.weights,
                              prefix=FLAGS.prefix, cache_dir=FLAGS.cache_dir,
                              n_heads=FLAGS.n_heads)
  except (ConversionError, FileExistsError) as e:
    raise SystemExit(f"conversion failed: {one_line(e)}") from None
  for line in report_lines(info, FLAGS.config.model.n_heads, FLAGS.workdir):
    print(printable(line))


def report_lines(info: dict, n_heads: int, workdir) -> list[str]:
  """What the CLI prints after a conversion: source, ignored keys and objects, notes."""
  ignored = sum(len(v) for v in info["ignored_keys"].values())
  lines = [f"converted {info['source']} ({info['format']}, {info['weights']} weights, prefix "
           f"{info['prefix']!r}, {info['num_params']:,} parameters, {ignored} keys ignored) -> "
           f"{info['checkpoint']}"]
  for reason, keys in info["ignored_keys"].items():
    lines.append(f"  ignored {len(keys)} keys ({reason}): {', '.join(keys[:3])}"
                 f"{', ...' if len(keys) > 3 else ''}")
  if info["ignored_objects"]:
    lines.append(f"  not converted: {len(info['ignored_objects'])} other entries of the file "
                 f"(pickled objects among them are inert records, never executed):")
    lines += [f"    {name}: {what}" for name, what in info["ignored_objects"].items()]
  for name, net in info.get("aux_nets", {}).items():
    lines.append(f"  aux network '{name}': {net['what']} ('{net['prefix']}', "
                 f"{net['num_params']:,} parameters) -> TrainState.aux['{name}']")
  lines.append(f"  number of heads ({n_heads}) verified by: {info['n_heads_verified_by']}")
  lines += [f"  {note}" for note in info["notes"]]
  lines.append(f"run: python -m idlm_jax.main --config=<the same config> --workdir={workdir} "
               f"--config.mode=eval|sample|eval_samplers")
  return lines


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mdlm_owt.py",
                                  lock_config=True)
  flags.DEFINE_string("source", None, "Lightning .ckpt, HF model folder, .safetensors/.bin "
                      "file, or hub name owner/name[@revision].")
  flags.DEFINE_string("workdir", None, "Output workdir (must hold no checkpoints yet).")
  flags.DEFINE_enum("weights", "ema", ["ema", "state_dict"], "Lightning files: the EMA "
                    "shadow params (default, what eval uses) or the raw state_dict weights.")
  flags.DEFINE_string("prefix", None, "Key prefix of the DDiT (default: detected, e.g. "
                      "'backbone.', 'backbone.backbone.' or '').")
  flags.DEFINE_string("cache_dir", None, "huggingface_hub cache folder for hub names.")
  flags.DEFINE_integer("n_heads", None, "The checkpoint's number of attention heads, stated "
                       "explicitly: required when the file cannot tell (no rotary_emb.inv_freq "
                       "buffer, no config.json); must equal --config.model.n_heads.")
  flags.mark_flags_as_required(["config", "source", "workdir"])
  app.run(main)
