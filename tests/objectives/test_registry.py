"""Adding a method is one module, one config and one test: a toy objective registered here,
from the test, with its own config section, is validated and trained by the normal trainer
(nothing else in the package is edited)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax import fields as F
from idlm_jax import main, objectives
from idlm_jax.fields import ConfigError, Field
from idlm_jax.objectives.state import apply_gradients


def make_toy(ctx: objectives.Context) -> objectives.Objective:
  """Teacher pretraining with the loss scaled by toy.weight (any process works)."""
  weight, graphdef, proc = ctx.config.toy.weight, ctx.graphdef, ctx.process

  def loss_fn(params, batch, key):
    sums = proc.loss_sums(nnx.merge(graphdef, params), batch, key, train=True)
    return weight * sums["nelbo_sum"] / jnp.maximum(sums["tokens"], 1.0), sums["tokens"]

  def train_step(state, frozen, batch):
    key = jax.random.fold_in(state.key(), state.step)
    (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    state = apply_gradients(state, grads, ctx.tx, ctx.config.optim.ema)
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "tokens": tokens}

  def eval_step(params, frozen, batch, key):
    return proc.eval_sums(nnx.merge(graphdef, params), batch, key)

  return objectives.Objective(train_step=train_step, eval_step=eval_step)


def validate_toy(config):
  if config.toy.weight > 10 * config.optim.lr * 1e4:
    raise ConfigError("config.toy.weight: too large for optim.lr")


TOY = objectives.ObjectiveSpec(
    "toy", make_toy, "a test objective",
    fields={"toy.weight": Field(1.0, "scale of the loss", check=F.positive)},
    validate=validate_toy)


@pytest.fixture
def toy():
  objectives.register(TOY)
  yield TOY
  objectives.unregister("toy")


@pytest.mark.slow
def test_a_registered_objective_brings_its_config_and_trains(toy, tmp_path):
  assert "toy" in objectives.names() and config_lib.defaults().toy.weight == 1.0
  overrides = ["objective=toy", "toy.weight=0.5", "train.steps=2", "ckpt.async_save=False",
               f"data.cache_dir='{tmp_path / 'cache'}'", "log.tensorboard=False"]
  cfg = config_lib.load_config("configs/demo_teacher.py:smoke", overrides)
  run = main.run(cfg, tmp_path / "run", devices=jax.devices()[:1])
  losses = [m["loss"] for _, m in run.results["train"]["history"]]
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert int(run.state.step) == 2 and np.isfinite(run.results["val"]["nelbo"])
  with pytest.raises(ConfigError, match=r"config\.toy\.weight: must be positive"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["objective=toy", "toy.weight=-1.0"])
  with pytest.raises(ConfigError, match=r"config\.toy\.weight: too large"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["objective=toy", "toy.weight=1e9"])


def test_unknown_objective_names_the_registered_ones():
  with pytest.raises(ConfigError, match=r"config\.objective: 'nope' is not one of .*'idlm'"):
    config_lib.load_config("configs/demo_teacher.py:smoke", ["objective=nope"])
