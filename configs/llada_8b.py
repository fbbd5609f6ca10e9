"""LLaDA-8B-Instruct on GSM8K-format prompts: block decoding + Fast-dLLM threshold + R2 rules.

python -m idlm_jax.main --config=configs/llada_8b.py --workdir=/tmp/llada_gsm8k \
    --config.eval.prompted.checkpoint=/local/LLaDA-8B-Instruct \
    --config.eval.prompted.prompts=/local/gsm8k_test.jsonl

Mode "eval_prompted" (evals/prompted_eval.py): the weights of the local HF folder
(config.json + sharded safetensors, read torch-free in bfloat16 and placed on the mesh by
logical axes: one GPU, or FSDP over a TPU slice with the default parallel.ici_mesh (1, -1, 1)),
each question in LLaDA-8B-Instruct's chat template, the R2-dLLM setting of
reference/r2_dllm.md §1: gen_length 256, block_length 32, adaptive steps with Fast-dLLM's
threshold 0.9 (top-1 always), dual KV cache, the three R2 rules with R2's values
(sample.r2.*), greedy, batch size 1 (NFE per sample as R2's harness counts it). The score is
exact match of the response's last number with the number after "####"; the results go to
<workdir>/prompted_eval.json and every response to prompted_samples.jsonl.

Variants: `:threshold` (Fast-dLLM + dual cache, no R2 rules), `:vanilla` (LLaDA's own
low-confidence decoding: 32 steps per 32-token block, i.e. 256 NFE, no cache), `:smoke` (and
`:tiny`, the same) the shipped random tiny LLaDA-layout model and six prompts
(idlm_jax/assets/llada_tiny, `python -m idlm_jax.evals.prompted_eval` rebuilds it), float32,
16 tokens in blocks of 8: the whole path on a CPU in seconds.
"""

from configs import base

R2_RULES = "confidence_cluster,token_cluster,temporal"


def threshold(c):
  """`:threshold`: Fast-dLLM (threshold 0.9 + dual cache) without the R2 rules."""
  c.eval.reasoning.rules = ""
  return c


def vanilla(c):
  """`:vanilla`: LLaDA's low-confidence remasking, one token per forward (256 NFE)."""
  c.eval.reasoning.update(steps=32, threshold=0.0, cache="none", rules="")
  return c


def smoke(c):
  """`:smoke`: the shipped tiny random model and fixture prompts, float32, on a CPU."""
  c.eval.prompted.update(checkpoint="tiny", prompts="tiny", param_dtype="float32")
  c.model.update(dtype="float32", attention="xla")
  c.eval.reasoning.update(gen_length=16, block_length=8, batch_size=4)
  return c


def get_config(arg=None):
  c = base.get_config()
  c.mode = "eval_prompted"
  c.model.update(name="llada", dtype="bfloat16")  # the architecture comes from config.json
  c.eval.prompted.update(checkpoint="", prompts="", chat_template="llada",
                         param_dtype="bfloat16")
  c.eval.reasoning.update(gen_length=256, block_length=32, steps=0, threshold=0.9,
                          remasking="low_confidence", temperature=0.0, cache="dual",
                          rules=R2_RULES, batch_size=1, num_problems=0)
  c.sample.r2.update(cluster_window=3, cluster_max_unmasked=1, spatial_threshold=0.8,
                     token_cluster_size=2, token_cluster_select="confidence",
                     temporal_steps=3, temporal_threshold=0.8, temporal_eval="last")
  return base.apply_variant(c, arg, {"smoke": smoke, "tiny": smoke, "threshold": threshold,
                                     "vanilla": vanilla})
