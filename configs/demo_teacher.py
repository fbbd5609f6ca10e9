"""The demo teacher: a small MDLM on the shipped public-domain corpus, trained on a CPU.

python -m idlm_jax.main --config=configs/demo_teacher.py --workdir=/tmp/demo_teacher \
    --config.model.vocab_pad_multiple=0
python -m idlm_jax.export teacher /tmp/demo_teacher idlm_jax/assets/demo_teacher

The exported EMA weights ship inside the package (idlm_jax/assets/demo_teacher, ~4 MB) and
are the teacher that `configs/demo.py` distills. BPE vocabulary 2048, L=64, DiT d=128 with 2
blocks, 4000 steps of batch 64 (~7 epochs of the corpus); about an hour on 2 CPU cores (a
few minutes on a GPU). `:short` is the 1000-step version (~8 minutes on a CPU) used when the
demo trains its teacher from scratch.

How the shipped weights were made (exactly): this config run to step 1500 with
`--config.train.steps=1600` (val NELBO 5.105 at step 1250), then resumed from the step-1500
checkpoint with `--config.train.steps=4000 --config.train.eval_every=500`, so the cosine
schedule was recomputed over 4000 steps (a warm restart at step 1500: lr 2.6e-4 -> 1.5e-3);
val NELBO 4.857 / 4.706 / 4.611 / 4.555 / 4.521 at steps 2000 / 2500 / 3000 / 3500 / 4000
(corpus unigram 6.474). Samples at 256 steps read as English in short phrases mixed with
invented words (a 1 M-parameter model).
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
  c.train.update(steps=4000, global_batch_size=64, log_every=50, eval_every=500,
                 sample_every=0, max_minutes=0.0)
  c.ckpt.update(every=500, keep=2)
  c.eval.update(batch_size=64)
  c.sample.update(num_samples=16, batch_size=16, steps=256)
  c.log.progress_every_s = 30.0
  return base.apply_variant(c, arg, {"short": short})
