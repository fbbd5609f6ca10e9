"""The embedded default: a small MDLM teacher on the shipped public-domain corpus, on a CPU.

python -m idlm_jax.main --config=configs/demo.py --workdir=/tmp/idlm_demo
Sized for 2 CPU cores and about 10 minutes (see README): BPE vocabulary 2048, L=64.
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="embedded", tokenizer="demo-bpe-2048", seq_len=64, wrap=True)
  c.model.update(hidden_size=128, n_blocks=2, n_heads=4, cond_dim=64, dropout=0.0,
                 time_conditioning=False)
  c.optim.update(lr=2e-3, warmup_steps=100, decay="cosine", final_lr_fraction=0.1,
                 b2=0.98, weight_decay=0.01, ema=0.99)
  c.train.update(steps=1000, global_batch_size=64, log_every=50, eval_every=500,
                 sample_every=0, max_minutes=0.0)
  c.ckpt.update(every=200, keep=2)
  c.eval.update(batch_size=64)
  c.sample.update(num_samples=16, batch_size=16, steps=128)
  c.log.progress_every_s = 15.0
  return base.apply_variant(c, arg)
