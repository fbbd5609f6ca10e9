"""IDLM-MDLM on OpenWebText (reference/idlm.md §3-4): distil an MDLM teacher into a few-step
student.

python -m idlm_jax.main --config=configs/idlm_mdlm_owt.py --workdir=gs://.../idlm_mdlm \
    --config.distill.teacher=/path/to/mdlm_teacher_workdir   # e.g. a converted mdlm-owt

Paper settings: student, fake and teacher are copies of the teacher (DiT small, GPT-2 vocab,
L=1024); AdamW lr 1e-6, betas (0.9, 0.999), no weight decay, 2500 warm-up steps then constant,
no gradient clipping, EMA 0.9999 (student and fake each); global batch 512 per update; one fake
update per student update on different batches; fp32 master weights; float64 sampling.
Monitoring every 1500 steps (the paper's validation interval) at 16 and 32 steps; the OWT run
length is not reported (the TinyGSM run is 250k steps). Variants: `:smoke`, `:tiny` (embedded
corpus, small model: the teacher must have the same size).
"""

from configs import base, mdlm_owt


def idlm(c, lr=1e-6):
  """The IDLM settings shared by every idlm_* config (reference/idlm.md §4)."""
  c.objective = "idlm"
  c.optim.update(lr=lr, warmup_steps=2500, decay="constant", b1=0.9, b2=0.999, adam_eps=1e-8,
                 weight_decay=0.0, grad_clip=0.0, ema=0.9999)
  c.distill.update(fake_steps=1, monitor_every=1500, monitor_steps="16,32", monitor_samples=64,
                   best_metric="gen_ppl", report_teacher_steps="1024")
  c.train.update(steps=100_000, eval_every=10_000, sample_every=10_000)
  c.eval.update(sampling_steps="4,8,16,32", num_samples=256)
  c.sample.update(steps=16)
  return c


def small(variant):
  """Smoke/tiny distillation: the small variant's model and data, short monitors."""
  def apply(c):
    c = variant(c)
    c.distill.update(monitor_steps="4,8", monitor_samples=8, report_teacher_steps="")
    c.eval.update(sampling_steps="4,8", num_samples=8)
    c.optim.update(lr=1e-4, warmup_steps=2)
    return c
  return apply


def get_config(arg=None):
  c = idlm(mdlm_owt.get_config())
  variants = {"smoke": base.with_teacher(small(base.offline(base.distill_smoke)),
                                         "configs/mdlm_owt.py:smoke"),
              "tiny": small(base.offline(base.tiny))}
  return base.apply_variant(c, arg, variants)
