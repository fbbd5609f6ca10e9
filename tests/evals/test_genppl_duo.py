"""Gen PPL protocol "duo" vs outputs recorded from Duo's official metrics code.

tests/evals/data/duo_genppl/ holds diffusion samples (GPT-2 rows without EOS, with EOS inside,
[EOS] body [EOS]; a sampling batch that is not a multiple of the evaluator batch; LM1B-style
bert-base-uncased rows truncated at 128) and what s-sahoo/duo `metrics.py` (imported unmodified,
transformers 4.38.2) made of them: the decoded texts, the retokenized ids of each sampling
batch, every token's NLL * valid weight, per-sample sums and Gen PPL. See the README there.
The evaluator is a tiny random GPT-2 over the GPT-2 vocabulary, regenerated here from its seed
and checked against the recorded sha256.
"""

import hashlib
import json
import pathlib

import numpy as np
import pytest

from idlm_jax.data import tokenizers
from idlm_jax.evals import genppl
from idlm_jax.models import gpt2

DATA = pathlib.Path(__file__).parent / "data" / "duo_genppl"
META = json.loads((DATA / "duo_outputs.json").read_text())
CASES = sorted(META["cases"])

# Tolerances. Both sides run the same float32 weights through different float32 kernels (torch
# CPU vs XLA): logits are dot products over d = 32 plus a log-sum-exp over 50257 classes, each
# correct to a few ulp of their magnitude (|logits|, NLL <= 32: ulp 3.8e-6 at most). Per token we
# allow 16 ulp(32) = 6.1e-5 (observed: 1.1e-5). These errors are independent across tokens, so a
# per-sample mean NLL is far tighter: 1e-5 (observed 1.6e-6). Duo accumulates Gen PPL's sums in
# float32 (torchmetrics' default dtype; ~1e3 tokens of NLL ~13: sum ~1.3e4, ulp 1e-3, relative
# 1e-7 per addition) and the project in float64, so Gen PPL = exp(mean NLL) agrees to the mean
# NLL error: rtol 1e-5 (observed 3.5e-7).
TOKEN_ATOL = 16 * float(np.spacing(np.float32(32.0)))
MEAN_NLL_ATOL = 1e-5
GEN_PPL_RTOL = 1e-5


def tiny_gpt2_weights(cfg: dict, seed: int) -> dict:
  """The recorded evaluator's weights (same seeded recipe as the harness that ran Duo)."""
  v, p, d, nl = cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"], cfg["n_layer"]
  rng = np.random.default_rng(seed)
  w = {"wte.weight": rng.normal(0, 0.3, (v, d)), "wpe.weight": rng.normal(0, 0.1, (p, d)),
       "ln_f.weight": 1 + rng.normal(0, 0.1, d), "ln_f.bias": rng.normal(0, 0.1, d)}
  for i in range(nl):
    k = f"h.{i}."
    w[k + "ln_1.weight"] = 1 + rng.normal(0, 0.1, d)
    w[k + "ln_1.bias"] = rng.normal(0, 0.1, d)
    w[k + "attn.c_attn.weight"] = rng.normal(0, 0.2, (d, 3 * d))
    w[k + "attn.c_attn.bias"] = rng.normal(0, 0.1, 3 * d)
    w[k + "attn.c_proj.weight"] = rng.normal(0, 0.2, (d, d))
    w[k + "attn.c_proj.bias"] = rng.normal(0, 0.1, d)
    w[k + "ln_2.weight"] = 1 + rng.normal(0, 0.1, d)
    w[k + "ln_2.bias"] = rng.normal(0, 0.1, d)
    w[k + "mlp.c_fc.weight"] = rng.normal(0, 0.2, (d, 4 * d))
    w[k + "mlp.c_fc.bias"] = rng.normal(0, 0.1, 4 * d)
    w[k + "mlp.c_proj.weight"] = rng.normal(0, 0.2, (4 * d, d))
    w[k + "mlp.c_proj.bias"] = rng.normal(0, 0.1, d)
  return {k: x.astype(np.float32) for k, x in w.items()}


