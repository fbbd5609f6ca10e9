"""IDLM-Duo on LM1B (bert-base-uncased, L=128): the IDLM-Duo recipe of configs/idlm_duo_owt.py
on the Duo LM1B teacher of configs/duo_lm1b.py (the paper has no LM1B runs; untuned).

python -m idlm_jax.main --config=configs/idlm_duo_lm1b.py --workdir=... \
    --config.distill.teacher=/path/to/duo_lm1b_workdir
"""

from configs import base, duo_lm1b, idlm_duo_owt, idlm_mdlm_owt


def get_config(arg=None):
  c = idlm_duo_owt.greedy(idlm_mdlm_owt.idlm(duo_lm1b.get_config()))
  c.diffusion.update(gamma_min=-3.55, gamma_max=-1.85, tau=1e-3)
  variants = {"smoke": base.with_teacher(idlm_mdlm_owt.small(base.offline(base.distill_smoke)),
                                         "configs/duo_lm1b.py:smoke"),
              "tiny": idlm_mdlm_owt.small(base.offline(base.tiny))}
  return base.apply_variant(c, arg, variants)
