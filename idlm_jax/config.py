"""Loading and validating ml_collections configs (every field is defined in configs/base.py).

An unknown key, a wrong type or an invalid value raises `ConfigError` naming the field,
before any work starts.
"""

import ast
import importlib
import importlib.util
import pathlib
import sys

import ml_collections

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

CHOICES = {
    "mode": ("train", "eval", "sample", "eval_samplers"),
    "objective": ("diffusion", "ar", "idlm", "sdtt", "dcd", "didi", "r2_finetune"),
    "distill.relaxation": ("simplex", "gumbel", "straight_through"),
    "distill.train_draw": ("inverse_cdf", "exact32"),
    "distill.best_metric": ("gen_ppl", "exact_nll", "none"),
    "distill.sdtt.divergence": ("kl-bwd", "kl-fwd", "mse", "tvd"),  # baselines (issue #7)
    "distill.sdtt.loss_precision": ("float32", "float64"),
    "distill.dcd.divergence": ("kl-bwd", "kl-fwd"),
    "distill.dcd.loss_precision": ("float32", "float64"),
    "eval.checkpoint": ("latest", "best"),
    "data.source": ("embedded", "text_files", "tfds_lm1b", "owt", "synthetic_hmm"),
    "model.name": ("dit", "gpt2",),
    "model.dtype": ("float32", "bfloat16"),
    "model.attention": ("auto", "xla", "cudnn"),
    "model.remat": ("none", "block"),  # performance (issue #10)
    "diffusion.process": ("absorbing", "uniform"),
    "diffusion.parameterization": ("subs", "score", "mean"),
    "diffusion.algo": ("mdlm", "sedd", "udlm", "duo"),  # teachers (issue #3)
    "sample.sampler": ("ancestral", "analytic", "euler", "r2", "rgas"),
    "diffusion.schedule": ("loglinear",),
    "optim.decay": ("constant", "cosine", "linear"),
    "parallel.strategy": ("pjit", "pmap"),
    "sample.precision": ("float64", "exact32", "float32"),
    "sample.noise_removal": ("argmax", "ancestral"),
}

