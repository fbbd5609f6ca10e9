"""DiDi-Instruct on the synthetic HMM language: exact NLL of few-step student samples.

python -m idlm_jax.main --config=configs/synthetic_mdlm.py --workdir=/tmp/syn_mdlm
python -m idlm_jax.main --config=configs/didi_synthetic.py --workdir=/tmp/didi_syn \
    --config.distill.teacher=/tmp/syn_mdlm
python benchmarks/didi_rgas.py --workdir=/tmp/didi_syn --steps=4,8,16

The teacher is configs/synthetic_mdlm.py (DiT d=128 x 2, 24 symbols, L=64); the student and
the discriminator trunk are copies of it (both of its blocks trainable in the discriminator).
"""

from configs import base, didi_mdlm_owt, synthetic_mdlm


def get_config(arg=None):
  c = didi_mdlm_owt.didi(synthetic_mdlm.get_config(), lr=1e-4)
  c.optim.update(warmup_steps=20, decay="constant")
  c.distill.update(teacher="", monitor_every=50, monitor_steps="4,16", monitor_samples=64,
                   best_metric="exact_nll", report_teacher_steps="256,16")
  c.distill.didi.update(disc_lr=1e-4)
  c.train.update(steps=400, global_batch_size=16, log_every=10, eval_every=0, sample_every=0,
                 max_minutes=0.0)
  c.ckpt.update(every=100, keep=2)
  c.eval.update(sampling_steps="16,8,4", num_samples=128)
  c.sample.update(num_samples=16, batch_size=32, steps=16)
  return base.apply_variant(c, arg, {
      "smoke": base.with_teacher(base.smoke, "configs/synthetic_mdlm.py:smoke")})
