"""Training objectives, each a module that registers itself (objectives/base.py).

diffusion    teacher pretraining with the diffusion.algo loss (pretrain.py)
ar           causal LM pretraining: the Gen PPL evaluator (ar.py)
idlm         IDLM inverse distillation (idlm.py)
didi         DiDi-Instruct (didi.py)
sdtt, dcd    the SDTT and Duo-DCD baselines (sdtt.py, dcd.py; rounds in progressive.py)
r2_finetune  fine-tuning on recorded R2 trajectories (r2_finetune.py)
llada_sft    LLaDA's masked-diffusion SFT of prompted rows (llada_sft.py)
The train state, optimizer and EMA they update are objectives/state.py.
"""

# (imported in the order config.objective lists them)
from idlm_jax.objectives import pretrain, ar, idlm, sdtt, dcd, didi, r2_finetune, llada_sft  # noqa: F401,I001
from idlm_jax.objectives.base import (Context, Objective, ObjectiveSpec, fields, get, names,
                                      register, unregister, validate)

__all__ = ["Context", "Objective", "ObjectiveSpec", "fields", "get", "names", "register",
           "unregister", "validate"]
