"""DiDi-Instruct on OpenWebText (reference/didi_instruct.md §4, §8): distil an MDLM teacher into
a few-step student with a discriminator and a policy-gradient integral-KL loss.

python -m idlm_jax.main --config=configs/didi_mdlm_owt.py --workdir=gs://.../didi_mdlm \
    --config.distill.teacher=/path/to/mdlm_teacher_workdir   # e.g. a converted mdlm-owt
python benchmarks/didi_rgas.py --workdir=gs://.../didi_mdlm --steps=8,16,32   # RGAS vs plain

Paper settings: teacher = student = discriminator trunk = the 169M MDLM (DiT small, GPT-2
vocab, L=1024, time_conditioning False); 10k iterations of B=128 real rows x G=4 rollouts;
student AdamW lr 1e-6 (the reference sweeps 5e-6 / 2e-6 / 1e-6), betas (0.9, 0.999), no weight
decay, 1000 warm-up steps, grad clip 0.5, EMA 0.999; discriminator AdamW lr 1e-5, clip 1.0,
last 4 blocks + spectral-norm head trainable, label smoothing 0.1; tau ~ Beta(2,2) in
[0.02, 0.98]; omega in [0.1, 10]; log-odds clip 8, advantage clip 3; KL 0.01 + 0.01, entropy
bonus 5e-4; both learning rates decay linearly after the warm-up to 1% of their peak (the
reference: to 1e-8, i.e. 1% of the student's 1e-6; the discriminator's ends at 1e-7 here).
Variants: `:smoke`, `:tiny` (embedded corpus, small model: the teacher must have that size),
`:demo` (the shipped demo teacher, a few CPU minutes):

python -m idlm_jax.main --config=configs/didi_mdlm_owt.py:demo --workdir=/tmp/didi_demo
python -m idlm_jax.main --config=configs/didi_mdlm_owt.py:demo --workdir=/tmp/didi_demo \
    --config.mode=eval_samplers --config.sample.sampler=rgas   # the student with RGAS
"""

from configs import base, demo_teacher, mdlm_owt


def didi(c, lr=1e-6):
  """The DiDi-Instruct settings shared by every didi_* config (reference §4)."""
  c.objective = "didi"
  c.optim.update(lr=lr, warmup_steps=1000, decay="linear", final_lr_fraction=0.01, b1=0.9,
                 b2=0.999, adam_eps=1e-8, weight_decay=0.0, grad_clip=0.5, ema=0.999)
  c.distill.didi.update(group_size=4, real="data", disc_lr=1e-5, disc_grad_clip=1.0,
                        unfreeze_blocks=4, label_smoothing=0.1, tau_a=2.0, tau_b=2.0,
                        tau_min=0.02, tau_max=0.98, t0=1e-3, omega_min=0.1, omega_max=10.0,
                        importance_weight=False, reward_clip=8.0, advantage_clip=3.0,
                        kl_beta=1.0, kl_hi=0.01, kl_lo=0.01, entropy_beta=5e-4,
                        rgas_rerank_ratio=0.5, rgas_scale_start=30.0, rgas_scale_end=40.0,
                        rgas_candidates=4)
  c.distill.update(monitor_every=1000, monitor_steps="8,16", monitor_samples=64,
                   best_metric="gen_ppl", report_teacher_steps="1024")
  c.train.update(steps=10_000, global_batch_size=128, eval_every=0, sample_every=0)
  c.ckpt.update(every=200)
  c.eval.update(sampling_steps="8,16,32,64,128", num_samples=256)
  c.sample.update(steps=16, noise_removal="ancestral")
  return c


def small(variant):
  """Smoke/tiny distillation: the small variant's model and data, short monitors."""
  def apply(c):
    c = variant(c)
    c.distill.update(monitor_steps="4,8", monitor_samples=8, report_teacher_steps="")
    c.eval.update(sampling_steps="4,8", num_samples=8)
    c.optim.update(lr=1e-4, warmup_steps=2)
    c.distill.didi.disc_lr = 1e-4
    return c
  return apply


def demo(c):
  """The shipped demo teacher (BPE 2048, L=64, DiT 128x2, no dropout): 100 steps of 8 real
  rows x 4 rollouts, then the teacher at 64/16 steps vs the student at 16/8/4."""
  del c
  c = didi(demo_teacher.get_config(), lr=1e-4)
  c.optim.update(warmup_steps=10)
  c.distill.update(teacher="demo", monitor_every=50, monitor_steps="4,16", monitor_samples=32,
                   best_metric="gen_ppl", report_teacher_steps="64,16")
  c.distill.didi.disc_lr = 1e-4
  c.train.update(steps=100, global_batch_size=8, log_every=10, max_minutes=0.0)
  c.ckpt.update(every=50, keep=2)
  c.eval.update(sampling_steps="16,8,4", num_samples=64)
  c.sample.update(num_samples=16, batch_size=16, steps=16)
  return c


def get_config(arg=None):
  c = didi(mdlm_owt.get_config())
  variants = {"smoke": base.with_teacher(small(base.offline(base.distill_smoke)),
                                         "configs/mdlm_owt.py:smoke"),
              "tiny": small(base.offline(base.tiny)),
              "demo": demo}
  return base.apply_variant(c, arg, variants)
