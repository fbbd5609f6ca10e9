"""IDLM with prompt clamping (IDLM v2's conditional setting) on the prompted-reasoning benchmark:
the shipped LLaDA-layout reasoning model (configs/reasoning_llada.py) is the teacher, its copy
the student and the fake.

python -m idlm_jax.main --config=configs/idlm_reasoning.py --workdir=/tmp/idlm_reasoning
python -m idlm_jax.main --config=configs/idlm_reasoning.py --workdir=/tmp/idlm_reasoning \
    --config.mode=eval_reasoning --config.eval.reasoning.steps=4   # the student, 4 steps/block

Rows are the teacher's: `[PAD]* [BOS] <user> prompt <assistant> response [EOS]*` with the
prompt left-padded to 16 tokens. objectives/idlm.py clamps the prompt (`prompt_mask`) in the
student's noised input, in the re-noised sample the teacher and the fake score, hides the left
pads from attention and averages every loss over response positions only. diffusion.algo "mdlm"
(SUBS: the LLaDA decoder's logits with [MASK] removed and unmasked tokens carried over).
The accuracy-vs-steps table of the teacher and the students at lr 1e-4 / 3e-5 / 1e-5 (none beats
the teacher at any step count on this task) is in docs/dllm.md.
"""

import pathlib

import idlm_jax
from configs import base, reasoning_llada

SHIPPED = pathlib.Path(idlm_jax.__file__).parent / "assets" / "reasoning_llada"


def smoke(c):
  """`:smoke`: a few steps of batch 8 on 128 training problems."""
  c.data.reasoning.update(train_problems=128, test_problems=16)
  c.train.update(steps=4, global_batch_size=8, log_every=2)
  c.ckpt.update(every=2, keep=1)
  c.eval.update(batch_size=8)
  c.sample.update(num_samples=4, batch_size=4, steps=8)
  c.log.progress_every_s = 5.0
  return c


def get_config(arg=None):
  c = reasoning_llada.get_config()  # the teacher's data and architecture
  c.objective = "idlm"
  c.diffusion.algo = "mdlm"
  c.distill.update(teacher=str(SHIPPED), fake_steps=1, monitor_every=0, best_metric="none",
                   report_teacher_steps="")
  c.optim.update(lr=1e-4, warmup_steps=20, decay="constant", b1=0.9, b2=0.999,
                 weight_decay=0.0, grad_clip=1.0, ema=0.99)
  c.train.update(steps=500, global_batch_size=32, log_every=25, eval_every=0, sample_every=0,
                 max_minutes=0.0)
  c.ckpt.update(every=250, keep=2)
  c.sample.update(num_samples=8, batch_size=8, steps=16)
  return base.apply_variant(c, arg, {"smoke": smoke})
