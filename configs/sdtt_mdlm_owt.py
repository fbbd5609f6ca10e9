"""SDTT on OpenWebText (reference/teachers.md §6): the baseline distillation of an MDLM teacher.

python -m idlm_jax.main --config=configs/sdtt_mdlm_owt.py --workdir=gs://.../sdtt_mdlm \
    --config.distill.teacher=/path/to/mdlm_teacher_workdir   # e.g. a converted mdlm-owt

Paper settings: student and round teacher start as copies of the MDLM teacher (DiT small, GPT-2
vocab, L=1024); 2 teacher steps per student step; teacher step (1 - 1e-5)/1024 in round 0,
doubled every 10k steps with the student copied into the teacher (raw weights); 7 rounds = 70k
steps, after which the student samples with 8 steps (the student of round r with 1024/2^(r+1)
steps: one checkpoint per round is kept); reverse KL on masked tokens, float32 loss; global
batch 128, AdamW lr 3e-4, 2500 warm-up then constant, clip 1, EMA 0.9999; t in [1e-5, 1].
Sampling: MDLM ancestral, float64 draws.
Variants: `:smoke`, `:tiny` (embedded corpus, small model: the teacher must have the same size),
`:demo` (the shipped demo teacher, CPU minutes), `:synthetic` (the synthetic-HMM teacher of
configs/synthetic_mdlm.py, exact NLL; give --config.distill.teacher=/tmp/syn_mdlm).
"""

from configs import base, demo_teacher, idlm_mdlm_owt, mdlm_owt, synthetic_mdlm


def sdtt(c, round_steps=10_000, num_rounds=7, orig_steps=1024):
  """The SDTT settings shared by every sdtt_* variant (teachers.md §6)."""
  c.objective = "sdtt"
  c.distill.sdtt.update(divergence="kl-bwd", num_distill_steps=2, orig_steps=orig_steps,
                        round_steps=round_steps, num_rounds=num_rounds,
                        use_ema_on_growth=False, loss_precision="float32")
  c.train.steps = round_steps * num_rounds
  c.ckpt.update(every=round_steps, keep=num_rounds + 1)  # every round's student
  c.sample.update(eps=1e-5, steps=orig_steps // 2 ** num_rounds)
  return c


def paper(c):
  c = sdtt(c)
  c.optim.update(lr=3e-4, warmup_steps=2500, decay="constant", grad_clip=1.0, ema=0.9999)
  c.train.update(global_batch_size=128, eval_every=10_000, sample_every=10_000)
  c.distill.update(monitor_every=10_000, monitor_steps="8,16,32,64", monitor_samples=64,
                   best_metric="none", report_teacher_steps="1024")
  c.eval.update(sampling_steps="8,16,32,64,128,256,512,1024", num_samples=256)
  return c


def small(variant):
  """Smoke/tiny: the small variant's model and data, 3 rounds of a third of its steps."""
  def apply(c):
    c = idlm_mdlm_owt.small(variant)(c)
    return sdtt(c, round_steps=max(c.train.steps // 3, 1), num_rounds=3, orig_steps=64)
  return apply


def demo(c):
  """The shipped demo teacher (BPE 2048, L=64, DiT 128x2): 3 rounds of 100 steps, 64 -> 8."""
  c = demo_teacher.get_config()
  c = sdtt(c, round_steps=100, num_rounds=3, orig_steps=64)
  c.distill.update(teacher="demo", monitor_every=100, monitor_steps="8,16", monitor_samples=32,
                   best_metric="none", report_teacher_steps="256,64,16")
  c.optim.update(lr=1e-4, warmup_steps=20, decay="constant", grad_clip=1.0, ema=0.99)
  c.train.update(global_batch_size=32, log_every=25, eval_every=0, sample_every=0)
  c.eval.update(sampling_steps="16,8,4", num_samples=64)
  return c


def synthetic(c):
  """The synthetic-HMM teacher (configs/synthetic_mdlm.py): 4 rounds of 100 steps, 64 -> 4."""
  c = synthetic_mdlm.get_config()
  c = sdtt(c, round_steps=100, num_rounds=4, orig_steps=64)
  return synthetic_mdlm.distillation(c, monitor_every=100, grad_clip=1.0)


def get_config(arg=None):
  c = paper(mdlm_owt.get_config())
  variants = {"smoke": base.with_teacher(small(base.offline(base.distill_smoke)),
                                         "configs/mdlm_owt.py:smoke"),
              "tiny": small(base.offline(base.tiny)),
              "demo": demo, "synthetic": synthetic}
  return base.apply_variant(c, arg, variants)