# field -> (predicate, what it must be)
RULES = {
    "data.seq_len": (lambda v: v >= 4, "an integer >= 4"),
    "model.hidden_size": (lambda v: v > 0, "positive"),
    "model.n_blocks": (lambda v: v > 0, "positive"),
    "model.n_heads": (lambda v: v > 0, "positive"),
    "model.cond_dim": (lambda v: v > 0, "positive"),
    "model.mlp_ratio": (lambda v: v > 0, "positive"),
    "model.dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "model.vocab_pad_multiple": (lambda v: v >= 0, ">= 0 (0 or 1: no padding)"),
    "model.loss_chunk": (lambda v: v >= 0, ">= 0 (0: off)"),
    "diffusion.eps": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    "optim.lr": (lambda v: v > 0, "positive"),
    "optim.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "optim.final_lr_fraction": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "optim.b1": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "optim.b2": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "optim.adam_eps": (lambda v: v > 0, "positive"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optim.grad_clip": (lambda v: v >= 0, ">= 0 (0 disables)"),
    "optim.ema": (lambda v: 0.0 <= v < 1.0, "in [0, 1) (0 disables)"),
    "train.steps": (lambda v: v > 0, "positive"),
    "train.global_batch_size": (lambda v: v > 0, "positive"),
    "train.max_minutes": (lambda v: v >= 0, ">= 0"),
    "train.log_every": (lambda v: v > 0, "positive"),
    "train.eval_every": (lambda v: v >= 0, ">= 0"),
    "train.sample_every": (lambda v: v >= 0, ">= 0"),
    "ckpt.every": (lambda v: v > 0, "positive"),
    "ckpt.keep": (lambda v: v >= 1, ">= 1"),
    "eval.batch_size": (lambda v: v > 0, "positive"),
    "sample.num_samples": (lambda v: v > 0, "positive"),
    "sample.batch_size": (lambda v: v > 0, "positive"),
    "sample.steps": (lambda v: v > 0, "positive"),
    "sample.eps": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    "data.max_train_docs": (lambda v: v >= 0, ">= 0"),
    "data.max_val_rows": (lambda v: v >= 0, ">= 0"),
    "data.owt_val_docs": (lambda v: v > 0, "positive"),
    "log.progress_every_s": (lambda v: v > 0, "positive"),
    # teachers (issue #3)
    "diffusion.tau": (lambda v: v > 0, "positive"),
    "diffusion.curriculum_start": (lambda v: v >= 0, ">= 0"),
    "diffusion.curriculum_end": (lambda v: v >= 0, ">= 0"),
    "diffusion.duo_table_points": (lambda v: v >= 3, ">= 3"),
    "sample.top_p": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "eval.num_samples": (lambda v: v > 0, "positive"),
    "eval.evaluator_batch_size": (lambda v: v > 0, "positive"),
    "eval.evaluator_max_length": (lambda v: v >= 2, ">= 2"),
    "eval.sampling_steps": (lambda v: all(s.strip().isdigit() and int(s) > 0
                                          for s in v.split(",")), "comma-separated positive ints"),
    "model.n_positions": (lambda v: v > 0, "positive"),
    "data.synthetic.num_states": (lambda v: v >= 1, ">= 1"),
    "data.synthetic.vocab_size": (lambda v: v >= 2, ">= 2"),
    "data.synthetic.branching": (lambda v: v >= 1, ">= 1"),
    "data.synthetic.concentration": (lambda v: v > 0, "positive"),
    "data.synthetic.num_train_docs": (lambda v: v > 0, "positive"),
    "data.synthetic.num_val_docs": (lambda v: v > 0, "positive"),
    # distillation (issue #5)
    "distill.fake_steps": (lambda v: v >= 1, ">= 1"),
    "distill.fake_lr": (lambda v: v >= 0, ">= 0 (0: optim.lr)"),
    "distill.relax_tau": (lambda v: v > 0, "positive"),
    "distill.monitor_every": (lambda v: v >= 0, ">= 0 (0: off)"),
    "distill.monitor_samples": (lambda v: v > 0, "positive"),
    "distill.monitor_steps": (lambda v: all(s.strip().isdigit() and int(s) > 0
                                            for s in v.split(",")), "comma-separated positive ints"),
    "distill.report_teacher_steps": (lambda v: all(s.strip().isdigit() and int(s) > 0
                                                   for s in v.split(",") if s.strip()),
                                     "comma-separated positive ints or empty"),
    "distill.entropy_floor": (lambda v: v >= 0, ">= 0 (0: relative to step 0)"),
    "distill.entropy_drop": (lambda v: 0 <= v < 1, "in [0, 1)"),
    # baselines (issue #7)
    "distill.sdtt.num_distill_steps": (lambda v: v >= 2, ">= 2"),
    "distill.sdtt.orig_steps": (lambda v: v >= 1, ">= 1"),
    "distill.sdtt.round_steps": (lambda v: v >= 1, ">= 1"),
    "distill.sdtt.num_rounds": (lambda v: v >= 1, ">= 1"),
    "distill.dcd.T": (lambda v: v >= 2, ">= 2"),
    "distill.dcd.round_steps": (lambda v: v >= 1, ">= 1"),
    "distill.dcd.num_rounds": (lambda v: v >= 1, ">= 1"),
}

# fast decoding (issue #8): the R2 sampler of MDLM models and its rules
CHOICES.update({
    "sample.r2.floor": ("ancestral", "top1"),
    "sample.r2.commit": ("argmax", "sampled"),
    "sample.r2.token_cluster_select": ("confidence", "mid", "random"),
    "sample.r2.temporal_eval": ("last", "mean", "max"),
    "sample.r2.clock": ("steps", "masked"),
})
RULES.update({
    "sample.r2.rules": (lambda v: all(n.strip() in ("threshold", "confidence_cluster",
                                                    "token_cluster", "temporal")
                                      for n in v.split(",") if n.strip()),
                        "a comma-separated subset of threshold, confidence_cluster, "
                        "token_cluster, temporal"),
    "sample.r2.threshold": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "sample.r2.spatial_threshold": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "sample.r2.temporal_threshold": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "sample.r2.cluster_window": (lambda v: v >= 1, ">= 1"),
    "sample.r2.cluster_max_unmasked": (lambda v: v >= 0, ">= 0"),
    "sample.r2.token_cluster_size": (lambda v: v >= 1, ">= 1"),
    "sample.r2.temporal_steps": (lambda v: v >= 1, ">= 1"),
    "sample.r2.block_length": (lambda v: v >= 0, ">= 0 (0: no blocks)"),
})


