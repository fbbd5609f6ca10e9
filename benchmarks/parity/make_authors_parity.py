"""Generate the authors'-checkpoint parity fixtures of tests/models/test_authors_parity.py.

The OFFICIAL model code runs here, imported at run time from the repositories given on the
command line; nothing of it is stored in this repository. Three families, each a tiny model
with random weights written in the layout its authors release, plus `parity.npz` (inputs and
the official outputs):

  sedd_tiny/  louaaron/Score-Entropy-Discrete-Diffusion `model/transformer.py` SEDD (absorbing,
              scale_by_sigma): config.json + pytorch_model.bin (torch.save of the state_dict,
              what `SEDD.from_pretrained` reads); npz: ids, sigma, log_score = SEDD.forward.
  idlm_tiny/  David-cripto/IDLM `models/dit.py` DIT (student and fake model) and `models/ema.py`:
              idlm.ckpt, the Lightning file IDLM's trainer saves (state_dict with `backbone.*`
              and `fake_model.*`, `ema` = the student's EMA, `ema_fake` = the fake's, as
              `MDLM.on_save_checkpoint` writes them; the teacher is dropped on save);
              npz: ids, sigma, student (EMA weights), student_raw (state_dict weights), fake
              (ema_fake weights).
  didi_tiny/  haoyangzheng-ai/didi-instruct `models/dit.py` DIT and `algo.py`
              DiDiInstruct.DiscriminatorHead (the class body alone is executed: algo.py needs
              Lightning): model.safetensors (the student_ema, no prefix) + discriminator.safetensors
              (the DIT whose output_layer is the spectral-norm head), the files of the HF
              release that `models/hf_to_ckpt.py` reads; npz: ids, sigma, student, disc (the
              head's [B, L] logit in eval mode, after 3 training-mode forwards moved the power
              iteration's u and v), soft (logits fed to the discriminator, which softmaxes
              them), disc_soft.

  PYTHONPATH=SHIM python benchmarks/parity/make_authors_parity.py --sedd SEDD_REPO \\
      --idlm IDLM_REPO --didi DIDI_REPO --out tests/models/data

SHIM: a folder with a `flash_attn` package (flash-attention's own `layers/rotary.py`, which
the DiDi/IDLM code calls through `apply_rotary_emb_torch`, with its Triton kernel stubbed; plain softmax
attention under `flash_attn_interface.flash_attn_varlen_qkvpacked_func`; SEDD runs its own
torch rotary, the path it takes without flash_attn's rotary module) and an `omegaconf`
stub (configs are passed as attribute objects). Needs torch, einops, huggingface_hub.

Weights are drawn LARGE ENOUGH TO MATTER: LayerNorm weights U(0.9, 1.1), embeddings N(0, 1),
linear weights N(0, 1/fan_in), biases N(0, 0.1^2) (adaLN included: the zero init would make
every block the identity), so a wrong rotary convention, swapped projections or a wrong
spectral-norm estimate change the outputs by far more than the tests' 1e-4.
"""

import argparse
import ast
import importlib
import json
import math
import pathlib
import sys
import types

import numpy as np
import torch

from idlm_jax.models import readers

B, L = 2, 12
V = 40  # the absorbing state (MASK) is the last id, V - 1
D, N_HEADS, COND, N_BLOCKS = 16, 2, 8, 2


def namespace(d: dict):
  """Nested attribute config (what the official code reads as config.model.hidden_size)."""
  return types.SimpleNamespace(**{k: namespace(v) if isinstance(v, dict) else v
                                  for k, v in d.items()})


