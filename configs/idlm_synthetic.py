"""IDLM on the synthetic HMM language: exact NLL of few-step student samples (no evaluator).

python -m idlm_jax.main --config=configs/synthetic_mdlm.py --workdir=/tmp/syn_mdlm
python -m idlm_jax.main --config=configs/idlm_synthetic.py --workdir=/tmp/idlm_syn \
    --config.distill.teacher=/tmp/syn_mdlm

The teacher is configs/synthetic_mdlm.py (DiT d=128 x 2, 24 symbols, L=64). Monitors the exact
per-token NLL of student samples (evals/synthetic.py) and picks the best checkpoint by it;
the final table puts the teacher at 1024/256/64/16 steps against the student at 16/8/4.
`:duo` distils the Duo teacher of configs/synthetic_duo.py instead (IDLM-Duo; give
--config.distill.teacher=/tmp/syn_duo, or a DCD student's workdir for IDLM-DCD).
"""

from configs import base, synthetic_duo, synthetic_mdlm


def idlm(c):
  """The IDLM settings of the synthetic table (either teacher)."""
  c.objective = "idlm"
  c.distill.update(teacher="", fake_steps=1, monitor_every=50, monitor_steps="4,16",
                   monitor_samples=64, best_metric="exact_nll",
                   report_teacher_steps="1024,256,64,16")
  c.optim.update(lr=1e-4, warmup_steps=20, decay="constant", b1=0.9, b2=0.999,
                 weight_decay=0.0, grad_clip=0.0, ema=0.99)
  c.train.update(steps=400, global_batch_size=32, log_every=25, eval_every=0, sample_every=0,
                 max_minutes=0.0)
  c.ckpt.update(every=100, keep=2)
  c.eval.update(sampling_steps="16,8,4", num_samples=128)
  c.sample.update(num_samples=16, batch_size=32, steps=16)
  return c


def get_config(arg=None):
  c = idlm(synthetic_mdlm.get_config())
  return base.apply_variant(c, arg, {"duo": lambda _: idlm(synthetic_duo.get_config())})
