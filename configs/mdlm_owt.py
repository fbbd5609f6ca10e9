"""MDLM on OpenWebText (Sahoo et al. 2024; reference/teachers.md §0, §1, §5.1).

DiT small (768/12/12, cond 128, dropout 0.1), GPT-2 tokenizer (+[MASK] = 50257), L=1024
wrapped as [BOS] + 1022 tokens + [EOS], global batch 512, AdamW 3e-4, 2500 warm-up steps then
constant, clip 1.0, EMA 0.9999, 1M steps; validation on the last 100k documents.
Data: --config.data.path=/path/to/owt (.jsonl/.txt/.parquet files) or hf:openwebtext.
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="owt", path="hf:openwebtext", tokenizer="gpt2", seq_len=1024,
                wrap=True)
  c.model.update(dtype="bfloat16", time_conditioning=False)
  c.train.update(steps=1_000_000, global_batch_size=512, log_every=100, eval_every=10_000,
                 sample_every=10_000)
  c.eval.update(batch_size=16 * 8)
  c.sample.update(num_samples=64, batch_size=16, steps=1000)
  c.eval.evaluator = "gpt2-large"  # the papers' Gen PPL evaluator (offline variants: embedded)
  variants = {"smoke": base.offline(base.smoke), "tiny": base.offline(base.tiny)}
  return base.apply_variant(c, arg, variants)

