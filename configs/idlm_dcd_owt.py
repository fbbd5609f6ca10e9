"""IDLM-DCD on OpenWebText: IDLM started from a Duo-DCD-distilled student (idlm.md §5.1).

python -m idlm_jax.main --config=configs/idlm_dcd_owt.py --workdir=... \
    --config.distill.teacher=/path/to/duo_dcd_workdir   # converted s-sahoo/duo-distilled

The DCD checkpoint is both the teacher and the initial student/fake (the paper's IDLM-DCD);
everything else as IDLM-Duo (greedy tail; `:ancestral` for Duo^a).
"""

from configs import idlm_duo_owt


def get_config(arg=None):
  return idlm_duo_owt.get_config(arg)
