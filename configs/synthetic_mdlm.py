"""An MDLM teacher on the synthetic HMM language (exact likelihoods: data/synthetic.py).

python -m idlm_jax.main --config=configs/synthetic_mdlm.py --workdir=/tmp/syn_mdlm
python -m idlm_jax.main --config=configs/synthetic_mdlm.py --workdir=/tmp/syn_mdlm \
    --config.mode=eval_samplers

Rows are [BOS] + 62 symbols + [EOS] (data.wrap=False, no padding); samples are scored by their
exact source NLL against the exact source entropy (no learned evaluator). The tokenizer is
`symbols-<data.synthetic.vocab_size>` (a word-level "s0 s1 ..." vocabulary built in memory);
overriding vocab_size needs the matching data.tokenizer (validation says so).
Variants: `:smoke`, `:tiny`.
"""

from configs import base
from idlm_jax.data import synthetic


def distillation(c, *, monitor_every: int, grad_clip: float, teacher: str = "synthetic"):
  """The settings every student of the synthetic table shares (IDLM, SDTT, DCD): the teacher
  (default: the shipped MDLM of this config, idlm_jax/assets/synthetic_teacher), exact-NLL monitoring and best checkpoint, AdamW 1e-4
  (constant after 20 warm-up steps), EMA 0.99, batch 32, the teacher at 1024/256/64/16 steps
  against the student at 16/8/4 (128 samples)."""
  c.distill.update(teacher=teacher, monitor_every=monitor_every, monitor_steps="4,16",
                   monitor_samples=64, best_metric="exact_nll",
                   report_teacher_steps="1024,256,64,16")
  c.optim.update(lr=1e-4, warmup_steps=20, decay="constant", b1=0.9, b2=0.999,
                 weight_decay=0.0, grad_clip=grad_clip, ema=0.99)
  c.train.update(global_batch_size=32, log_every=25, eval_every=0, sample_every=0,
                 max_minutes=0.0)
  c.eval.update(sampling_steps="16,8,4", num_samples=128)
  c.sample.update(num_samples=16, batch_size=32)
  return c


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="synthetic_hmm", seq_len=64, wrap=False, max_val_rows=512)
  c.data.synthetic.update(seed=0, order=1, num_states=24, vocab_size=24, branching=3,
                          concentration=0.5, num_train_docs=20_000, num_val_docs=1_000)
  c.model.update(hidden_size=128, n_blocks=2, n_heads=4, cond_dim=64, dropout=0.0,
                 time_conditioning=False)
  c.optim.update(lr=2e-3, warmup_steps=100, decay="cosine", final_lr_fraction=0.1,
                 b2=0.98, weight_decay=0.01, ema=0.99)
  c.train.update(steps=1500, global_batch_size=64, log_every=50, eval_every=500,
                 sample_every=0, max_minutes=24.0)
  c.ckpt.update(every=250, keep=2)
  c.eval.update(batch_size=64, evaluator="", num_samples=128, sampling_steps="4,8,16,32,64,128")
  c.sample.update(num_samples=16, batch_size=16, steps=128)
  c.log.progress_every_s = 30.0
  c = base.apply_variant(c, arg)
  c.data.tokenizer = synthetic.tokenizer_name(c.data.synthetic.vocab_size)
  return c
