"""The embedded default: IDLM distillation of the shipped demo teacher, on a CPU.

python -m idlm_jax.main --config=configs/demo.py --workdir=/tmp/idlm_demo

Loads the small MDLM teacher shipped in idlm_jax/assets/demo_teacher (trained by
configs/demo_teacher.py on the shipped public-domain corpus: BPE 2048, L=64, DiT d=128 x 2),
distils it with IDLM (student + fake, both copies of the teacher), monitors the student's
Gen PPL and entropy, then prints the table of the teacher at 256/64/16 steps against the
student at 16/8/4 steps (same seeds, the shipped AR evaluator). About 6 minutes on 2 idle cores
(5 min 52 s measured from a fresh workdir, 2026-12-05).
Variants: `:scratch` trains the teacher first (configs/demo_teacher.py:short, into
<workdir>/teacher) and distils that one; `:smoke` is the test-suite size (it trains a matching
smoke teacher into <workdir>/teacher first unless --config.distill.teacher names one).
"""

from configs import base, demo_teacher


def smoke(c):
  c = base.smoke(c)
  c.distill.teacher = ""  # the shipped teacher is not smoke-sized: train a matching one
  c.distill.update(monitor_every=6, monitor_steps="2,4", monitor_samples=8,
                   report_teacher_steps="8")
  c.eval.update(sampling_steps="2,4", num_samples=8, evaluator="")
  c.optim.update(lr=1e-4, warmup_steps=2)
  return c


def scratch(c):
  c.distill.teacher = "scratch:configs/demo_teacher.py:short"
  return c


def get_config(arg=None):
  c = demo_teacher.get_config()  # the teacher's model, data and tokenizer
  c.objective = "idlm"
  c.distill.update(teacher="demo", fake_steps=1, monitor_every=100, monitor_steps="4,16",
                   monitor_samples=32, best_metric="gen_ppl",
                   report_teacher_steps="256,64,16")
  c.optim.update(lr=1e-4, warmup_steps=20, decay="constant", b1=0.9, b2=0.999,
                 weight_decay=0.0, grad_clip=0.0, ema=0.99)
  c.train.update(steps=300, global_batch_size=32, log_every=25, eval_every=0, sample_every=0)
  c.ckpt.update(every=100, keep=2)
  c.eval.update(sampling_steps="16,8,4", num_samples=64)
  c.sample.update(num_samples=16, batch_size=16, steps=16)
  return base.apply_variant(c, arg, {
      "smoke": base.with_teacher(smoke, "configs/demo_teacher.py:smoke"), "scratch": scratch})