def _digest(w: dict) -> str:
  h = hashlib.sha256()
  for k in sorted(w):
    h.update(k.encode())
    h.update(np.ascontiguousarray(w[k], "<f4").tobytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
  ev = META["evaluator"]
  w = tiny_gpt2_weights(ev["config"], ev["seed"])
  assert _digest(w) == ev["sha256"], "the evaluator recipe no longer gives the recorded weights"
  folder = tmp_path_factory.mktemp("tiny_gpt2")
  gpt2.write_safetensors(folder / "model.safetensors", w)
  (folder / "config.json").write_text(json.dumps(ev["config"]))
  return genppl.load_evaluator(str(folder))  # tokenizer: the shipped GPT-2 BPE


def _case(name):
  case = META["cases"][name]
  z = np.load(DATA / f"{name}.npz")
  tokens = np.concatenate([z[f"tokens_{b}"] for b in range(case["num_batches"])])
  return case, z, tokens, tokenizers.get_tokenizer(case["tokenizer"])


@pytest.mark.parametrize("name", CASES)
def test_decoding_matches_transformers_4_38(name):
  case, _, tokens, tok = _case(name)
  texts = sum((b["texts"] for b in case["batches"]), [])
  raw = sum((b["texts_without_cleanup"] for b in case["batches"]), [])
  assert genppl.decode_samples(tok, tokens, "duo") == texts
  assert tok.decode_batch(tokens.tolist(), clean_up_tokenization_spaces=False) == raw
  assert tok.decode(tokens[0], clean_up_tokenization_spaces=True) == texts[0]
  # the recorded samples exercise the clean-up (and some GPT-2 ones decode identically)
  differs = sum(a != b for a, b in zip(texts, raw))
  assert differs == case["decode_differs"] and differs > 0
  if case["tokenizer"] == "gpt2":
    assert differs < len(texts)
    # the project's own GPT-2 decoding keeps the spaces: the raw text
    assert tok.decode_batch(tokens.tolist()) == raw


@pytest.mark.parametrize("name", CASES)
def test_duo_protocol_reproduces_duo_metrics_code(name, evaluator):
  case, z, tokens, tok = _case(name)
  out = genppl.sample_gen_ppl(evaluator, tokens, tok, protocol="duo",
                              sample_batch_size=case["sample_batch_size"],
                              batch_size=case["batch_size"], max_length=case["max_length"],
                              details=True)
  assert len(out["batches"]) == case["num_batches"]
  for b, got in enumerate(out["batches"]):
    # retokenization per sampling batch: same ids, same padding width, same truncation
    np.testing.assert_array_equal(got["ids"], z[f"retokenized_{b}"])
    np.testing.assert_array_equal(got["weights"], z[f"token_weight_{b}"])
    np.testing.assert_allclose(got["token_nll"] * got["weights"], z[f"token_nll_{b}"],
                               rtol=0, atol=TOKEN_ATOL)
  ref_sum, ref_cnt = z["sample_nll_sum"], z["sample_tokens"]
  np.testing.assert_array_equal(np.isnan(out["per_sample_nll_sum"]), np.isnan(ref_sum))
  np.testing.assert_array_equal(out["per_sample_tokens"], ref_cnt)
  scored = ~np.isnan(ref_sum)
  assert out["scored"] == int(scored.sum())
  np.testing.assert_allclose(out["per_sample_nll_sum"][scored] / ref_cnt[scored],
                             ref_sum[scored] / ref_cnt[scored], rtol=0, atol=MEAN_NLL_ATOL)
  assert out["tokens"] == case["tokens"]
  np.testing.assert_allclose(out["gen_ppl"], case["gen_ppl"], rtol=GEN_PPL_RTOL)


def test_recorded_layouts_cover_the_protocol():
  """The data exercise what differs from the project protocol."""
  owt, z, _, _ = _case("gpt2_owt")
  eos = 50256
  first = z["retokenized_0"]  # a batch without EOS in any text: only padding is EOS
  lengths = (first != eos).sum(1)
  assert (first[np.arange(len(first)), lengths - 1] != eos).all()
  assert lengths.min() < first.shape[1] == lengths.max()  # padded rows gain a "predict EOS"
  inside = z["retokenized_1"]  # EOS inside texts: an EOS followed by a real token
  assert ((inside[:, :-1] == eos) & (inside[:, 1:] != eos)).any(1).sum() >= 2
  assert (z["retokenized_2"][:, 0] == eos).all()  # [EOS] body [EOS] rows (BOS = EOS)
  rem, zr, _, _ = _case("gpt2_remainder")
  assert rem["sample_batch_size"] % rem["batch_size"] and np.isnan(zr["sample_nll_sum"]).any()
  lm1b, zb, _, _ = _case("bert_lm1b")
  assert lm1b["max_length"] == 128 and zb["retokenized_0"].shape[1] == 128


def test_project_protocol_differs_from_duo(evaluator):
  """The earlier protocol (no clean-up, padding once per cell) counts other targets."""
  case, _, tokens, tok = _case("gpt2_owt")
  texts = genppl.decode_samples(tok, tokens, "project")
  out = genppl.gen_ppl(evaluator, texts, case["batch_size"])
  assert out["protocol"] == "project" and out["scored"] == len(tokens)
  assert out["tokens"] != case["tokens"]
  with pytest.raises(ValueError, match="protocol"):
    genppl.decode_samples(tok, tokens, "mdlm")
