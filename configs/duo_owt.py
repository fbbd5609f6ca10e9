"""Duo on OpenWebText (Sahoo et al. 2025; reference/teachers.md §4.3 paper-run script, §5.1).

Gaussian-guided curriculum with gamma in [-3.55, -1.85], tau = 1e-3, from step 0 to 500k,
then UDLM's NELBO with log-linear t in [1e-3, 1] to 1M steps. DiT small (768/12/12, cond
128, dropout 0.1), time-conditioned; GPT-2 tokenizer with K = 50258 states (GPT-2 + the
appended id 50257, a valid token of the uniform prior), L = 1024 wrapped, global batch 512,
AdamW 3e-4, 2500 warm-up then constant, clip 1, EMA 0.9999. Sampling: Duo ancestral, float64,
1024 steps (`:greedy` for the greedy tail).
Data: --config.data.path=/path/to/owt (.jsonl/.txt/.parquet files) or hf:openwebtext.
"""

from configs import base, duo_lm1b


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="owt", path="hf:openwebtext", tokenizer="gpt2", seq_len=1024, wrap=True)
  c.model.update(dtype="bfloat16", time_conditioning=True)
  c.diffusion.update(algo="duo", process="uniform", parameterization="mean", antithetic=True,
                     gamma_min=-3.55, gamma_max=-1.85, tau=1e-3, curriculum_start=0,
                     curriculum_end=500_000)
  c.train.update(steps=1_000_000, global_batch_size=512, log_every=100, eval_every=10_000,
                 sample_every=10_000)
  c.eval.update(batch_size=16 * 8)
  c.sample.update(sampler="ancestral", noise_removal="ancestral", num_samples=64,
                  batch_size=16, steps=1024, cache=False)
  c.eval.evaluator = "gpt2-large"  # the papers' Gen PPL evaluator (offline variants: embedded)
  variants = {"smoke": base.offline(duo_lm1b.curriculum_first_half(base.smoke)),
              "tiny": base.offline(duo_lm1b.curriculum_first_half(base.tiny)),
              "greedy": duo_lm1b.greedy}
  return base.apply_variant(c, arg, variants)
