"""Load a trained model's params sharded: the frozen teacher of a distillation run
(`distill.teacher`), or the model the eval / sample modes score without a training workdir
(`eval.model`).

Either field names a workdir (or its checkpoints/ folder) of a run or of
`python -m idlm_jax.convert`, an exported folder (params.npz + teacher.json, written by
`python -m idlm_jax.export teacher <workdir> <out folder>`), or a shipped name: "demo" (the
small MDLM in idlm_jax/assets/demo_teacher, configs/demo_teacher.py) or "synthetic" (the MDLM
of the synthetic language in idlm_jax/assets/synthetic_teacher, configs/synthetic_mdlm.py).
`eval.model` also takes "embedded" (the shipped GPT-2-architecture Gen PPL evaluator,
configs/ar_embedded.py) or any folder in that HF GPT-2 layout (config.json +
model.safetensors, `python -m idlm_jax.export evaluator`).
"""

import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from idlm_jax import decoding, models
from idlm_jax.fields import ConfigError, Field
from idlm_jax.models import gpt2
from idlm_jax.train import checkpoint, parallel

log = logging.getLogger("idlm_jax")

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "assets"
SHIPPED = {"demo": ASSETS / "demo_teacher", "synthetic": ASSETS / "synthetic_teacher",
           "synthetic_duo": ASSETS / "synthetic_duo_teacher"}
DEMO = SHIPPED["demo"]
# the Gen PPL evaluator shipped with evals/ (an HF GPT-2 folder; evals/genppl.py reads it too)
EVALUATOR = ASSETS.parent / "evals" / "assets" / "ar_embedded"
MODELS = {**SHIPPED, "embedded": EVALUATOR}  # the names eval.model accepts
MODEL_MODES = ("eval", "sample", "eval_samplers")  # the modes that read eval.model
FIELDS = {
    "distill.teacher": Field(
        "", "the frozen teacher of a distillation objective: a workdir (or its checkpoints/ "
        "folder) of a teacher run or of `python -m idlm_jax.convert`, an exported folder "
        '(params.npz + teacher.json), a shipped teacher ("demo": configs/demo_teacher.py\'s '
        'small MDLM; "synthetic": configs/synthetic_mdlm.py\'s; "synthetic_duo": configs/synthetic_duo.py\'s, '
        '2000 steps) or "scratch:<config spec>" (train that teacher into <workdir>/teacher first). The student '
        "and the objective's other networks start as copies of it; config.model/diffusion/data "
        "must describe it (its algo, size and tokenizer)."),
    "distill.teacher_step": Field(-1, "checkpoint step to load (-1: the latest)."),
    "distill.teacher_ema": Field(True, "load the teacher's EMA weights (False: its raw params)."),
    "eval.model": Field(
        "", 'modes eval, sample and eval_samplers: score this model instead of the workdir\'s '
        'checkpoint ("" = the workdir\'s): a shipped name ("demo", "synthetic", "synthetic_duo", or "embedded" '
        "for the shipped Gen PPL evaluator, with configs/ar_embedded.py), an exported folder "
        "(params.npz + teacher.json), an HF GPT-2 folder (config.json + model.safetensors) or a "
        "workdir of a run or of `python -m idlm_jax.convert` (its EMA weights, read only). "
        "--workdir then only receives the results (no lock, no checkpoints; a temporary folder "
        "when omitted). config.model/data must describe the model."),
}
MODEL_FIELDS = ("name", "hidden_size", "n_blocks", "n_heads", "cond_dim", "mlp_ratio",
                "time_conditioning")


def resolve(spec: str, field: str = "distill.teacher") -> epath.Path:
  """The folder named by `field` (distill.teacher: a SHIPPED name; eval.model: also
  "embedded") = the asset, else a local path or a URL."""
  shipped = MODELS if field == "eval.model" else SHIPPED
  path = checkpoint.as_path(shipped.get(spec, spec))
  if not path.exists():
    hint = f" (the shipped {spec!r} model is missing from the package)" if spec in shipped \
        else f" (shipped names: {', '.join(map(repr, shipped))})"
    raise FileNotFoundError(f"config.{field}: {spec!r} does not exist{hint}")
  return path


def validate(config) -> None:
  """eval.model is read by the modes that score a model, and only its params are loaded: a
  sampler that also reads a trained auxiliary network (RGAS) needs the run's workdir."""
  spec = config.eval.model
  if not spec:
    return
  if config.mode not in MODEL_MODES:
    raise ConfigError(f"config.eval.model: read by mode {' / '.join(MODEL_MODES)}, not "
                      f"{config.mode!r} (training starts from distill.teacher or from scratch)")
  names = [config.sample.sampler]
  if config.mode == "eval_samplers":
    names += [n.strip() for n in config.eval.samplers.split(",") if n.strip()]
  for name in names:
    if name in decoding.names() and decoding.get(name).aux is not None:
      raise ConfigError(f"config.eval.model: sampler {name!r} reads the "
                        f"{decoding.get(name).aux} network of a training run, which "
                        f"eval.model does not load; give that run's --workdir instead")