class ConfigError(ValueError):
  """A config field is unknown, of the wrong type, or has an invalid value."""


def base_config() -> ml_collections.ConfigDict:
  """configs/base.py: the definition of every field."""
  return _load_module(REPO_ROOT / "configs" / "base.py").get_config()


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
  """Check fields against configs/base.py (names and types) and the value rules."""
  base = base_config()
  flat, flat_base = _flatten(config), _flatten(base)
  for key in flat:
    if key not in flat_base:
      raise ConfigError(f"config.{key}: unknown field (every field is defined in configs/base.py)")
  for key in flat_base:
    if key not in flat:
      raise ConfigError(f"config.{key}: missing (start configs from base.get_config())")
  for key, value in flat.items():
    expected = flat_base[key]
    if not _same_type(value, expected):
      raise ConfigError(f"config.{key}: expected {type(expected).__name__}, "
                        f"got {type(value).__name__} {value!r}")
  for key, options in CHOICES.items():
    if flat[key] not in options:
      raise ConfigError(f"config.{key}: {flat[key]!r} is not one of {options}")
  for key, (ok, what) in RULES.items():
    if not ok(flat[key]):
      raise ConfigError(f"config.{key}: must be {what}, got {flat[key]!r}")
  m = config.model
  if m.hidden_size % m.n_heads or (m.hidden_size // m.n_heads) % 2:
    raise ConfigError(f"config.model.hidden_size: {m.hidden_size} must split into "
                      f"{m.n_heads} heads of even size (rotary embedding)")
  _validate_rgas(config)
  _validate_teacher(config)
  _validate_loss_chunk(config)
  if config.data.source == "synthetic_hmm":
    want = f"symbols-{config.data.synthetic.vocab_size}"
    if config.data.tokenizer != want:
      raise ConfigError(f"config.data.tokenizer: the synthetic source over "
                        f"{config.data.synthetic.vocab_size} symbols needs {want!r}, got "
                        f"{config.data.tokenizer!r}")
  for key in ("parallel.ici_mesh", "parallel.dcn_mesh"):
    mesh = flat[key]
    if len(mesh) != 3 or list(mesh).count(-1) > 1 or any(s == 0 or s < -1 for s in mesh):
      raise ConfigError(f"config.{key}: needs 3 sizes for ('data', 'fsdp', 'tensor'), each "
                        f">= 1 or one -1 (fill), got {mesh!r}")


def _validate_loss_chunk(config) -> None:
  """model.loss_chunk > 0 is implemented for the MDLM teacher loss only (issue #10)."""
  if config.model.loss_chunk > 0 and (config.objective != "diffusion"
                                      or config.diffusion.algo != "mdlm"):
    raise ConfigError(f"config.model.loss_chunk: the chunked loss is implemented for MDLM "
                      f"teacher pretraining only (objective='diffusion', diffusion.algo='mdlm'); "
                      f"got objective={config.objective!r}, diffusion.algo="
                      f"{config.diffusion.algo!r}: set it to 0")


# teachers (issue #3): what each diffusion.algo needs, and which samplers run it
TEACHERS = {  # algo -> (processes, parameterization, time-conditioned, samplers)
    "mdlm": (("absorbing",), "subs", None, ("ancestral", "analytic", "euler", "r2", "rgas")),
    "sedd": (("absorbing", "uniform"), "score", True, ("analytic", "euler")),
    "udlm": (("uniform",), "mean", True, ("ancestral",)),
    "duo": (("uniform",), "mean", True, ("ancestral",)),
}


def _validate_teacher(config) -> None:
  """Consistency of diffusion.algo with process, parameterization, time conditioning, sampler."""
  if config.objective not in ("diffusion", "idlm", "sdtt", "dcd", "didi", "r2_finetune"):
    return
  f, s = config.diffusion, config.sample
  if config.objective in ("idlm", "sdtt", "dcd", "didi", "r2_finetune"):
    _validate_distill(config)
    _validate_baselines(config)
  if config.objective == "r2_finetune":
    _validate_r2ft(config)
  processes, param, time_cond, samplers = TEACHERS[f.algo]
  if f.process not in processes:
    raise ConfigError(f"config.diffusion.process: {f.process!r} does not work with "
                      f"diffusion.algo={f.algo!r} (use one of {processes})")
  if f.parameterization != param:
    raise ConfigError(f"config.diffusion.parameterization: diffusion.algo={f.algo!r} needs "
                      f"{param!r}, got {f.parameterization!r}")
  if time_cond is not None and config.model.time_conditioning != time_cond:
    raise ConfigError(f"config.model.time_conditioning: diffusion.algo={f.algo!r} needs a "
                      f"time-conditioned network (set it to True)")
  if s.sampler not in samplers:
    raise ConfigError(f"config.sample.sampler: {s.sampler!r} cannot sample a "
                      f"diffusion.algo={f.algo!r} model (use one of {samplers}; analytic/euler "
                      f"need an absorbing-state or SEDD model, ancestral an MDLM/UDLM/Duo one)")
  if s.top_p < 1.0 and f.algo not in ("udlm", "duo"):
    raise ConfigError(f"config.sample.top_p: nucleus sampling is implemented for the "
                      f"udlm/duo ancestral sampler, not diffusion.algo={f.algo!r}")
  if f.algo == "duo":
    if f.curriculum_end < f.curriculum_start:
      raise ConfigError(f"config.diffusion.curriculum_end: {f.curriculum_end} is before "
                        f"curriculum_start {f.curriculum_start}")
    if not f.gamma_min < f.gamma_max:
      raise ConfigError(f"config.diffusion.gamma_min: must be < gamma_max, got "
                        f"{f.gamma_min} >= {f.gamma_max}")


def _validate_distill(config) -> None:
  """A distillation run names its teacher; IDLM-SEDD is absorbing (the paper's)."""
  d, f = config.distill, config.diffusion
  if config.mode == "train" and not d.teacher:
    raise ConfigError(f"config.distill.teacher: objective={config.objective!r} distils a "
                      "teacher: give its workdir (or 'demo' for the shipped demo teacher)")
  if config.objective == "idlm" and f.algo == "sedd" and f.process != "absorbing":
    raise ConfigError("config.diffusion.process: IDLM distils absorbing SEDD teachers only "
                      f"(got {f.process!r})")
  if config.objective == "didi":
    _validate_didi(config)
  if d.relaxation != "simplex" and f.algo not in ("mdlm",):
    raise ConfigError(f"config.distill.relaxation: {d.relaxation!r} is an IDLM-MDLM ablation; "
                      f"diffusion.algo={f.algo!r} uses its own relaxation ('simplex')")


def _validate_baselines(config) -> None:
  """SDTT distils MDLM teachers, DCD Duo teachers; their rounds must keep a valid step."""
  d, f = config.distill, config.diffusion
  if config.objective == "sdtt":
    if f.algo != "mdlm":
      raise ConfigError(f"config.diffusion.algo: objective 'sdtt' distils MDLM teachers, got "
                        f"{f.algo!r}")
    s = d.sdtt
    if s.orig_steps % s.num_distill_steps ** s.num_rounds:
      raise ConfigError(f"config.distill.sdtt.num_rounds: {s.num_rounds} rounds of "
                        f"{s.num_distill_steps}x leave no whole number of student steps from "
                        f"orig_steps={s.orig_steps}")
  if config.objective == "dcd":
    if f.algo != "duo":
      raise ConfigError(f"config.diffusion.algo: objective 'dcd' distils Duo teachers, got "
                        f"{f.algo!r}")
    if 2 ** (d.dcd.num_rounds - 1) >= d.dcd.T:
      raise ConfigError(f"config.distill.dcd.num_rounds: the last step 2^{d.dcd.num_rounds - 1}"
                        f"/T must be < 1 (T={d.dcd.T})")


# DiDi-Instruct (issue #6): config.distill.didi
CHOICES["distill.didi.real"] = ("data", "teacher")
RULES.update({
    "distill.didi.group_size": (lambda v: v >= 2, ">= 2 (grouped reward normalisation)"),
    "distill.didi.teacher_steps": (lambda v: v >= 1, ">= 1"),
    "distill.didi.disc_lr": (lambda v: v > 0, "positive"),
    "distill.didi.disc_grad_clip": (lambda v: v >= 0, ">= 0 (0 disables)"),
    "distill.didi.disc_weight_decay": (lambda v: v >= 0, ">= 0"),
    "distill.didi.unfreeze_blocks": (lambda v: v >= 0, ">= 0"),
    "distill.didi.label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "distill.didi.tau_a": (lambda v: v > 0, "positive"),
    "distill.didi.tau_b": (lambda v: v > 0, "positive"),
    "distill.didi.tau_min": (lambda v: 0 < v < 1, "in (0, 1)"),
    "distill.didi.tau_max": (lambda v: 0 < v < 1, "in (0, 1)"),
    "distill.didi.t0": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "distill.didi.omega_min": (lambda v: v >= 0, ">= 0"),
    "distill.didi.omega_max": (lambda v: v > 0, "positive"),
    "distill.didi.reward_clip": (lambda v: v > 0, "positive"),
    "distill.didi.advantage_clip": (lambda v: v > 0, "positive"),
    "distill.didi.kl_beta": (lambda v: v >= 0, ">= 0"),
    "distill.didi.kl_hi": (lambda v: v >= 0, ">= 0"),
    "distill.didi.kl_lo": (lambda v: v >= 0, ">= 0"),
    "distill.didi.entropy_beta": (lambda v: v >= 0, ">= 0"),
    "distill.didi.rgas_rerank_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "distill.didi.rgas_grad_clip": (lambda v: v > 0, "positive"),
    "distill.didi.rgas_candidates": (lambda v: v >= 1, ">= 1"),
    "distill.didi.rgas_temperature": (lambda v: v > 0, "positive"),
})


def _validate_rgas(config) -> None:
  """sample.sampler (or an eval.samplers entry) "rgas" reads a DiDi-Instruct discriminator."""
  names = [n.strip() for n in config.eval.samplers.split(",")] + [config.sample.sampler]
  if "rgas" in names and config.objective != "didi":
    raise ConfigError(f"config.sample.sampler: 'rgas' (DiDi-Instruct's reward-guided sampler) "
                      f"reads the discriminator of an objective='didi' run, got objective="
                      f"{config.objective!r} (use 'ancestral')")


def _validate_didi(config) -> None:
  """DiDi-Instruct distils MDLM (SUBS) teachers; tau's clamp must be an interval after t0."""
  di = config.distill.didi
  if config.diffusion.algo != "mdlm":
    raise ConfigError(f"config.diffusion.algo: objective 'didi' distils MDLM teachers, got "
                      f"{config.diffusion.algo!r}")
  if not di.tau_min < di.tau_max:
    raise ConfigError(f"config.distill.didi.tau_min: must be < tau_max, got {di.tau_min} >= "
                      f"{di.tau_max}")
  if not di.t0 < di.tau_min:
    raise ConfigError(f"config.distill.didi.t0: the rollout ends after tau, must be < tau_min "
                      f"({di.tau_min}), got {di.t0}")


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
  for part in parts[:-1]:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f"config.{key}: unknown field")
    node = node[part]
  if parts[-1] not in node:
    raise ConfigError(f"config.{key}: unknown field")
  value = _parse(raw, node[parts[-1]])
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{key}: cannot set {value!r}: {e}") from None


