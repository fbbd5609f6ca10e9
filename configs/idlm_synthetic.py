"""IDLM on the synthetic HMM language: exact NLL of few-step student samples (no evaluator).

python -m idlm_jax.main --config=configs/synthetic_mdlm.py --workdir=/tmp/syn_mdlm
python -m idlm_jax.main --config=configs/idlm_synthetic.py --workdir=/tmp/idlm_syn \
    --config.distill.teacher=/tmp/syn_mdlm

The teacher is configs/synthetic_mdlm.py (DiT d=128 x 2, 24 symbols, L=64). Monitors the exact
per-token NLL of student samples (data/synthetic.py) and picks the best checkpoint by it;
the final table puts the teacher at 1024/256/64/16 steps against the student at 16/8/4.
`:duo` distils the Duo teacher of configs/synthetic_duo.py instead (IDLM-Duo; default: the
shipped one, "synthetic_duo"; give a DCD student's workdir for IDLM-DCD).
"""

from configs import base, synthetic_duo, synthetic_mdlm


def idlm(c, teacher="synthetic"):
  """The IDLM settings of the synthetic table (either teacher)."""
  c.objective = "idlm"
  c = synthetic_mdlm.distillation(c, monitor_every=50, grad_clip=0.0, teacher=teacher)
  c.distill.fake_steps = 1
  c.train.steps = 400
  c.ckpt.update(every=100, keep=2)
  c.sample.steps = 16
  return c


def smoke(c):
  """`:smoke` distils the shipped teacher: base.smoke's step and sample counts at the teacher's
  shape (the student starts as a copy of it: d=128 x 2, L=64)."""
  model, seq_len = c.model.to_dict(), c.data.seq_len
  c = base.smoke(c)
  c.model.update(**model)
  c.data.seq_len = seq_len
  c.distill.report_teacher_steps = "64,16"
  c.eval.num_samples = 64
  return c


def get_config(arg=None):
  c = idlm(synthetic_mdlm.get_config())
  return base.apply_variant(c, arg, {
      "duo": lambda _: idlm(synthetic_duo.get_config(), teacher="synthetic_duo"),
      "smoke": smoke})
