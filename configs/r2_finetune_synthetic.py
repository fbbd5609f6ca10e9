"""Fine-tuning the synthetic-language MDLM on its own R2 decoding trajectories (issue #8 part 2).

python benchmarks/r2_record_trajectories.py --config=configs/r2_finetune_synthetic.py \
    --workdir=/tmp/r2_syn --out=/tmp/r2ft/traj.npz
python -m idlm_jax.main --config=configs/r2_finetune_synthetic.py --workdir=/tmp/r2ft/run \
    --config.distill.teacher=/tmp/r2_syn --config.distill.r2ft.trajectories=/tmp/r2ft/traj.npz
python benchmarks/r2_decoding.py --config=configs/synthetic_mdlm.py --workdir=/tmp/r2ft/run

The teacher is configs/synthetic_mdlm.py (a run saved before model.vocab_pad_multiple existed
needs --config.model.vocab_pad_multiple=0). Trajectories: 1024 samples at sample.steps=32
with all four rules (threshold, A, B, C; sample.r2.*), the best quarter by exact source NLL.
Measured: benchmarks/results/r2_finetune_synthetic.md.
Objective r2_finetune (objectives/r2_finetune.py): trajectory NELBO + sharpening hinge.
`:smoke` reads idlm_jax/assets/r2_smoke_trajectories.npz, recorded from the synthetic
teacher's :smoke run with
  python -m idlm_jax.main --config=configs/synthetic_mdlm.py:smoke --workdir=/tmp/syn_smoke
  python benchmarks/r2_record_trajectories.py --config=configs/r2_finetune_synthetic.py:smoke \
      --workdir=/tmp/syn_smoke --out=idlm_jax/assets/r2_smoke_trajectories.npz
"""

import pathlib

import idlm_jax
from configs import base, synthetic_mdlm

# 64 trajectories of the :smoke teacher (L=32), recorded as the docstring says, for :smoke
SMOKE_TRAJECTORIES = pathlib.Path(idlm_jax.__file__).parent / "assets" / "r2_smoke_trajectories.npz"


def smoke(c):
  c = base.smoke(c)
  c.distill.r2ft.update(trajectories=str(SMOKE_TRAJECTORIES), record_samples=64,
                        keep_fraction=0.5)
  return base.with_teacher(lambda x: x, "configs/synthetic_mdlm.py:smoke")(c)


def get_config(arg=None):
  c = synthetic_mdlm.get_config()
  c.objective = "r2_finetune"
  c.distill.update(teacher="", monitor_every=0, best_metric="none", report_teacher_steps="")
  c.distill.r2ft.update(trajectories="", sharpen_weight=1.0, sharpen_target=0.95, horizon=3,
                        keep_fraction=0.25, filter="exact_nll", record_samples=1024)
  c.sample.update(sampler="r2", steps=32, batch_size=32, num_samples=16)
  c.sample.r2.rules = "threshold,confidence_cluster,token_cluster,temporal"
  c.optim.update(lr=3e-4, warmup_steps=20, decay="constant", ema=0.99)
  c.train.update(steps=300, global_batch_size=32, log_every=25, eval_every=0, sample_every=0,
                 max_minutes=8.0)
  c.ckpt.update(every=150, keep=2)
  return base.apply_variant(c, arg, {"smoke": smoke})