def _check_meta(config, meta: dict, where, field: str = "distill.teacher") -> None:
  """The stored model's recorded model/diffusion/tokenizer must match the run's config."""
  cfg = meta.get("config") or {}
  diffs = [f"model.{k}: teacher {cfg['model'][k]!r} vs config {config.model[k]!r}"
           for k in MODEL_FIELDS if k in cfg.get("model", {}) and cfg["model"][k] != config.model[k]]
  if "diffusion" in cfg and cfg["diffusion"].get("algo", config.diffusion.algo) != \
      config.diffusion.algo:
    diffs.append(f"diffusion.algo: teacher {cfg['diffusion']['algo']!r} vs config "
                 f"{config.diffusion.algo!r}")
  if config.data.source == "synthetic_hmm":  # the same language, or every score is wrong
    theirs = (cfg.get("data") or {}).get("synthetic") or {}
    for k, v in theirs.items():
      if k in ("seed", "order", "num_states", "vocab_size", "branching", "concentration") \
          and v != config.data.synthetic.get(k, v):
        diffs.append(f"data.synthetic.{k}: teacher {v!r} vs config "
                     f"{config.data.synthetic[k]!r}")
  tok = meta.get("tokenizer")
  if tok and tok != config.data.tokenizer:  # same vocabulary size is checked by the shapes
    log.warning("teacher %s was trained with tokenizer %r, this run uses %r: make sure they "
                "are the same vocabulary", where, tok, config.data.tokenizer)
  if diffs:
    raise ConfigError(f"config.{field}: {where} does not match this config: "
                      + "; ".join(diffs))


def fit_vocab(x, shape, vocab_size: int, name: str = ""):
  """`x` zero-padded or cut along every axis where it differs from `shape`; only vocabulary
  axes (both sizes >= the true vocabulary, model.vocab_pad_multiple rows) may differ."""
  if tuple(x.shape) == tuple(shape):
    return x
  if len(x.shape) != len(shape) or any(a != b and min(a, b) < vocab_size
                                       for a, b in zip(x.shape, shape)):
    raise ValueError(f"teacher {name}: shape {tuple(x.shape)}, the model needs {tuple(shape)} "
                     "(config.model differs from the teacher's)")
  x = x[tuple(slice(0, b) for b in shape)]
  return jnp.pad(x, [(0, b - a) for a, b in zip(x.shape, shape)])


def _abstract_as_stored(config, vocab_size: int, pad_multiple: int):
  """Abstract params of config.model with the teacher's model.vocab_pad_multiple."""
  m = ml_collections.ConfigDict(config.model.to_dict())
  m.vocab_pad_multiple = pad_multiple
  model = nnx.eval_shape(lambda: models.build_model(m, vocab_size, nnx.Rngs(params=0)))
  return nnx.split(model, nnx.Param)[1]


def load(config, abstract_params: nnx.State, mesh, vocab_size: int):
  """The teacher's (EMA) params (distill.teacher) as a pure dict, sharded like the student's
  params (see `load_params`)."""
  d = config.distill
  params, _ = load_params(config, d.teacher, abstract_params, mesh, vocab_size,
                          step=d.teacher_step, use_ema=d.teacher_ema)
  return params


def load_params(config, spec: str, abstract_params: nnx.State, mesh, vocab_size: int, *,
                step: int = -1, use_ema: bool = True, field: str = "distill.teacher"):
  """(params, step) of the model `spec` names (`resolve`) as a pure dict of config.model's
  structure, sharded like `abstract_params`; the folder's recorded config must match.

  A model saved with another model.vocab_pad_multiple (or before padding existed) is
  restored at its own shapes and its vocabulary rows padded/cut to this model's. step: the
  checkpoint step to read (-1: the latest); use_ema: its EMA weights (else the raw params).
  """
  path = resolve(spec, field)
  shardings = parallel.param_shardings(abstract_params, mesh)
  target = nnx.to_pure_dict(abstract_params)
  place = lambda params: jax.tree.map(
      lambda x, t, s: jax.device_put(fit_vocab(x, t.shape, vocab_size), s), params, target,
      shardings)
  if (path / "params.npz").is_file():
    meta = json.loads((path / "teacher.json").read_text())
    _check_meta(config, meta, path, field)
    with (path / "params.npz").open("rb") as f:
      flat = dict(np.load(f))
    return place(_unflatten(flat, target, path, vocab_size)), int(meta.get("step", 0))
  if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
    return place(_gpt2_params(config, path, target, vocab_size, field)), _card_step(path)
  ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  ckpt = checkpoint.Checkpointer(ckpt_dir, every=1, keep=1, async_save=False, read_only=True)
  try:
    step = ckpt.latest_step() if step < 0 else step
    if step is None:
      raise FileNotFoundError(f"config.{field}: no checkpoint in {ckpt_dir}")
    meta = ckpt.restore_meta(step)
    _check_meta(config, meta, ckpt_dir / str(step), field)
    stored_pad = (meta.get("config") or {}).get("model", {}).get("vocab_pad_multiple", 0)
    stored = _abstract_as_stored(config, vocab_size, stored_pad)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nnx.to_pure_dict(stored), parallel.param_shardings(stored, mesh))
    try:
      params = ckpt.restore_params(step, abstract, use_ema=use_ema)
    except ValueError as e:
      raise ValueError(f"{field} {ckpt_dir / str(step)}: its parameters do not fit this "
                       f"config.model ({e})") from e
    params = place(params)
  finally:
    ckpt.close()
  log.info("%s: %s step %d (%s weights)", field, ckpt_dir, step, "EMA" if use_ema else "raw")
  return params, int(step)


