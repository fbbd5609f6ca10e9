"""Duo-DCD on OpenWebText (reference/teachers.md §4.4): discrete consistency distillation of a
Duo teacher, the baseline that IDLM-DCD starts from.

python -m idlm_jax.main --config=configs/dcd_duo_owt.py --workdir=gs://.../duo_dcd \
    --config.distill.teacher=/path/to/duo_teacher_workdir   # e.g. a converted s-sahoo/duo
python -m idlm_jax.main --config=configs/idlm_dcd_owt.py --workdir=gs://.../idlm_dcd \
    --config.distill.teacher=gs://.../duo_dcd              # IDLM-DCD from this student

Paper settings (Duo `ch-1` scripts/distil_owt.sh): student and round teacher start as copies of
the Duo teacher (DiT small, GPT-2 + [PAD] = 50258 states, L=1024); step delta = 2^r/512 in round
r, 5 rounds of 10k steps (delta 1/512 -> 16/512), the teacher re-copied from the raw student
every round; gamma linear in t over [-4, -1]; one shared Gaussian draw per trajectory; reverse
KL on every token, float32 loss; global batch 128, AdamW lr 6e-5, 500 warm-up then constant,
clip 1, EMA 0.999. Sampling: Duo ancestral, float64 (validation at 32 steps; `:greedy` for the
greedy tail the paper recommends with few steps).
Variants: `:smoke`, `:tiny` (embedded corpus, small model: the teacher must have the same
size); `:demo` trains a small Duo teacher on the embedded corpus first (`:demo_teacher`, into
<workdir>/teacher) and distils it, on a CPU; `:synthetic` distils the synthetic-HMM Duo
teacher of configs/synthetic_duo.py (exact NLL; default: the shipped one, "synthetic_duo").
"""

from configs import base, demo_teacher, duo_lm1b, duo_owt, idlm_mdlm_owt, synthetic_duo
from configs import synthetic_mdlm


def dcd(c, round_steps=10_000, num_rounds=5, T=512):
  """The DCD settings shared by every dcd_* variant (teachers.md §4.4)."""
  c.objective = "dcd"
  c.diffusion.update(gamma_min=-4.0, gamma_max=-1.0)  # the distillation config's gamma range
  c.distill.dcd.update(T=T, round_steps=round_steps, num_rounds=num_rounds,
                       divergence="kl-bwd", teacher_ema=False, loss_precision="float32")
  c.train.steps = round_steps * num_rounds
  c.ckpt.update(every=round_steps, keep=num_rounds + 1)  # every round's student
  return c


def paper(c):
  c = dcd(c)
  c.optim.update(lr=6e-5, warmup_steps=500, decay="constant", grad_clip=1.0, ema=0.999)
  c.train.update(global_batch_size=128, eval_every=10_000, sample_every=10_000)
  c.distill.update(monitor_every=10_000, monitor_steps="8,16,32", monitor_samples=64,
                   best_metric="none", report_teacher_steps="1024")
  c.eval.update(sampling_steps="8,16,32,64,128,256,512,1024", num_samples=256)
  c.sample.update(steps=32)
  return c


def small(variant):
  """Smoke/tiny: the small variant's model and data, 3 rounds of a third of its steps."""
  def apply(c):
    c = idlm_mdlm_owt.small(variant)(c)
    return dcd(c, round_steps=max(c.train.steps // 3, 1), num_rounds=3, T=16)
  return apply


def demo_teacher_duo(c):
  """A Duo teacher at the demo teacher's size on the embedded corpus (1000 steps, CPU)."""
  c = demo_teacher.short(demo_teacher.get_config())
  c.model.time_conditioning = True
  c.diffusion.update(algo="duo", process="uniform", parameterization="mean", gamma_min=-3.55,
                     gamma_max=-1.85, tau=1e-3, curriculum_start=0, curriculum_end=500)
  c.sample.update(sampler="ancestral", noise_removal="argmax", cache=False, steps=64)
  return c


def demo(c):
  """DCD of the `:demo_teacher` Duo (trained first into <workdir>/teacher): 3 rounds of 100."""
  c = dcd(demo_teacher_duo(c), round_steps=100, num_rounds=3, T=64)
  c.distill.update(teacher="scratch:configs/dcd_duo_owt.py:demo_teacher", monitor_every=100,
                   monitor_steps="8,16", monitor_samples=32, best_metric="none",
                   report_teacher_steps="64,16")
  c.optim.update(lr=1e-4, warmup_steps=20, decay="constant", grad_clip=1.0, ema=0.99)
  c.train.update(global_batch_size=32, log_every=25, eval_every=0, sample_every=0)
  c.eval.update(sampling_steps="16,8,4", num_samples=64)
  c.sample.update(steps=8)
  return c


def synthetic(c):
  """DCD of the synthetic-HMM Duo teacher: 4 rounds of 100 steps, delta 1/64 -> 8/64."""
  c = dcd(synthetic_duo.get_config(), round_steps=100, num_rounds=4, T=64)
  return synthetic_mdlm.distillation(c, monitor_every=100, grad_clip=1.0,
                                    teacher="synthetic_duo")


def get_config(arg=None):
  c = paper(duo_owt.get_config())
  variants = {"smoke": base.with_teacher(small(base.offline(base.distill_smoke)),
                                         "configs/duo_owt.py:smoke"),
              "tiny": small(base.offline(base.tiny)),
              "demo": demo, "demo_teacher": demo_teacher_duo, "greedy": duo_lm1b.greedy,
              "synthetic": synthetic}
  return base.apply_variant(c, arg, variants)
