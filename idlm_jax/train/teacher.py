"""The frozen teacher of a distillation run: load it sharded, or export one as a small asset.

`distill.teacher` is a workdir (or its checkpoints/ folder) of a teacher run or of
`python -m idlm_jax.convert`, an exported folder (params.npz + teacher.json, see `export`), or
a shipped name: "demo" (the small MDLM in idlm_jax/assets/demo_teacher, configs/demo_teacher.py)
or "synthetic" (the MDLM of the synthetic language in idlm_jax/assets/synthetic_teacher,
configs/synthetic_mdlm.py).
Exported folders are written by `python -m idlm_jax.export teacher <workdir> <out folder>`.
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

from idlm_jax import models
from idlm_jax.fields import ConfigError, Field
from idlm_jax.train import checkpoint, parallel

log = logging.getLogger("idlm_jax")

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "assets"
SHIPPED = {"demo": ASSETS / "demo_teacher", "synthetic": ASSETS / "synthetic_teacher"}
DEMO = SHIPPED["demo"]
FIELDS = {
    "distill.teacher": Field(
        "", "the frozen teacher of a distillation objective: a workdir (or its checkpoints/ "
        "folder) of a teacher run or of `python -m idlm_jax.convert`, an exported folder "
        '(params.npz + teacher.json), a shipped teacher ("demo": configs/demo_teacher.py\'s '
        'small MDLM; "synthetic": configs/synthetic_mdlm.py\'s) or "scratch:<config spec>" (train that teacher into <workdir>/teacher first). The student '
        "and the objective's other networks start as copies of it; config.model/diffusion/data "
        "must describe it (its algo, size and tokenizer)."),
    "distill.teacher_step": Field(-1, "checkpoint step to load (-1: the latest)."),
    "distill.teacher_ema": Field(True, "load the teacher's EMA weights (False: its raw params)."),
}
MODEL_FIELDS = ("name", "hidden_size", "n_blocks", "n_heads", "cond_dim", "mlp_ratio",
                "time_conditioning")


def resolve(spec: str) -> epath.Path:
  """The folder named by distill.teacher (a SHIPPED name = the asset); local or a URL."""
  path = checkpoint.as_path(SHIPPED.get(spec, spec))
  if not path.exists():
    raise FileNotFoundError(f"config.distill.teacher: {spec!r} does not exist"
                            + (f" (the shipped {spec} teacher is missing from the package)"
                               if spec in SHIPPED else ""))
  return path


def _check_meta(config, meta: dict, where) -> None:
  """The teacher's recorded model/diffusion/tokenizer must match the run's config."""
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
    raise ConfigError(f"config.distill.teacher: {where} does not match this config: "
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
  """The teacher's (EMA) params as a pure dict, sharded like the student's params.

  A teacher saved with another model.vocab_pad_multiple (or before padding existed) is
  restored at its own shapes and its vocabulary rows padded/cut to this model's.
  """
  d = config.distill
  path = resolve(d.teacher)
  shardings = parallel.param_shardings(abstract_params, mesh)
  target = nnx.to_pure_dict(abstract_params)
  place = lambda params: jax.tree.map(
      lambda x, t, s: jax.device_put(fit_vocab(x, t.shape, vocab_size), s), params, target,
      shardings)
  if (path / "params.npz").is_file():
    meta = json.loads((path / "teacher.json").read_text())
    _check_meta(config, meta, path)
    with (path / "params.npz").open("rb") as f:
      flat = dict(np.load(f))
    return place(_unflatten(flat, target, path, vocab_size))
  ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  ckpt = checkpoint.Checkpointer(ckpt_dir, every=1, keep=1, async_save=False, read_only=True)
  try:
    step = ckpt.latest_step() if d.teacher_step < 0 else d.teacher_step
    if step is None:
      raise FileNotFoundError(f"config.distill.teacher: no checkpoint in {ckpt_dir}")
    meta = ckpt.restore_meta(step)
    _check_meta(config, meta, ckpt_dir / str(step))
    stored_pad = (meta.get("config") or {}).get("model", {}).get("vocab_pad_multiple", 0)
    stored = _abstract_as_stored(config, vocab_size, stored_pad)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nnx.to_pure_dict(stored), parallel.param_shardings(stored, mesh))
    try:
      params = ckpt.restore_params(step, abstract, use_ema=d.teacher_ema)
    except ValueError as e:
      raise ValueError(f"teacher {ckpt_dir / str(step)}: its parameters do not fit this "
                       f"config.model ({e})") from e
    params = place(params)
  finally:
    ckpt.close()
  log.info("teacher: %s step %d (%s weights)", ckpt_dir, step, "EMA" if d.teacher_ema else "raw")
  return params


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
