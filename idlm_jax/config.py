"""Configs: assembled from the fields every module declares, loaded, overridden, validated.

Every field is declared once, next to the code that reads it, as `FIELDS = {path: Field(...)}`
(idlm_jax/fields.py), and objectives and samplers add theirs when they register. `defaults()`
builds the whole ConfigDict from those declarations (configs/base.py starts from it); an
unknown key, a wrong type or an invalid value raises `ConfigError` naming the field, before
any work starts.
"""

import ast
import difflib
import importlib.util
import pathlib
import sys

import ml_collections

from idlm_jax import decoding, fields, models, objectives
from idlm_jax.data import loader, pipeline, reasoning, synthetic
from idlm_jax.diffusion import processes
from idlm_jax.evals import (distill_report, evaluate, modes, monitor, prompted_eval,
                            reasoning_eval)
from idlm_jax.fields import ConfigError, Field
from idlm_jax.objectives import accumulate, state as objective_state
from idlm_jax.train import loop, parallel, profiler, teacher

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

FIELDS = {
    "seed": Field(0, "root PRNG seed: parameters, dropout, diffusion noise, sampling."),
    "mode": Field("train", 'what main.py does: "train" (train, validate, sample), "eval" '
                  '(validation NELBO of the latest checkpoint), "sample" (write samples from the '
                  'latest checkpoint), "eval_samplers" (sample-quality table / distillation '
                  'report), "eval_reasoning" (exact-match accuracy, NFE and tokens/s of block '
                  "decoding on the reasoning benchmark, evals/reasoning_eval.py), "
                  '"eval_prompted" (the same for a LLaDA/Dream checkpoint folder on a '
                  "GSM8K-format JSONL, evals/prompted_eval.py).",
                  choices=tuple(modes.MODES)),
    "objective": Field("diffusion", 'which objective trains: "diffusion" (teacher pretraining), '
                       '"ar" (the causal Gen PPL evaluator), "idlm" (inverse distillation), '
                       '"didi" (DiDi-Instruct), the baselines "sdtt" (MDLM teachers) and "dcd" '
                       '(Duo teachers), "r2_finetune"; any objective registered in '
                       "idlm_jax/objectives.", choices=objectives.names),
}

# sections in the order the ConfigDict (and config.json) lists them; others follow
SECTIONS = ("seed", "mode", "objective", "data", "model", "diffusion", "distill", "optim",
            "train", "parallel", "ckpt", "eval", "sample", "log")

# modules that declare fields (FIELDS) and cross-field checks (validate)
_PARTS = (pipeline, loader, reasoning, synthetic, models, processes, objective_state, loop,
          accumulate, parallel, profiler, teacher, evaluate, modes, monitor, distill_report,
          reasoning_eval, prompted_eval)
_VALIDATORS = (synthetic, models, parallel, teacher)


def schema() -> dict:
  """{dotted path: Field} of every field, including registered objectives' and samplers'."""
  parts = [FIELDS] + [p.FIELDS for p in _PARTS] + [objectives.fields(), decoding.fields()]
  table = fields.merge(*parts)

  def order(item):
    top = item[0].split(".")[0]
    return SECTIONS.index(top) if top in SECTIONS else len(SECTIONS)

  return dict(sorted(table.items(), key=order))  # stable: declaration order within sections


def defaults() -> ml_collections.ConfigDict:
  """The whole config with every field at its default."""
  c = ml_collections.ConfigDict()
  for path, field in schema().items():
    *parents, name = path.split(".")
    node = c
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    node[name] = field.default
  return c


def base_config() -> ml_collections.ConfigDict:
  """configs/base.py's config (the defaults)."""
  return defaults()


def shipped_configs(folder=None) -> list[tuple[str, list[str], str]]:
  """(path, variants, first docstring line) of every config file in configs/."""
  folder = pathlib.Path(folder or REPO_ROOT / "configs")
  out = []
  for path in sorted(folder.glob("*.py")):
    if path.name in ("__init__.py", "base.py"):
      continue
    module = _load_module(path)
    paragraph = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".")
    out.append((f"configs/{path.name}", variants_of(module), sentence))
  return out


def variants_of(module) -> list[str]:
  """The variant names a config module's get_config accepts (base.apply_variant lists them)."""
  try:
    module.get_config(VARIANT_QUERY)
  except VariantList as e:
    return list(e.names)
  return []


class VariantList(Exception):
  """Raised by base.apply_variant for VARIANT_QUERY: carries the known variant names."""

  def __init__(self, names):
    super().__init__(", ".join(names))
    self.names = names


VARIANT_QUERY = "?variants"


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """Load `path/to/config.py[:arg]`, apply "a.b=value" overrides, validate, lock."""
  path, _, arg = spec.partition(":")
  module = _load_module(pathlib.Path(path))
  config = module.get_config(arg or None)
  config.lock()
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"override {item!r} is not of the form field=value")
    _set(config, key.strip(), raw.strip())
  validate(config)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Names and types against the schema, each field's own check, then the cross-field checks
  of the modules, the objective, the diffusion process and the samplers."""
  table = schema()
  flat = _flatten(config)
  for key in flat:
    if key not in table:
      raise ConfigError(f"config.{key}: unknown field{_suggest(key, table)}")
  for key in table:
    if key not in flat:
      raise ConfigError(f"config.{key}: missing (start configs from base.get_config())")
  for key, value in flat.items():
    expected = table[key].default
    if not _same_type(value, expected):
      raise ConfigError(f"config.{key}: expected {type(expected).__name__}, "
                        f"got {type(value).__name__} {value!r}")
  for key, field in table.items():
    message = field.error(key, flat[key])
    if message:
      raise ConfigError(message)
  for part in _VALIDATORS:
    part.validate(config)
  decoding.validate(config)
  objectives.validate(config)
  if objectives.get(config.objective).uses_process:
    processes.PROCESSES[config.diffusion.algo].validate(config)


def _suggest(key: str, table) -> str:
  close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.75)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _load_module(path: pathlib.Path):
  if not path.is_file():
    raise ConfigError(f"config file not found: {path}")
  # config files import their siblings as `configs.<name>`: put their parent folder on the path
  root = str(path.resolve().parents[1])
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(f"_idlm_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _flatten(config, prefix=""):
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _same_type(value, expected) -> bool:
  if isinstance(expected, bool) or isinstance(value, bool):
    return type(value) is type(expected)
  if isinstance(expected, float):
    return isinstance(value, (int, float))
  if isinstance(expected, (tuple, list)):
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)
  return isinstance(value, type(expected))


def _parse(raw: str, current):
  """A Python literal; for a string field, an unquoted value is taken as the string itself."""
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw
  if isinstance(current, str) and not isinstance(value, str):
    return raw
  return value


def _set(config, key: str, raw: str) -> None:
  node = config
  parts = key.split(".")
  unknown = ConfigError(f"config.{key}: unknown field{_suggest(key, _flatten(config))}")
  for part in parts[:-1]:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise unknown
    node = node[part]
  if parts[-1] not in node:
    raise unknown
  value = _parse(raw, node[parts[-1]])
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{key}: cannot set {value!r}: {e}") from None
