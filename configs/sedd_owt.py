"""SEDD on OpenWebText (Lou et al. 2024; reference/teachers.md §2.3, §3, §9 item 9).

Score entropy on the absorbing graph (`:uniform` for the uniform graph), t ~ U(1e-3, 1) (not
antithetic, as SEDD), network time-conditioned on the total noise sigma(t) = -log(1-(1-eps)t)
with SEDD's output transform; trained as the MDLM-codebase retrain the MDLM/Duo tables use
(`sedd.ckpt`): DiT small (768/12/12, cond 128, dropout 0.1), GPT-2 tokenizer (+[MASK] =
50257), L = 1024 wrapped, global batch 512, AdamW 3e-4, 2500 warm-up then constant, clip 1,
EMA 0.9999, 1M steps (SEDD's own run: 1.3M). Sampling: the analytic (Tweedie tau-leaping)
sampler, 1024 steps, float64, sampled final denoise; `--config.sample.sampler=euler`.
Data: --config.data.path=/path/to/owt or hf:openwebtext.
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="owt", path="hf:openwebtext", tokenizer="gpt2", seq_len=1024, wrap=True)
  c.model.update(dtype="bfloat16", time_conditioning=True)
  c.diffusion.update(algo="sedd", process="absorbing", parameterization="score",
                     antithetic=False)
  c.train.update(steps=1_000_000, global_batch_size=512, log_every=100, eval_every=10_000,
                 sample_every=10_000)
  c.eval.update(batch_size=16 * 8)
  c.sample.update(sampler="analytic", noise_removal="ancestral", num_samples=64,
                  batch_size=16, steps=1024, cache=False)
  c.eval.evaluator = "gpt2-large"  # the papers' Gen PPL evaluator (offline variants: embedded)
  variants = {"smoke": base.offline(base.smoke), "tiny": base.offline(base.tiny),
              "uniform": uniform, "uniform_smoke": base.offline(_both(base.smoke)),
              "uniform_tiny": base.offline(_both(base.tiny))}
  return base.apply_variant(c, arg, variants)


def uniform(c):
  """SEDD-uniform: the uniform graph (every token can change; starts from uniform tokens)."""
  c.diffusion.process = "uniform"
  return c


def _both(variant):
  return lambda c: uniform(variant(c))
