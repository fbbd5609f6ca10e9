"""UDLM on LM1B (Schiff et al. 2024; reference/teachers.md §4.1-4.2, §8).

Uniform-state diffusion, mean parameterization, time-conditioned DiT small (768/12/12, cond
128, dropout 0.1), the closed-form continuous-time NELBO (every position contributes) with
log-linear alpha_t and antithetic t in [1e-3, 1]; bert-base-uncased (K = 30522), one
sentence per row padded to L = 128, global batch 512, AdamW 3e-4, 2500 warm-up then
constant, clip 1, EMA 0.9999, 1M steps. Sampling: the uniform-state ancestral posterior
(float64), 128 steps. Data: TFDS lm1b.
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="tfds_lm1b", tokenizer="bert-base-uncased", seq_len=128, wrap=False)
  c.model.update(dtype="bfloat16", time_conditioning=True)
  c.diffusion.update(algo="udlm", process="uniform", parameterization="mean", antithetic=True)
  c.train.update(steps=1_000_000, global_batch_size=512, log_every=100, eval_every=10_000,
                 sample_every=10_000)
  c.eval.update(batch_size=512)
  c.sample.update(sampler="ancestral", noise_removal="ancestral", num_samples=64,
                  batch_size=64, steps=128, cache=False)
  c.eval.evaluator = "gpt2-large"  # the papers' Gen PPL evaluator (offline variants: embedded)
  variants = {"smoke": base.offline(base.smoke), "tiny": base.offline(base.tiny)}
  return base.apply_variant(c, arg, variants)