# HF GPT-2 config.json key -> this config's field
GPT2_FIELDS = {"n_embd": "model.hidden_size", "n_layer": "model.n_blocks",
               "n_head": "model.n_heads", "n_positions": "model.n_positions"}


def _card_step(folder) -> int:
  """The training step an evaluator folder's card.json records (0 if none)."""
  card = folder / "card.json"
  return int(json.loads(card.read_text()).get("step", 0)) if card.is_file() else 0


def _gpt2_params(config, folder, target, vocab_size: int, field: str) -> dict:
  """The params of an HF-layout GPT-2 folder (config.json + model.safetensors: the shipped
  evaluator, `python -m idlm_jax.export evaluator`) in the structure of `target` (a "gpt2"
  model); ConfigError naming each config field that differs from the folder's."""
  hf = json.loads((folder / "config.json").read_text())
  if config.model.name != "gpt2":
    raise ConfigError(f"config.{field}: {folder} is a GPT-2 causal LM, this config builds "
                      f"model.name={config.model.name!r} (use configs/ar_embedded.py)")
  ours = {name: config.model[name.split(".")[1]] for name in GPT2_FIELDS.values()}
  diffs = [f"{name}: model {hf[key]!r} vs config {ours[name]!r}"
           for key, name in GPT2_FIELDS.items() if key in hf and hf[key] != ours[name]]
  if hf.get("vocab_size", vocab_size) != vocab_size:
    diffs.append(f"vocabulary: model {hf['vocab_size']} vs config {vocab_size} "
                 f"(data.tokenizer={config.data.tokenizer!r})")
  card = folder / "card.json"
  tok = json.loads(card.read_text()).get("tokenizer") if card.is_file() else None
  if tok and tok != config.data.tokenizer:
    diffs.append(f"data.tokenizer: model {tok!r} vs config {config.data.tokenizer!r}")
  if diffs:
    raise ConfigError(f"config.{field}: {folder} does not match this config: "
                      + "; ".join(diffs))
  sd = {k.removeprefix("transformer."): v
        for k, v in gpt2.read_safetensors(folder / "model.safetensors").items()}

  def build(tree, path=()):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        out[k] = build(v, path + (k,))
        continue
      key = gpt2.hf_key(path + (k,))
      if key not in sd or tuple(sd[key].shape) != tuple(v.shape):
        got = "missing" if key not in sd else f"shape {tuple(sd[key].shape)}"
        raise ValueError(f"{folder}: {key} is {got}, the model needs {tuple(v.shape)}")
      out[k] = np.asarray(sd[key], np.float32)
    return out

  log.info("%s: %s (GPT-2, step %d)", field, folder, _card_step(folder))
  return build(target)


def flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    out.update(flatten(v, name + "/") if isinstance(v, dict) else {name: np.asarray(v)})
  return out


def _unflatten(flat: dict, target, where, vocab_size: int):
  """`flat` ({"a/b/c": array}) in the structure of `target`, with every shape checked."""
  names = flatten(jax.tree.map(lambda x: np.zeros(0), target))
  missing, extra = sorted(set(names) - set(flat)), sorted(set(flat) - set(names))
  if missing or extra:
    raise ValueError(f"teacher {where}: parameter names differ from the model "
                     f"(missing {missing[:5]}, unexpected {extra[:5]})")
  want = flatten(jax.tree.map(lambda x: np.zeros(x.shape, np.int8), target))

  def build(tree, prefix=""):
    out = {}
    for k, v in tree.items():
      name = f"{prefix}{k}"
      if isinstance(v, dict):
        out[k] = build(v, name + "/")
      else:
        out[k] = fit_vocab(flat[name].astype(np.float32), want[name].shape, vocab_size,
                           f"{where}: {name}")
    return out

  return build(target)
