"""Exact-match evaluation with block decoding (evals/reasoning_eval.py)."""

import jax
import numpy as np
import pytest
from flax import nnx

from idlm_jax import config as config_lib
from idlm_jax.data import reasoning
from idlm_jax.data.tokenizers import get_tokenizer
from idlm_jax.decoding import block as block_lib
from idlm_jax.evals import reasoning_eval
from idlm_jax.models import dllm


def test_response_lengths_stop_at_first_eos():
  t = np.array([[5, 6, 2, 2, 7], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
  assert reasoning_eval.response_lengths(t, 2).tolist() == [2, 5, 0]


def test_options_from_config():
  cfg = config_lib.load_config("configs/reasoning_llada.py", [
      "eval.reasoning.rules='temporal,token_cluster'", "eval.reasoning.cache='dual'",
      "sample.r2.temporal_steps=2"])
  o = reasoning_eval.options_from_config(cfg)
  assert o.rules == ("temporal", "token_cluster") and o.cache == "dual"
  assert o.temporal_steps == 2 and o.gen_length == 32 and o.block_length == 16
  with pytest.raises(config_lib.ConfigError):
    config_lib.load_config("configs/reasoning_llada.py", ["eval.reasoning.rules='threshold'"])


def test_evaluate_scores_decoded_prompts():
  """A random tiny LLaDA on 6 prompts: every count is consistent (accuracy is ~0)."""
  tok = get_tokenizer("reasoning")
  cfg = dllm.tiny("llada").replace(vocab_size=tok.model_vocab_size, embedding_size=None,
                                   mask_token_id=tok.mask_id)
  graphdef, params = nnx.split(dllm.build(cfg, seed=0))
  _, prompts = reasoning.load_reasoning_split("test", 6, seq_len=64, families=["arithmetic"],
                                              tokenizer=tok)
  o = block_lib.BlockOptions(gen_length=8, block_length=4, steps=0, threshold=0.9)
  res = reasoning_eval.evaluate(graphdef, params, prompts, tok, o, width=16, batch_size=4,
                                record=True)
  assert res["n"] == 6 and 0.0 <= res["accuracy"] <= 1.0
  assert 2 <= res["nfe"] <= 8 and sum(res["commits"].values()) == 6 * 8
  assert res["record"]["tokens"].shape == (6, 24) and res["tokens_per_s"] > 0
