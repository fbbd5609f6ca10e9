"""How far the converted authors' models are from their official code's outputs (torch-free).

  python benchmarks/parity/authors_parity_errors.py     # -> benchmarks/results/authors_parity.json

The fixtures (tests/models/data/{sedd,idlm,didi}_tiny, written by make_authors_parity.py with
the official code) go through the converter (`convert.convert_all`, the CLI's path) into our
DIT / Discriminator; each output's largest absolute difference from the official float32
output is recorded with the output's largest magnitude. docs/converting.md's table is generated
from the JSON (`python -m benchmarks.tables`); tests/models/test_authors_parity.py asserts the
same outputs to 1e-4 with these helpers.
"""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax import convert as convert_cli  # noqa: E402
from idlm_jax import models  # noqa: E402
from idlm_jax.diffusion import sedd  # noqa: E402
from idlm_jax.models import discriminator as disc_lib  # noqa: E402

DATA = ROOT / "tests" / "models" / "data"
VOCAB = 40  # symbols-36 + specials; mask = id 39, the official absorbing state V - 1
TINY = ["data.synthetic.vocab_size=36", "data.synthetic.num_states=36",
        "data.tokenizer='symbols-36'", "model.hidden_size=16",
        "model.n_blocks=2", "model.n_heads=2", "model.cond_dim=8", "model.mlp_ratio=4",
        "model.time_conditioning=True", "ckpt.async_save=False", "log.tensorboard=False"]


def tiny_config(path="configs/synthetic_mdlm.py", *overrides):
  """The fixtures' tiny model in `path`'s config (mode 'sample': a distillation config in mode
  'train' would need its teacher)."""
  return config_lib.load_config(path, TINY + ["mode='sample'"] + list(overrides))


def fixture(name: str) -> dict:
  """A fixture's parity.npz: inputs and the official outputs."""
  return dict(np.load(DATA / name / "parity.npz"))


def dit(cfg, params):
  """Our DIT holding converted `params`."""
  abstract = nnx.eval_shape(lambda: models.build_model(cfg.model, VOCAB, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def disc(cfg, params):
  """Our Discriminator holding converted `params`."""
  graphdef, state = disc_lib.abstract(cfg.model, VOCAB)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def logits(cfg, params, f) -> np.ndarray:
  """The DIT's logits on the fixture's ids and sigma."""
  return np.asarray(dit(cfg, params)(jnp.asarray(f["ids"]), jnp.asarray(f["sigma"])))


def outputs() -> list:
  """(family, output, ours, official) for every compared output of the three fixtures."""
  out = []
  cfg = tiny_config()
  params, _, _ = convert_cli.convert_all(cfg, str(DATA / "sedd_tiny"))
  f = fixture("sedd_tiny")
  ids, sigma = jnp.asarray(f["ids"]), jnp.asarray(f["sigma"])
  score = sedd.log_score(dit(cfg, params)(ids, sigma), ids, sigma, "absorbing")
  out.append(("SEDD", "SEDD.forward log-score", np.asarray(score), f["log_score"]))

  ckpt = str(DATA / "idlm_tiny" / "idlm.ckpt")
  cfg = tiny_config("configs/idlm_synthetic.py")
  f = fixture("idlm_tiny")
  params, aux, _ = convert_cli.convert_all(cfg, ckpt)
  raw, _, _ = convert_cli.convert_all(cfg, ckpt, weights="state_dict")
  out += [("IDLM", "student logits (EMA)", logits(cfg, params, f), f["student"]),
          ("IDLM", "student logits (raw)", logits(cfg, raw, f), f["student_raw"]),
          ("IDLM", "fake logits (ema_fake)", logits(cfg, aux["fake"], f), f["fake"])]

  cfg = tiny_config("configs/didi_synthetic.py")
  f = fixture("didi_tiny")
  params, aux, _ = convert_cli.convert_all(cfg, str(DATA / "didi_tiny"))
  d = disc(cfg, aux["disc"])
  ids, sigma = jnp.asarray(f["ids"]), jnp.asarray(f["sigma"])
  soft = jax.nn.softmax(jnp.asarray(f["soft"]), axis=-1)  # the official embedding softmaxes
  out += [("DiDi-Instruct", "student logits", logits(cfg, params, f), f["student"]),
          ("DiDi-Instruct", "discriminator logits on ids", np.asarray(d(ids, sigma)),
           f["disc"]),
          ("DiDi-Instruct", "discriminator logits on softmaxed logits",
           np.asarray(d(soft, sigma)), f["disc_soft"])]
  return out


def main(out: str = str(ROOT / "benchmarks" / "results" / "authors_parity.json")) -> list:
  rows = [dict(family=fam, output=name, max_abs_error=float(np.abs(ours - official).max()),
               max_abs_value=float(np.abs(official).max()), elements=int(official.size))
          for fam, name, ours, official in outputs()]
  pathlib.Path(out).write_text(json.dumps(
      {"jax": jax.__version__, "device": jax.devices()[0].device_kind, "rows": rows},
      indent=1) + "\n")
  for r in rows:
    print(f"{r['family']:14s} {r['output']:45s} {r['max_abs_error']:.2e} "
          f"(values up to {r['max_abs_value']:.2f})")
  return rows


if __name__ == "__main__":
  main(*sys.argv[1:])