def import_from(repo: pathlib.Path, module: str):
  """`module` (dotted) of the official repository `repo`."""
  sys.path.insert(0, str(repo.resolve()))
  try:
    for name in [m for m in sys.modules if m == "model" or m.startswith(("model.", "models"))]:
      del sys.modules[name]  # SEDD's `model` and IDLM's/DiDi's `models` packages
    return importlib.import_module(module)
  finally:
    sys.path.pop(0)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
  """Every parameter drawn as in the module docstring (by name and rank)."""
  gen = torch.Generator().manual_seed(seed)
  for name, p in model.named_parameters():
    if p.ndim == 1 and "norm" in name:
      p.copy_(0.9 + 0.2 * torch.rand(p.shape, generator=gen))
    elif p.ndim == 1:
      p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    elif name.endswith("embedding"):
      p.copy_(torch.randn(p.shape, generator=gen))
    else:  # nn.Linear weight [out, in] (weight_orig under spectral_norm)
      p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def inputs(seed: int):
  """ids [B, L] with about 40% MASK (V - 1), sigma [B] in (0.2, 3)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, V - 1, (B, L))
  ids = np.where(rng.random((B, L)) < 0.4, V - 1, ids)
  return ids, rng.uniform(0.2, 3.0, (B,)).astype(np.float32)


def numpy_sd(module: torch.nn.Module, prefix: str = "") -> dict:
  return {prefix + k: v.detach().float().numpy().copy() for k, v in module.state_dict().items()}


@torch.no_grad()
def make_sedd(repo: pathlib.Path, out: pathlib.Path) -> None:
  transformer = import_from(repo, "model.transformer")
  cfg = {"tokens": V - 1, "graph": {"type": "absorb"},
         "model": {"hidden_size": D, "cond_dim": COND, "length": L, "n_blocks": N_BLOCKS,
                   "n_heads": N_HEADS, "scale_by_sigma": True, "dropout": 0.1}}
  model = transformer.SEDD(namespace(cfg)).eval()
  randomize(model, seed=0)
  ids, sigma = inputs(seed=1)
  # SEDD's rotary tries flash_attn's CUDA kernel and falls back to its own torch code when
  # `import flash_attn.layers.rotary` fails (it slices cos/sin before calling the kernel, so a
  # kernel that fails after the import would reach the fallback with half-width tables).
  saved = sys.modules.get("flash_attn.layers.rotary")
  sys.modules["flash_attn.layers.rotary"] = None
  try:
    log_score = model(torch.as_tensor(ids), torch.as_tensor(sigma)).float().numpy()
  finally:
    sys.modules.pop("flash_attn.layers.rotary")
    if saved is not None:
      sys.modules["flash_attn.layers.rotary"] = saved
  folder = out / "sedd_tiny"
  folder.mkdir(parents=True, exist_ok=True)
  torch.save(model.state_dict(), folder / "pytorch_model.bin")
  (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
  np.savez_compressed(folder / "parity.npz", ids=ids, sigma=sigma, log_score=log_score)


def dit_config():
  return namespace({"algo": {"causal_attention": False},
                    "model": {"hidden_size": D, "cond_dim": COND, "n_heads": N_HEADS,
                              "n_blocks": N_BLOCKS, "dropout": 0.1, "scale_by_sigma": False,
                              "length": L}})


@torch.no_grad()
def make_idlm(repo: pathlib.Path, out: pathlib.Path) -> None:
  dit = import_from(repo, "models.dit")
  ema_lib = import_from(repo, "models.ema")
  student, fake = dit.DIT(dit_config(), V).eval(), dit.DIT(dit_config(), V).eval()
  randomize(student, seed=2)
  randomize(fake, seed=3)
  # EMA copies that differ from the live weights, tracked with the official EMA class
  ema = ema_lib.ExponentialMovingAverage(student.parameters(), decay=0.9999)
  ema_fake = ema_lib.ExponentialMovingAverage(fake.parameters(), decay=0.9999)
  shadow = dit.DIT(dit_config(), V)
  for e, seed in ((ema, 4), (ema_fake, 5)):
    randomize(shadow, seed)
    e.shadow_params = [p.detach().clone() for p in shadow.parameters()]
    e.num_updates = 123
  ids, sigma = inputs(seed=6)
  run = lambda m: m(torch.as_tensor(ids), torch.as_tensor(sigma)).float().numpy()
  student_raw = run(student)
  # (cloned: state_dict() shares storage with the parameters that copy_to overwrites below)
  state_dict = {**{f"backbone.{k}": v.clone() for k, v in student.state_dict().items()},
                **{f"fake_model.{k}": v.clone() for k, v in fake.state_dict().items()}}
  ckpt = {"epoch": 0, "global_step": 123, "pytorch-lightning_version": "2.5.3",
          "state_dict": state_dict, "ema": ema.state_dict(), "ema_fake": ema_fake.state_dict(),
          "hyper_parameters": {"config": {"adversarial_distill": {"is_distill": True}}}}
  ema.copy_to(student.parameters())
  ema_fake.copy_to(fake.parameters())
  folder = out / "idlm_tiny"
  folder.mkdir(parents=True, exist_ok=True)
  torch.save(ckpt, folder / "idlm.ckpt")
  np.savez_compressed(folder / "parity.npz", ids=ids, sigma=sigma, student=run(student),
                      student_raw=student_raw, fake=run(fake))


def discriminator_head_class(repo: pathlib.Path):
  """DiDiInstruct.DiscriminatorHead from algo.py, executing only that class body."""
  tree = ast.parse((repo / "algo.py").read_text())
  didi = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DiDiInstruct")
  head = next(n for n in didi.body
              if isinstance(n, ast.ClassDef) and n.name == "DiscriminatorHead")
  scope = {"torch": torch, "nn": torch.nn}
  exec(compile(ast.Module([head], []), str(repo / "algo.py"), "exec"), scope)
  return scope["DiscriminatorHead"]


@torch.no_grad()
def make_didi(repo: pathlib.Path, out: pathlib.Path) -> None:
  dit = import_from(repo, "models.dit")
  student, disc = dit.DIT(dit_config(), V).eval(), dit.DIT(dit_config(), V)
  disc.output_layer = discriminator_head_class(repo)(D)  # as DiDiInstruct.__init__ does
  randomize(student, seed=7)
  randomize(disc, seed=8)
  ids, sigma = inputs(seed=9)
  soft = np.random.default_rng(10).normal(0.0, 2.0, (B, L, V)).astype(np.float32)
  disc.train()  # torch's spectral_norm moves u and v by one power iteration per train forward
  for _ in range(3):
    disc(torch.as_tensor(ids), torch.as_tensor(sigma))
  disc.eval()
  run = lambda m, x: m(torch.as_tensor(x), torch.as_tensor(sigma)).float().numpy()
  folder = out / "didi_tiny"
  folder.mkdir(parents=True, exist_ok=True)
  readers.write_safetensors(folder / "model.safetensors", numpy_sd(student), {"format": "pt"})
  readers.write_safetensors(folder / "discriminator.safetensors", numpy_sd(disc),
                            {"format": "pt"})
  np.savez_compressed(folder / "parity.npz", ids=ids, sigma=sigma, student=run(student, ids),
                      disc=run(disc, ids)[..., 0], soft=soft, disc_soft=run(disc, soft)[..., 0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sedd", type=pathlib.Path, required=True)
  parser.add_argument("--idlm", type=pathlib.Path, required=True)
  parser.add_argument("--didi", type=pathlib.Path, required=True)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("tests/models/data"))
  args = parser.parse_args()
  torch.manual_seed(0)
  make_sedd(args.sedd, args.out)
  make_idlm(args.idlm, args.out)
  make_didi(args.didi, args.out)


if __name__ == "__main__":
  main()
