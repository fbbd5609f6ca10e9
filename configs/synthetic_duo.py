"""A Duo (uniform-state) teacher on the synthetic HMM language, the DCD/IDLM-Duo side of the
synthetic results (docs/baselines.md; trained with --config.train.steps=2000 there).

python -m idlm_jax.main --config=configs/synthetic_duo.py --workdir=/tmp/syn_duo
python -m idlm_jax.main --config=configs/dcd_duo_owt.py:synthetic --workdir=/tmp/dcd_syn \
    --config.distill.teacher=/tmp/syn_duo

Same data, model size and evaluation as configs/synthetic_mdlm.py (exact NLL of samples);
time-conditioned DiT; the Gaussian-guided curriculum (gamma in [-3.55, -1.85], tau 1e-3) for
the first half of training, then UDLM's NELBO. Samplers: Duo ancestral, float64, greedy tail.
Variants: `:smoke`, `:tiny`.
"""

from configs import synthetic_mdlm


def get_config(arg=None):
  c = synthetic_mdlm.get_config(arg)
  c.model.time_conditioning = True
  c.diffusion.update(algo="duo", process="uniform", parameterization="mean", antithetic=True,
                     gamma_min=-3.55, gamma_max=-1.85, tau=1e-3, curriculum_start=0,
                     curriculum_end=c.train.steps // 2)
  c.sample.update(sampler="ancestral", noise_removal="argmax", cache=False)
  return c