# fine-tuning on R2 trajectories (issue #8 part 2): config.distill.r2ft
CHOICES["distill.r2ft.filter"] = ("exact_nll", "none")
CHOICES["distill.r2ft.masks"] = ("trajectory", "random")
RULES.update({
    "distill.r2ft.sharpen_weight": (lambda v: v >= 0, ">= 0 (0: trajectory NELBO only)"),
    "distill.r2ft.sharpen_target": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "distill.r2ft.horizon": (lambda v: v >= 1, ">= 1"),
    "distill.r2ft.keep_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "distill.r2ft.record_samples": (lambda v: v >= 1, ">= 1"),
})


def _validate_r2ft(config) -> None:
  """r2_finetune: an MDLM model and known sharpened rules (the trajectory file is checked when
  the data load, r2_finetune.get_datasets, so that configs validate without one)."""
  r = config.distill.r2ft
  if config.diffusion.algo != "mdlm":
    raise ConfigError(f"config.diffusion.algo: objective 'r2_finetune' fine-tunes MDLM models "
                      f"(R2 trajectories), got {config.diffusion.algo!r}")
  from idlm_jax.diffusion import r2
  try:
    r2.parse_rules(r.sharpen_rules)
  except ValueError as e:
    raise ConfigError(f"config.distill.r2ft.sharpen_rules: {e}") from None
  if r.filter == "exact_nll" and config.data.source != "synthetic_hmm":
    raise ConfigError("config.distill.r2ft.filter: 'exact_nll' needs data.source="
                      f"'synthetic_hmm', got {config.data.source!r} (use 'none')")
