"""The base config (every field at its default) and the variants every config file shares.

Other config files start from `base.get_config()` and override values; nothing may invent a
field (an unknown key is an error, see `idlm_jax/config.py`). Each field's default, meaning
and allowed values are declared next to the code that reads it (`FIELDS` in its module);
`docs/config.md` lists them all (`python -m idlm_jax.main --help_config`). Paper setups live
in their own files (`mdlm_owt.py`, `mdlm_lm1b.py`, ...), each with `:tiny` and `:smoke`
variants.
"""

from idlm_jax import config as config_lib


def get_config(arg=None):
  """Every field at its default (declared next to the code that reads it; `idlm_jax.config`
  assembles them, docs/config.md lists them all)."""
  del arg
  return config_lib.defaults()


def smoke(c):
  """`:smoke`: the same pipeline end to end in well under a minute on a CPU."""
  c.model.update(hidden_size=32, n_blocks=1, n_heads=2, cond_dim=32, dropout=0.0)
  c.data.update(seq_len=32, max_train_docs=3000, max_val_rows=64)
  c.train.update(steps=12, global_batch_size=16, log_every=4, eval_every=0, sample_every=0)
  c.optim.update(warmup_steps=4)
  c.ckpt.update(every=6, keep=2)
  c.eval.update(batch_size=16)
  c.sample.update(num_samples=8, batch_size=8, steps=8)
  # the distillation monitor's teacher-entropy reference (default 1024 sampling steps: most
  # of a distillation smoke's time)
  c.distill.entropy_reference_steps = 8
  c.log.progress_every_s = 5.0
  return c


def distill_smoke(c):
  """`:smoke` of a distillation over GPT-2/BERT vocabularies: two, three or four networks'
  logits over 30-50k classes make a step take about 3 s on 2 CPU cores, so 6 steps of 8 rows
  (checkpoints at 3 and 6) keep the whole variant, its own teacher included, under a minute."""
  c = smoke(c)
  c.train.update(steps=6, global_batch_size=8, log_every=2)
  c.ckpt.update(every=3)
  c.eval.update(batch_size=8)
  return c


def tiny(c):
  """`:tiny`: a small model that trains for real on a CPU in minutes."""
  c.model.update(hidden_size=128, n_blocks=2, n_heads=4, cond_dim=64, dropout=0.0)
  c.train.update(steps=2000, global_batch_size=32, log_every=50, eval_every=500,
                 sample_every=1000)
  c.optim.update(warmup_steps=100, ema=0.999)
  c.ckpt.update(every=500)
  c.eval.update(batch_size=32)
  c.sample.update(num_samples=8, batch_size=8, steps=64)
  return c


def offline(variant):
  """A small variant of a paper config that keeps its tokenizer and wrapping/padding but reads
  the embedded corpus (LM1B/OWT cannot be downloaded offline) in float32, scored by the
  shipped evaluator."""
  def apply(c):
    c = variant(c)
    c.data.update(source="embedded", path="")
    c.model.dtype = "float32"
    if c.eval.evaluator:
      c.eval.evaluator = "embedded"  # gpt2-large needs the hub; the shipped 0.9M one does not
    return c
  return apply


def with_teacher(variant, spec: str):
  """A distillation variant that trains its own matching teacher first when none is given:
  distill.teacher = "scratch:<spec>" (trained into <workdir>/teacher, then distilled), so the
  variant runs alone from a fresh clone."""
  def apply(c):
    c = variant(c)
    if not c.distill.teacher:
      c.distill.teacher = f"scratch:{spec}"
    return c
  return apply


def apply_variant(c, arg, variants=None):
  """Apply `--config=file.py:<arg>`; every config knows 'smoke' and 'tiny' plus its own."""
  table = {"smoke": smoke, "tiny": tiny, **(variants or {})}
  if arg == config_lib.VARIANT_QUERY:  # --help lists the variants
    raise config_lib.VariantList(sorted(table))
  if arg in (None, ""):
    return c
  if arg not in table:
    raise config_lib.ConfigError(f"unknown config variant {arg!r}; known: {sorted(table)}")
  return table[arg](c)
