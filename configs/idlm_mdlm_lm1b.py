"""IDLM-MDLM on LM1B (bert-base-uncased, L=128): the paper reports only OpenWebText, so this is
the IDLM-MDLM recipe (configs/idlm_mdlm_owt.py) applied to the LM1B teacher of
configs/mdlm_lm1b.py; hyper-parameters are the OWT ones, untuned for LM1B.

python -m idlm_jax.main --config=configs/idlm_mdlm_lm1b.py --workdir=... \
    --config.distill.teacher=/path/to/mdlm_lm1b_workdir
"""

from configs import base, idlm_mdlm_owt, mdlm_lm1b


def get_config(arg=None):
  c = idlm_mdlm_owt.idlm(mdlm_lm1b.get_config())
  c.distill.report_teacher_steps = "1000"
  variants = {"smoke": base.with_teacher(idlm_mdlm_owt.small(base.offline(base.distill_smoke)),
                                         "configs/mdlm_lm1b.py:smoke"),
              "tiny": idlm_mdlm_owt.small(base.offline(base.tiny))}
  return base.apply_variant(c, arg, variants)
