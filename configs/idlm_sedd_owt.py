"""IDLM-SEDD on OpenWebText: distil an absorbing SEDD teacher (reference/idlm.md §2.5, §4).

python -m idlm_jax.main --config=configs/idlm_sedd_owt.py --workdir=... \
    --config.distill.teacher=/path/to/sedd_teacher_workdir

The IDLM gap of SEDD score entropies with soft target ratios (objectives/idlm.py); the paper's
SEDD code is unreleased: lr 3e-7, otherwise the IDLM-MDLM settings. Sampling: SEDD's analytic
sampler with the student in place of the teacher.
"""

from configs import base, idlm_mdlm_owt, sedd_owt


def get_config(arg=None):
  c = idlm_mdlm_owt.idlm(sedd_owt.get_config(), lr=3e-7)
  variants = {"smoke": base.with_teacher(idlm_mdlm_owt.small(base.offline(base.distill_smoke)),
                                         "configs/sedd_owt.py:smoke"),
              "tiny": idlm_mdlm_owt.small(base.offline(base.tiny))}
  return base.apply_variant(c, arg, variants)
