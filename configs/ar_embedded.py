"""The offline Gen PPL evaluator: a small GPT-2-architecture causal LM on the embedded corpus.

python -m idlm_jax.main --config=configs/ar_embedded.py --workdir=/tmp/ar_embedded
python -m idlm_jax.export evaluator --workdir=/tmp/ar_embedded  # -> idlm_jax/evals/assets

Trained with the demo BPE (vocabulary 2048) of the demo diffusion teacher: with the GPT-2
vocabulary (50257) the tied embedding alone would be ~25 MB at this width and a 2-core CPU
would reach only a few hundred steps in 15 minutes. Gen PPL retokenizes samples with this
evaluator's tokenizer exactly as the papers do with GPT-2's (`:gpt2` keeps the GPT-2 one).
Variants: `:smoke`, `:tiny` (base), `:gpt2` (GPT-2 tokenizer).
"""

from configs import base


def gpt2_tokenizer(c):
  c.data.tokenizer = "gpt2"
  return c


def get_config(arg=None):
  c = base.get_config()
  c.objective = "ar"
  c.data.update(source="embedded", tokenizer="demo-bpe-2048", seq_len=128, wrap=True)
  c.model.update(name="gpt2", hidden_size=128, n_blocks=3, n_heads=4, dropout=0.0,
                 n_positions=128)
  c.optim.update(lr=2e-3, warmup_steps=100, decay="cosine", final_lr_fraction=0.1,
                 b2=0.98, weight_decay=0.01, ema=0.995)
  c.train.update(steps=1500, global_batch_size=32, log_every=50, eval_every=500,
                 sample_every=0, max_minutes=14.0)
  c.ckpt.update(every=250, keep=2)
  c.eval.update(batch_size=64, evaluator="")
  c.log.progress_every_s = 30.0
  c = base.apply_variant(c, arg, {"gpt2": gpt2_tokenizer})
  if arg == "smoke":
    c.model.update(name="gpt2", n_positions=c.data.seq_len)
  return c
