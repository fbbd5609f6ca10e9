"""A small LLaDA-architecture model trained with LLaDA's SFT loss on the prompted-reasoning
benchmark (issue #18), on a CPU.

python -m idlm_jax.main --config=configs/reasoning_llada.py --workdir=/tmp/reasoning_llada

Data: data.source "reasoning" (data/reasoning.py), family arithmetic restricted to 2-digit
addition (data.reasoning.arith_digits "2,2", arith_ops "+": 3.7k train / 406 test problems,
disjoint by key), column-by-column worked steps, the answer after `####`; every prompt
left-padded to 16 tokens so every response starts at position 16 and has 32 slots (rows of 48
tokens: the layout of the decoding canvas, decoding/block.py, gen_length 32 = 2 blocks of 16).
Model: LLaDA layout (models/dllm.py), d=128, 3 layers, 4 heads, SwiGLU 384. Objective
llada_sft (objectives/llada_sft.py). Batch 64, lr 2e-3, cosine over 2400 steps.

Shipped (idlm_jax/assets/reasoning_llada): the EMA weights at step 1900 of this recipe (the
run was stopped there by SIGTERM for time; val NLL 0.0214 nats per response token at 1800,
0.0823 at 1200), about 17 CPU-minutes of the process (55 minutes wall on a 2-core CPU shared
with 4 other jobs, load average 13-26). Exact match on 200 test problems: 0.915 +- 0.020 with vanilla and
with Fast-dLLM threshold decoding (benchmarks/dllm_r2.py; docs/dllm.md). The earlier recipe
(2-3 digit + and -, 64-token rows, batch 32, 2500 steps) reached 0-1%.
"""

import pathlib

import idlm_jax
from configs import base

SHIPPED = pathlib.Path(idlm_jax.__file__).parent / "assets" / "reasoning_llada"


def smoke(c):
  c = base.smoke(c)
  c.model.update(name="llada", hidden_size=32, n_blocks=1, n_heads=2, mlp_ratio=2)
  c.data.update(seq_len=48)
  c.data.reasoning.update(train_problems=256, test_problems=32)
  return c


def r2ft(c):
  """`:r2ft`: R2's redundancy-aware SFT stand-in (objective r2_finetune: trajectory NELBO +
  sharpening hinge) on the model's own correct R2 trajectories of training prompts, recorded by
  benchmarks/dllm_record_trajectories.py (give distill.r2ft.trajectories); starts from the
  shipped model."""
  c.objective = "r2_finetune"
  c.diffusion.algo = "mdlm"
  c.distill.update(teacher=str(SHIPPED), monitor_every=0, best_metric="none",
                   report_teacher_steps="")
  c.distill.r2ft.update(trajectories="", filter="none", sharpen_weight=1.0,
                        sharpen_target=0.95, horizon=3)
  c.optim.update(lr=3e-4, warmup_steps=20, decay="constant", ema=0.99)
  c.train.update(steps=300, log_every=25, eval_every=0)
  c.ckpt.update(every=150, keep=2)
  return c


def get_config(arg=None):
  c = base.get_config()
  c.objective = "llada_sft"
  c.data.update(source="reasoning", tokenizer="reasoning", seq_len=48)
  c.data.reasoning.update(train_problems=50_000, test_problems=400, families="arithmetic",
                          arith_digits="2,2", arith_ops="+", prompt_width=16)
  c.model.update(name="llada", hidden_size=128, n_blocks=3, n_heads=4, mlp_ratio=3,
                 dropout=0.0, rope_theta=10_000.0)
  c.optim.update(lr=2e-3, warmup_steps=100, decay="cosine", final_lr_fraction=0.05,
                 b2=0.98, weight_decay=0.01, ema=0.995)
  c.train.update(steps=2400, global_batch_size=64, log_every=50, eval_every=600,
                 sample_every=0, max_minutes=0.0)
  c.ckpt.update(every=600, keep=2)
  c.eval.update(batch_size=100)
  c.eval.reasoning.update(gen_length=32, block_length=16)
  c.log.progress_every_s = 30.0
  return base.apply_variant(c, arg, {"smoke": smoke, "r2ft": r2ft})
