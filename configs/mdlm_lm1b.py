"""MDLM on LM1B (Sahoo et al. 2024; reference/teachers.md §0, §1, §5.2).

DiT small (768/12/12, cond 128, dropout 0.1), bert-base-uncased ([MASK] = 103), one sentence
per row with [CLS]/[SEP], padded/truncated to L=128 (pads excluded from the loss), global
batch 512, AdamW 3e-4, 2500 warm-up steps then constant, clip 1.0, EMA 0.9999, 1M steps;
validation on lm1b's test split. Data: TFDS lm1b (set data.tfds_data_dir if not default).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="tfds_lm1b", tokenizer="bert-base-uncased", seq_len=128, wrap=False)
  c.model.update(dtype="bfloat16", time_conditioning=False)
  c.train.update(steps=1_000_000, global_batch_size=512, log_every=100, eval_every=10_000,
                 sample_every=10_000)
  c.eval.update(batch_size=512)
  c.sample.update(num_samples=64, batch_size=64, steps=1000)
  c.eval.evaluator = "gpt2-large"  # the papers' Gen PPL evaluator (offline variants: embedded)
  variants = {"smoke": base.offline(base.smoke), "tiny": base.offline(base.tiny),
              "wrap": _wrap}
  return base.apply_variant(c, arg, variants)


def _wrap(c):
  """Duo's `lm1b-wrap`: sentences packed into 128-token rows."""
  c.data.wrap = True
  return c

