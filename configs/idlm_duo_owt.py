"""IDLM-Duo on OpenWebText: distil a Duo (uniform-state) teacher (reference/idlm.md §2.3, §4).

python -m idlm_jax.main --config=configs/idlm_duo_owt.py --workdir=... \
    --config.distill.teacher=/path/to/duo_teacher_workdir

Student input: softmax of the Gaussian latent of real data at gamma in [-3.55, -1.85],
tau = 1e-3 (fixed); teacher and fake see softmax(w/tau) of the noised soft student output with
the pathwise gradient (distill.stop_path=True is the DMD-like ablation that diverges). lr 1e-6.
Sampling: the Duo ancestral sampler with the greedy tail (Duo^g), float64.
"""

from configs import base, duo_owt, idlm_mdlm_owt


def greedy(c):
  c.sample.update(noise_removal="argmax")  # Duo^g: argmax of the last prediction
  return c


def get_config(arg=None):
  c = greedy(idlm_mdlm_owt.idlm(duo_owt.get_config()))
  c.diffusion.update(gamma_min=-3.55, gamma_max=-1.85, tau=1e-3)
  variants = {"smoke": base.with_teacher(idlm_mdlm_owt.small(base.offline(base.distill_smoke)),
                                         "configs/duo_owt.py:smoke"),
              "tiny": idlm_mdlm_owt.small(base.offline(base.tiny)),
              "ancestral": lambda c: c.sample.update(noise_removal="ancestral") or c}
  return base.apply_variant(c, arg, variants)
