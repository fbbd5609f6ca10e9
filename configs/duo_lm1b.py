"""Duo on LM1B (Sahoo et al. 2025, "The Diffusion Duality"; reference/teachers.md §4, §5.2).

python -m idlm_jax.main --config=configs/duo_lm1b.py --workdir=/tmp/duo_lm1b

Uniform-state diffusion with the Gaussian-guided curriculum: gamma_t linear in t over
[-3.5, -1.75], tau = 1e-3, curriculum for the first 500k steps (as the OWT script; [I] for
LM1B), then UDLM's closed-form NELBO with log-linear t in [1e-3, 1] up to 1M steps.
DiT small (768/12/12, cond 128, dropout 0.1), time-conditioned on sigma = -log alpha_t;
bert-base-uncased (K = 30522 states), one sentence per row padded to L = 128 (pads excluded
from the loss), global batch 512, AdamW 3e-4, 2500 warm-up then constant, clip 1, EMA
0.9999. Sampling: Duo ancestral posterior in float64 (`:greedy` for the greedy tail).
Data: TFDS lm1b (set data.tfds_data_dir if not default).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config()
  c.data.update(source="tfds_lm1b", tokenizer="bert-base-uncased", seq_len=128, wrap=False)
  c.model.update(dtype="bfloat16", time_conditioning=True)
  c.diffusion.update(algo="duo", process="uniform", parameterization="mean", antithetic=True,
                     gamma_min=-3.5, gamma_max=-1.75, tau=1e-3, curriculum_start=0,
                     curriculum_end=500_000)
  c.train.update(steps=1_000_000, global_batch_size=512, log_every=100, eval_every=10_000,
                 sample_every=10_000)
  c.eval.update(batch_size=512)
  c.sample.update(sampler="ancestral", noise_removal="ancestral", num_samples=64,
                  batch_size=64, steps=128, cache=False)
  c.eval.evaluator = "gpt2-large"  # the papers' Gen PPL evaluator (offline variants: embedded)
  variants = {"smoke": base.offline(curriculum_first_half(base.smoke)),
              "tiny": base.offline(curriculum_first_half(base.tiny)), "greedy": greedy,
              "wrap": wrap}
  return base.apply_variant(c, arg, variants)


def curriculum_first_half(variant):
  """Small variants: the curriculum for the first half of their steps, then the plain NELBO."""
  def apply(c):
    c = variant(c)
    c.diffusion.update(curriculum_start=0, curriculum_end=c.train.steps // 2)
    return c
  return apply


def greedy(c):
  """Duo's greedy tail: z = argmax x_theta at the end (sampling.noise_removal=greedy)."""
  c.sample.noise_removal = "argmax"
  return c


def wrap(c):
  """Duo's `lm1b-wrap`: sentences packed into 128-token rows."""
  c.data.wrap = True
  return c
