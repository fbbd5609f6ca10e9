"""The demo teacher: a small MDLM on the shipped public-domain corpus, trained on a CPU.

python -m idlm_jax.main --config=configs/demo_teacher.py --workdir=/tmp/demo_teacher
python -m idlm_jax.train.teacher /tmp/demo_teacher idlm_jax/assets/demo_teacher

The exported EMA weights ship inside the package (idlm_jax/assets/demo_teacher, ~4 MB) and
are the teacher that `configs/demo.py` distills. BPE vocabulary 2048, L=64, DiT d=128 with 2
blocks; about 30 minutes on 2 CPU cores (a few minutes on a GPU). `:short` is the 1000-step
version (~8 minutes on a CPU) used when the demo trains its teacher from scratch.
"""

from configs import base


def short(c):
  c.train.update(steps=1000, eval_every=500)
  return c


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="embedded", tokenizer="demo-bpe-2048", seq_len=64, wrap=True)
  c.model.update(hidden_size=128, n_blocks=2, n_heads=4, cond_dim=64, dropout=0.0,
                 time_conditioning=False)
  c.optim.update(lr=2e-3, warmup_steps=100, decay="cosine", final_lr_fraction=0.1,
                 b2=0.98, weight_decay=0.01, ema=0.99)
  c.train.update(steps=2500, global_batch_size=64, log_every=50, eval_every=1250,
                 sample_every=0, max_minutes=0.0)
  c.ckpt.update(every=500, keep=2)
  c.eval.update(batch_size=64)
  c.sample.update(num_samples=16, batch_size=16, steps=256)
  c.log.progress_every_s = 30.0
  return base.apply_variant(c, arg, {"short": short})
