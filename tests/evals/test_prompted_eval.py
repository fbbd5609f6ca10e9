"""Prompted evaluation of a LLaDA checkpoint folder (evals/prompted_eval.py, configs/llada_8b.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax import main
from idlm_jax.data import chat
from idlm_jax.evals import prompted_eval, reasoning_eval
from idlm_jax.fields import ConfigError
from idlm_jax.models import hf_dllm
from idlm_jax.train import parallel


def test_llada_8b_config_resolves_to_r2_settings():
  cfg = config_lib.load_config("configs/llada_8b.py", [
      "eval.prompted.checkpoint=/local/LLaDA-8B-Instruct"])
  config_lib.validate(cfg)
  assert cfg.mode == "eval_prompted" and cfg.eval.prompted.chat_template == "llada"
  assert cfg.eval.prompted.checkpoint == "/local/LLaDA-8B-Instruct"
  o = reasoning_eval.options_from_config(cfg)
  assert (o.gen_length, o.block_length, o.steps, o.threshold, o.cache) == (256, 32, 0, 0.9,
                                                                           "dual")
  assert o.rules == ("confidence_cluster", "token_cluster", "temporal")
  assert (o.cluster_window, o.spatial_threshold, o.temporal_steps, o.temporal_threshold,
          o.temporal_eval) == (3, 0.8, 3, 0.8, "last")
  v = reasoning_eval.options_from_config(config_lib.load_config("configs/llada_8b.py:vanilla"))
  assert (v.steps, v.threshold, v.cache, v.rules) == (32, 0.0, "none", ())
  t = reasoning_eval.options_from_config(config_lib.load_config("configs/llada_8b.py:threshold"))
  assert t.rules == () and t.cache == "dual"
  with pytest.raises(ConfigError, match="user_template"):
    config_lib.load_config("configs/llada_8b.py", ["eval.prompted.user_template=no_slot"])


def test_missing_checkpoint_is_a_one_line_config_error(tmp_path):
  cfg = config_lib.load_config("configs/llada_8b.py")
  with pytest.raises(ConfigError, match="checkpoint: give a path"):
    main.run(cfg, tmp_path / "run")
  cfg = config_lib.load_config("configs/llada_8b.py", [f"eval.prompted.checkpoint={tmp_path}/x"])
  with pytest.raises(ConfigError, match="does not exist"):
    main.run(cfg, tmp_path / "run")


@pytest.mark.slow  # the fast subset (-m 'not slow') stays under 3 minutes
def test_load_checkpoint_is_sharded_and_equals_load_pretrained():
  """The tiny fixture on 8 devices (FSDP): same logits as the single-device loader, with the
  parameters split over the mesh."""
  mesh = parallel.make_mesh(config_lib.load_config("configs/llada_8b.py").parallel)
  assert mesh.shape["fsdp"] == len(jax.devices())
  cfg, graphdef, params = prompted_eval.load_checkpoint(
      prompted_eval.TINY, mesh, dtype=jnp.float32, param_dtype=jnp.float32, attention="xla")
  kernel = params["layers"][0]["q_proj"]["kernel"]
  assert len({s.device for s in kernel.addressable_shards}) == len(jax.devices())
  assert kernel.addressable_shards[0].data.shape[0] == cfg.d_model // len(jax.devices())
  reference = hf_dllm.load_pretrained(prompted_eval.TINY, attention="xla")
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)))
  got = nnx.merge(graphdef, params)(ids)
  np.testing.assert_allclose(np.asarray(got), np.asarray(reference(ids)), rtol=1e-5, atol=1e-4)
  _, _, half = prompted_eval.load_checkpoint(prompted_eval.TINY, mesh, dtype=jnp.bfloat16,
                                             param_dtype=jnp.bfloat16, attention="xla")
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(half))


def test_smoke_variant_runs_and_writes_results(tmp_path):
  """`configs/llada_8b.py:smoke` end to end through main.run on the 8-device mesh."""
  run = main.run(config_lib.load_config("configs/llada_8b.py:smoke"), tmp_path / "run")
  res = run.results["prompted"]
  saved = json.loads((tmp_path / "run" / "prompted_eval.json").read_text())
  samples = [json.loads(x) for x in
             (tmp_path / "run" / "prompted_samples.jsonl").read_text().splitlines()]
  assert res["n"] == saved["n"] == len(samples) == len(prompted_eval.FIXTURE_PROBLEMS)
  assert [s["gold"] for s in samples] == [chat.gold_number(a)
                                          for _, a in prompted_eval.FIXTURE_PROBLEMS]
  assert 2 <= res["nfe"] <= 16 and sum(res["commits"].values()) == 6 * 16
  assert 0 <= res["generated_tokens"] <= 6 * 16 and res["tokens_per_s"] >= 0
  assert all(s["correct"] == chat.same_number(s["prediction"], s["gold"]) for s in samples)
  # the prompt width is the longest chat-templated prompt of the fixture
  tok = chat.llada_tokenizer(prompted_eval.TINY)
  width = max(len(tok.encode(chat.prompt_text(q, "llada")))
              for q, _ in prompted_eval.FIXTURE_PROBLEMS)
  assert saved["prompt_width"] == width


def test_check_tokens_rejects_a_foreign_mask_id():
  cfg = hf_dllm.read_config(prompted_eval.TINY)
  tok = chat.llada_tokenizer(prompted_eval.TINY)
  prompted_eval.check_tokens(cfg, tok)
  with pytest.raises(ConfigError, match="mask_token_id"):
    prompted_eval.check_tokens(cfg.replace(mask_token_id=0), tok)


def test_shipped_fixture_is_what_build_fixture_writes(tmp_path):
  built = prompted_eval.build_fixture(tmp_path / "tiny")
  for name in ("config.json", "model.safetensors", "tokenizer.json", "prompts.jsonl"):
    assert (built / name).read_bytes() == (prompted_eval.TINY / name).read_bytes(), name
