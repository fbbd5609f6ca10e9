"""One object per diffusion family (base.Process): `PROCESSES[diffusion.algo]`.

mdlm  absorbing, SUBS, NELBO (processes/mdlm.py)
sedd  score entropy, absorbing or uniform graph (processes/sedd.py)
udlm  uniform state, mean parameterization, closed-form NELBO (processes/uniform.py)
duo   UDLM's NELBO with the Gaussian-guided curriculum (processes/uniform.py)
"""

from idlm_jax import fields as F
from idlm_jax.diffusion.processes import uniform as _uniform
from idlm_jax.diffusion.processes.base import (InverseParts, Process, Renoised,
                                               valid_weights)
from idlm_jax.diffusion.processes.mdlm import MDLM
from idlm_jax.diffusion.processes.sedd import SEDD
from idlm_jax.diffusion.processes.uniform import UDLM, Duo
from idlm_jax.fields import ConfigError, Field

PROCESSES = {cls.name: cls for cls in (MDLM, SEDD, UDLM, Duo)}

FIELDS = {
    "diffusion.process": Field(
        "absorbing", 'forward process: "absorbing" ([MASK] state: MDLM, SEDD) or "uniform" '
        "(SEDD-uniform, UDLM, Duo).", choices=("absorbing", "uniform")),
    "diffusion.parameterization": Field(
        "subs", 'network output: "subs" (MDLM SUBS: zero mask logit, carry-over unmasking), '
        '"score" (SEDD log-score), "mean" (UDLM/Duo: softmax x_theta over all K states).',
        choices=("subs", "score", "mean")),
    "diffusion.schedule": Field("loglinear", "alpha_t = 1 - (1 - eps) t.",
                                choices=("loglinear",)),
    "diffusion.eps": Field(1e-3, "schedule eps; training samples t in [eps, 1].",
                           check=F.unit_open),
    "diffusion.antithetic": Field(True, "low-discrepancy t over the global batch."),
    "diffusion.algo": Field(
        "mdlm", 'the teacher family (diffusion/processes/): "mdlm" (absorbing, SUBS, NELBO), '
        '"sedd" (score entropy; process absorbing or uniform, parameterization "score"), '
        '"udlm" (uniform state, parameterization "mean", closed-form NELBO), "duo" (UDLM\'s '
        "NELBO with the Gaussian-guided curriculum). process, parameterization and "
        "model.time_conditioning must match the algo's process (Process.graphs, "
        "parameterization, time_conditioned). teachers.md §1-§4, §8.",
        choices=lambda: tuple(PROCESSES)),
    **_uniform.FIELDS,
}


def get(config, *, vocab_size: int, mask_id: int) -> Process:
  """The process of config.diffusion.algo for a model over `vocab_size` ids."""
  return PROCESSES[config.diffusion.algo].from_config(config, vocab_size=vocab_size,
                                                      mask_id=mask_id)


__all__ = ["ConfigError", "Duo", "FIELDS", "InverseParts", "MDLM", "PROCESSES", "Process",
           "Renoised", "SEDD", "UDLM", "get", "valid_weights"]
