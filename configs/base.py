"""Every configuration field of idlm_jax, with its default and meaning.

Other config files start from `base.get_config()` and override values; nothing else in the
project may invent a field (an unknown key is an error, see `idlm_jax/config.py`). Paper
setups live in their own files (`mdlm_owt.py`, `mdlm_lm1b.py`, ...), each with `:tiny` and
`:smoke` variants.
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()

  c.seed = 0  # root PRNG seed: parameters, dropout, diffusion noise, sampling.
  # What main.py does: "train" (train, validate, sample), "eval" (validation NELBO of the
  # latest checkpoint), "sample" (write samples from the latest checkpoint).
  c.mode = "train"
  # Which objective trains: "diffusion" (teacher pretraining), "ar" (the causal Gen PPL
  # evaluator), "idlm" (inverse distillation of config.distill.teacher into a student),
  # the baselines "sdtt" (MDLM teachers) and "dcd" (Duo teachers), see config.distill.
  c.objective = "diffusion"

  # ---------------------------------------------------------------- data
  c.data = d = ml_collections.ConfigDict()
  # Where text comes from: "embedded" (public-domain corpus shipped in the package),
  # "text_files" (local .txt/.txt.gz/.jsonl files or folders, see data.path),
  # "tfds_lm1b" (TFDS lm1b, MDLM conventions), "owt" (OpenWebText from local files or
  # the Hugging Face hub, last 100k documents are validation).
  d.source = "embedded"
  d.path = ""  # text_files/owt: file, folder or glob; owt also accepts "hf:openwebtext".
  # Embedded corpora to use (comma separated): austen, shakespeare_milton, devil, jargon.
  d.embedded_corpora = "austen,shakespeare_milton,devil,jargon"
  # Tokenizer: "bert-base-uncased", "gpt2", "demo-bpe-2048" (shipped) or a tokenizer.json path.
  d.tokenizer = "demo-bpe-2048"
  d.seq_len = 64  # L: tokens per training sequence.
  # True: concatenate documents and cut into [BOS] + (L-2) tokens + [EOS] rows (OWT style).
  # False: one line/sentence per row with special tokens, padded/truncated to L (LM1B style).
  d.wrap = True
  d.shuffle = True  # reshuffle the training rows every epoch (deterministic from d.seed).
  d.seed = 0  # data-order seed, independent of the model seed.
  d.cache_dir = "~/.cache/idlm_jax"  # tokenized arrays are cached here (memmapped .npy).
  d.tfds_data_dir = ""  # TFDS data_dir ("" = the TFDS default, ~/tensorflow_datasets).
  d.owt_val_docs = 100_000  # OWT: the last this-many documents form the validation split.
  d.max_train_docs = 0  # >0: only the first N training documents (embedded: passages).
  d.max_val_rows = 0  # >0: evaluate on at most N validation rows (quick runs).

  # --- data.source "synthetic_hmm": a seeded random unifilar HMM (probabilistic automaton)
  # over `vocab_size` symbols with exact likelihoods and entropies (evals/synthetic.py).
  d.synthetic = y = ml_collections.ConfigDict()
  y.seed = 0
  y.num_states = 256  # hidden states
  y.vocab_size = 32  # emitted symbols
  y.branching = 3  # symbols each state can emit (sparse emissions)
  y.concentration = 0.5  # Dirichlet concentration of the emission probabilities
  y.num_train_docs = 20_000  # sequences of data.seq_len - 2 symbols each
  y.num_val_docs = 1_000

  # ---------------------------------------------------------------- model
  c.model = m = ml_collections.ConfigDict()
  m.name = "dit"  # the DDiT denoiser of MDLM/SEDD/Duo (reference/teachers.md §1.4).
  m.hidden_size = 768
  m.n_blocks = 12
  m.n_heads = 12
  m.cond_dim = 128
  m.mlp_ratio = 4
  m.dropout = 0.1  # residual dropout (attention dropout is always 0).
  m.dtype = "float32"  # compute dtype of matmuls: "float32" or "bfloat16" (params stay fp32).
  # Attention kernel for jax.nn.dot_product_attention: "auto" (cuDNN on GPU where possible),
  # "xla" or "cudnn".
  m.attention = "auto"
  m.time_conditioning = False  # MDLM feeds sigma = 0 (its network ignores t).
  # Performance (issue #10): pad the DiT's embedding rows and output columns to a multiple of
  # this (GPT-2 50258 -> 50304, bert 30522 -> 30592; 0 or 1 = off); logits keep vocab_size
  # entries and PyTorch conversion pads/unpads. Checkpoints store the padded shapes.
  m.vocab_pad_multiple = 128
  # "block": recompute each DiT block's activations in the backward pass (nnx.remat), less
  # activation memory for ~1/3 more compute; "none": keep them.
  m.remat = "none"
  # > 0: the MDLM teacher loss takes the output projection, log-softmax and SUBS loss this many
  # sequence positions at a time (rematerialised chunks), so the full [B, L, V] float32 logits
  # are never live at once; same loss and gradients. 0 = off. objective "diffusion" with
  # diffusion.algo "mdlm" only.
  m.loss_chunk = 0
  # --- model.name "gpt2" only (causal LM of the "ar" objective): learned positions ---
  m.n_positions = 1024

  # ---------------------------------------------------------------- diffusion
  c.diffusion = f = ml_collections.ConfigDict()
  # forward process: "absorbing" ([MASK] state: MDLM, SEDD) or "uniform" (SEDD-uniform, UDLM, Duo).
  f.process = "absorbing"
  # network output: "subs" (MDLM SUBS: zero mask logit, carry-over unmasking), "score" (SEDD
  # log-score), "mean" (UDLM/Duo: softmax x_theta over all K states).
  f.parameterization = "subs"
  f.schedule = "loglinear"  # alpha_t = 1 - (1 - eps) t.
  f.eps = 1e-3  # schedule eps; training samples t in [eps, 1].
  f.antithetic = True  # low-discrepancy t over the global batch.
  # --- teachers (issue #3): which teacher the "diffusion" objective trains ---------------
  # "mdlm" (absorbing, SUBS, NELBO), "sedd" (score entropy; process absorbing or uniform,
  # parameterization "score"), "udlm" (uniform state, mean parameterization "mean", closed-form
  # NELBO), "duo" (UDLM's NELBO with the Gaussian-guided curriculum below). process and
  # parameterization must match the algo (config.py says which); sedd/udlm/duo need
  # model.time_conditioning=True. teachers.md §1-§4, §8.
  f.algo = "mdlm"
  # Duo curriculum (algo "duo"): active for train steps in [curriculum_start, curriculum_end),
  # plain UDLM NELBO after. gamma_t = gamma_min + t (gamma_max - gamma_min); the network sees
  # softmax(w_t / tau) with w_t = alpha~ onehot(x) + sigma~ eps, the NELBO is taken at
  # z_t = argmax w_t with alpha_t = T(alpha~) (diffusion/duo_integral.py, table cached in
  # data.cache_dir/duo_integral with `duo_table_points` gamma points).
  f.curriculum_start = 0
  f.curriculum_end = 500_000
  f.gamma_min = -3.55
  f.gamma_max = -1.85
  f.tau = 1e-3
  f.duo_table_points = 4001

  # ---------------------------------------------------------------- distillation
  # Objectives that distil a frozen teacher ("idlm"; reference/idlm.md). The student (the
  # state's params, sampled and evaluated like any model) and the objective's other networks
  # (IDLM's fake model) start as copies of the teacher; config.model/diffusion/data must
  # describe the teacher (its algo, size and tokenizer).
  c.distill = dd = ml_collections.ConfigDict()
  # The teacher: a workdir (or its checkpoints/ folder) of a teacher run or of
  # `python -m idlm_jax.convert`, or "demo" (the small MDLM shipped in idlm_jax/assets).
  dd.teacher = ""
  dd.teacher_step = -1  # checkpoint step to load (-1: the latest).
  dd.teacher_ema = True  # load the teacher's EMA weights (False: its raw params).
  dd.fake_steps = 1  # fake-model updates per student update (each on its own batch; 1:1).
  dd.fake_lr = 0.0  # the fake model's AdamW lr (0: optim.lr); other optim.* are shared.
  # IDLM-MDLM relaxation of the re-noised student sample: "simplex" (the paper: hard x_t,
  # gradient through the loss weights), or the ablations "gumbel" (soft Gumbel-softmax x_t at
  # temperature relax_tau) and "straight_through" (hard one-hot with softmax gradient).
  dd.relaxation = "simplex"
  dd.relax_tau = 0.1
  dd.stop_path = False  # IDLM-Duo ablation: no pathwise gradient through the soft input.
  # Categorical draws inside the IDLM/DiDi train steps (re-noised student samples, rollouts):
  # "inverse_cdf" (2 random words per row, float32 two-level inverse CDF) or "exact32"
  # (Gumbel-max with 64 random bits per class; the cost grows with V). Samplers: sample.precision.
  dd.train_draw = "inverse_cdf"
  # --- monitoring (evals/monitor.py): every monitor_every steps, monitor_samples samples from
  # the EMA student at each of monitor_steps, scored by eval.evaluator (Gen PPL) or exactly on
  # the synthetic language, plus unigram entropy. A warning when the entropy falls below
  # entropy_floor (0: (1 - entropy_drop) x the step-0 student's = the teacher's few-step
  # entropy). The best checkpoint (<workdir>/best) minimises best_metric at the largest
  # monitor step among monitors whose entropy is above the floor ("none": no best checkpoint).
  dd.monitor_every = 0
  dd.monitor_steps = "4,16"
  dd.monitor_samples = 32
  dd.entropy_floor = 0.0
  dd.entropy_drop = 0.05
  dd.best_metric = "gen_ppl"  # "gen_ppl", "exact_nll" (synthetic_hmm) or "none".
  # --- the final table (mode train): teacher at these steps vs the student at
  # eval.sampling_steps, same seeds and evaluator ("" = no table).
  dd.report_teacher_steps = ""
  # --- DiDi-Instruct (objective "didi", objectives/didi.py; reference/didi_instruct.md).
  # The student is optimised by optim.* (the paper: grad_clip 0.5, EMA 0.999); the
  # discriminator (teacher trunk + spectral-norm head, in TrainState.aux["disc"]) by AdamW
  # with optim.* betas/schedule and the fields below. One step: B = train.global_batch_size
  # real rows, B x group_size student rollouts.
  dd.didi = di = ml_collections.ConfigDict()
  di.group_size = 4  # G: rollouts per real row; rewards are normalised within each G (>= 2).
  di.real = "data"  # the discriminator's real side: "data" rows or "teacher" samples.
  di.teacher_steps = 64  # ancestral steps of the teacher samples when real = "teacher".
  di.disc_lr = 1e-5  # discriminator AdamW learning rate.
  di.disc_grad_clip = 1.0  # discriminator global-norm clipping (0 disables).
  di.disc_weight_decay = 0.0
  di.unfreeze_blocks = 4  # trainable last blocks of the discriminator trunk (+ the head).
  di.label_smoothing = 0.1  # BCE targets 1 - s (real) and s (fake).
  di.tau_a = 2.0  # coupled time tau ~ Beta(tau_a, tau_b) (Beta(2,2); Beta(1,1) = uniform) ...
  di.tau_b = 2.0
  di.tau_min = 0.02  # ... clamped to [tau_min, tau_max]
  di.tau_max = 0.98
  di.t0 = 1e-3  # end time of the student's second rollout step (1 -> tau -> t0).
  di.omega_min = 0.1  # omega(tau) = -alpha'/(1 - alpha) clipped to [omega_min, omega_max]
  di.omega_max = 10.0
  di.importance_weight = False  # divide omega by the Beta pdf pi(tau).
  di.reward_clip = 8.0  # per-token discriminator log-odds clipped to +-reward_clip.
  di.advantage_clip = 3.0  # group-normalised advantages clipped to +-advantage_clip.
  di.kl_beta = 1.0  # weight of kl_hi KL_1 + kl_lo KL_2, forward KL(teacher || student) ...
  di.kl_hi = 0.01  # ... at rollout step 1 (all-mask input)
  di.kl_lo = 0.01  # ... at rollout step 2 (input x_tau)
  di.entropy_beta = 0.0005  # entropy bonus (subtracted from the loss).
  di.nan_to_num = True  # replace NaN/Inf gradient entries by finite values (reference).
  # RGAS sampler (diffusion/rgas.py, benchmarks/didi_rgas.py): the first
  # (1 - rgas_rerank_ratio) of the steps tilt the student's logits by h x clip(grad of the
  # discriminator score, +-rgas_grad_clip), h ramping rgas_scale_start -> rgas_scale_end;
  # the rest draw rgas_candidates candidates and pick one ~ softmax(score / temperature).
  di.rgas_rerank_ratio = 0.5
  di.rgas_scale_start = 30.0
  di.rgas_scale_end = 40.0
  di.rgas_grad_clip = 1.0
  di.rgas_candidates = 4
  di.rgas_temperature = 1.0
  # --- baselines (issue #7, objectives/progressive.py): rounds that grow the step size, the
  # teacher re-copied from the student at each round boundary (TrainState.aux "round_teacher").
  # objective "sdtt": self-distillation through time of an MDLM teacher (teachers.md §6).
  dd.sdtt = sd = ml_collections.ConfigDict()
  # Divergence on masked tokens: "kl-bwd" (KL(student || teacher), the reference default),
  # "kl-fwd", "mse" (squared log-prob difference) or "tvd" (total variation).
  sd.divergence = "kl-bwd"
  sd.num_distill_steps = 2  # n: teacher ancestral steps matched by one student step.
  sd.orig_steps = 1024  # round 0: teacher step (1 - sample.eps) / orig_steps.
  sd.round_steps = 10_000  # train steps per round (the teacher step grows n-fold each round).
  sd.num_rounds = 7  # rounds; the last student samples with orig_steps / n^num_rounds steps.
  sd.use_ema_on_growth = False  # True: the EMA becomes teacher and student at each round.
  sd.loss_precision = "float32"  # "float32" or "float64" (x64 inside the loss only).
  # objective "dcd": Duo's discrete consistency distillation (teachers.md §4.4); the
  # trajectory's gamma range is diffusion.gamma_min/gamma_max (DCD: [-4, -1]).
  dd.dcd = dc = ml_collections.ConfigDict()
  dc.T = 512  # round 0: step size delta = 1/T; round r: 2^r / T.
  dc.round_steps = 10_000  # train steps per round (update_teacher_every).
  dc.num_rounds = 5  # rounds (delta 1/512 -> 16/512 over the paper's 5).
  dc.divergence = "kl-bwd"  # "kl-bwd" (KL(student || teacher), the paper) or "kl-fwd".
  dc.teacher_ema = False  # True: the round teacher is the student's EMA (else its raw weights).
  dc.loss_precision = "float32"  # "float32" or "float64" (x64 inside the loss only).
  # --- objective "r2_finetune" (issue #8 part 2, objectives/r2_finetune.py): fine-tune an MDLM
  # teacher on its own R2 decoding trajectories, recorded and filtered by
  # benchmarks/r2_record_trajectories.py (diffusion/r2_trajectories.py).
  dd.r2ft = rf = ml_collections.ConfigDict()
  rf.trajectories = ""  # the .npz of recorded trajectories (replaces the training split).
  rf.sharpen_weight = 1.0  # lambda: weight of the confidence-sharpening hinge (0: NELBO only).
  rf.sharpen_target = 0.95  # c*: the hinge max(0, log c* - log p) stops at this confidence.
  rf.horizon = 3  # h: sharpen tokens the rules committed within the next h calls (R2's K).
  rf.sharpen_rules = "threshold,confidence_cluster,token_cluster,temporal"  # whose commits.
  # Masks of the NELBO term: "trajectory" (the recorded x_k) or "random" (the ablation: the
  # same number of masks at uniformly random positions, i.e. MDLM masking of the samples).
  rf.masks = "trajectory"
  rf.keep_fraction = 0.25  # recording: keep this best fraction of the samples by the filter.
  rf.filter = "exact_nll"  # recording: "exact_nll" (synthetic_hmm) or "none".
  rf.record_samples = 2048  # recording: trajectories drawn before filtering.

  # ---------------------------------------------------------------- optimisation
  c.optim = o = ml_collections.ConfigDict()
  o.lr = 3e-4
  o.warmup_steps = 2500  # linear warm-up, then constant (MDLM); see o.decay.
  o.decay = "constant"  # "constant", "cosine" or "linear" (to o.final_lr_fraction * lr at
  # train.steps; DiDi-Instruct's reference decays linearly).
  o.final_lr_fraction = 0.1
  o.b1 = 0.9
  o.b2 = 0.999
  o.adam_eps = 1e-8
  o.weight_decay = 0.0
  o.grad_clip = 1.0  # global-norm clipping; 0 disables.
  o.ema = 0.9999  # EMA decay, with warm-up decay min(ema, (1+n)/(10+n)); 0 disables EMA.

  # ---------------------------------------------------------------- training loop
  c.train = t = ml_collections.ConfigDict()
  t.steps = 1_000_000  # total optimiser steps.
  t.global_batch_size = 512  # sequences per step, over all hosts and devices.
  t.max_minutes = 0.0  # >0: stop (with a checkpoint) after this many minutes of training.
  t.log_every = 100  # steps between train-metric logs.
  t.eval_every = 10_000  # steps between validation runs (0: only at the end).
  t.sample_every = 10_000  # steps between sample dumps (0: only at the end).
  t.check_finite = True  # stop with the step and metric name on a NaN/Inf loss or gradient.

  # ---------------------------------------------------------------- parallelism
  c.parallel = p = ml_collections.ConfigDict()
  p.strategy = "pjit"  # "pjit": jit with NamedSharding over the mesh (FSDP/tensor parallel).
  # "pmap": replicated state on an (n, 1, 1) mesh, the step per device with an explicit
  # gradient pmean (ici_mesh/dcn_mesh ignored); see idlm_jax/train/parallel.py.
  # Mesh sizes over ('data', 'fsdp', 'tensor') within a slice (ICI) and across slices (DCN);
  # -1 is filled with the remaining devices.
  p.ici_mesh = (1, -1, 1)
  p.dcn_mesh = (-1, 1, 1)

  # ---------------------------------------------------------------- checkpoints
  c.ckpt = k = ml_collections.ConfigDict()
  k.every = 5000  # steps between checkpoints (the last step is always saved).
  k.keep = 3  # keep the latest N checkpoints.
  k.async_save = True  # orbax asynchronous saving.
  k.resume = True  # resume from the latest checkpoint in the workdir if there is one.

  # ---------------------------------------------------------------- evaluation
  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 64  # global validation batch size.
  e.use_ema = True  # evaluate and sample with the EMA weights.
  # Which checkpoint the eval/sample modes read: "latest" (<workdir>/checkpoints) or "best"
  # (<workdir>/best, kept by a distillation run's monitor, see config.distill).
  e.checkpoint = "latest"
  # --- zero-shot likelihood (issue #3, evals/zero_shot.py): with mode "eval", the NELBO /
  # PPL bound of the workdir's checkpoint on EVERY document of these text files (file, folder
  # or glob of .txt/.jsonl, one document per line/record; "" = the validation split).
  e.zero_shot_path = ""
  # --- sample-quality evaluation (mode "eval_samplers", idlm_jax/evals/evaluate.py) ---
  # Comma-separated samplers to compare ("" = the configured sampler only) and step counts.
  e.samplers = ""
  e.sampling_steps = "8,16,32,64,128"
  e.num_samples = 64  # samples per (sampler, steps) cell; fixed seed e.seed.
  e.seed = 1234
  # Gen PPL evaluator: "embedded" (the GPT-2-architecture LM shipped in evals/assets, trained
  # by configs/ar_embedded.py), a HF GPT-2 name ("gpt2-large", needs internet) or a local
  # folder with config.json + model.safetensors (+ tokenizer, see evals/genppl.py), or ""
  # (no Gen PPL, e.g. on the synthetic source where exact likelihoods are used).
  e.evaluator = "embedded"
  e.evaluator_batch_size = 8  # Duo/MDLM eval.perplexity_batch_size.
  e.evaluator_max_length = 1024  # retokenized samples are truncated to this (Duo: 1024).

  # ---------------------------------------------------------------- sampling
  c.sample = s = ml_collections.ConfigDict()
  s.num_samples = 16  # samples written per dump.
  s.batch_size = 16  # global sampling batch size.
  s.steps = 128  # N: reverse steps on linspace(1, eps, N + 1).
  s.eps = 1e-5  # final time of the sampling grid.
  s.cache = True  # MDLM cache: no network call when no token changed.
  # Categorical draws: "float64" (Gumbel noise and posterior in float64, x64 scoped to the
  # sampler), "exact32" (float32 arithmetic with 64-bit uniforms: the same tail, fast on TPU),
  # "float32" (the naive draw of the MDLM repo, kept for comparison).
  s.precision = "float64"
  s.noise_removal = "argmax"  # final step at t = eps: "argmax" (MDLM) or "ancestral".
  # --- teachers (issue #3) ------------------------------------------------------------
  # Reverse sampler: "ancestral" (MDLM with cache; udlm/duo: the Duo posterior, no cache),
  # "analytic" (SEDD Tweedie tau-leaping; sedd, or mdlm through the score conversion) or
  # "euler" (SEDD Euler; same models). noise_removal for udlm/duo: "argmax" is Duo's greedy
  # tail, "ancestral" one more posterior step; for analytic/euler: the final denoise step is
  # sampled ("ancestral", SEDD) or its argmax taken ("argmax"). Both cost one more NFE.
  # "rgas": DiDi-Instruct's reward-guided sampler (objective "didi" only: it reads the run's
  # discriminator; distill.didi.rgas_*), "r2": see below.
  s.sampler = "ancestral"
  s.top_p = 1.0  # udlm/duo ancestral: nucleus on x_theta before the posterior (1 = off).
  # --- prompts and fast decoding (issue #8) --------------------------------------------
  # Prefix-conditioned generation: a prompt string, or a path to a text file with one prompt
  # per line (sample i gets prompt i mod n); its tokens ([BOS] + prompt) are clamped at the
  # start of the row and never resampled, by every sampler. "" = unconditional.
  s.prompt = ""
  # sample.sampler "r2" (diffusion.algo mdlm only; idlm_jax/diffusion/r2_samplers.py):
  # R2-dLLM's rules commit extra tokens from the same network call (reference/r2_dllm.md §1).
  s.r2 = r = ml_collections.ConfigDict()
  # Progress guarantee: "ancestral" (MDLM's schedule of sample.steps steps, sampled tokens)
  # or "top1" (Fast-dLLM: the most confident masked token per step). Either way the masks
  # left after sample.steps steps (per block) are removed by sample.noise_removal.
  r.floor = "ancestral"
  # Rules on top of the floor, comma-separated, applied in this order: "threshold",
  # "confidence_cluster", "token_cluster", "temporal"; "" = the floor alone.
  r.rules = "confidence_cluster,token_cluster,temporal"
  # Token a rule commits: "argmax" (R2's greedy decoding) or "sampled" (a draw from x_theta).
  r.commit = "argmax"
  r.threshold = 0.9  # "threshold" rule: commit every masked token with confidence >= this.
  r.cluster_window = 3  # confidence cluster: window width w.
  r.cluster_max_unmasked = 1  # confidence cluster: skip windows with more unmasked tokens.
  # tau_s: confidence cluster (mean confidence of the window's masked tokens >= tau_s) and
  # token cluster (a run's max confidence > tau_s).
  r.spatial_threshold = 0.8
  r.token_cluster_size = 2  # token cluster: minimum run of adjacent masks with one argmax.
  r.token_cluster_select = "confidence"  # which run member is committed: confidence/mid/random.
  r.temporal_steps = 3  # temporal: K consecutive network calls with the same argmax.
  r.temporal_threshold = 0.8  # temporal: tau_t on the aggregated confidence.
  r.temporal_eval = "last"  # temporal aggregation over the streak: last, mean or max.
  # Semi-autoregressive blocks of this many positions, left to right, each with its own
  # budget of sample.steps steps (0 = the whole sequence is one block).
  r.block_length = 0
  # Floor schedule clock: "steps" (one grid step per iteration) or "masked" (jump to the grid
  # step whose noise level t matches the block's masked fraction, so tokens committed by the
  # rules shorten the remaining schedule: fewer NFE).
  r.clock = "steps"

  # ---------------------------------------------------------------- logging
  c.log = g = ml_collections.ConfigDict()
  g.tensorboard = True  # TensorBoard event files in the workdir (plus metrics.jsonl always).
  g.progress_every_s = 30.0  # seconds between progress lines (steps/s, ETA).
  return c


def smoke(c):
  """`:smoke`: the same pipeline end to end in well under a minute on a CPU."""
  c.model.update(hidden_size=32, n_blocks=1, n_heads=2, cond_dim=32, dropout=0.0)
  c.data.update(seq_len=32, max_train_docs=3000, max_val_rows=64)
  c.train.update(steps=12, global_batch_size=16, log_every=4, eval_every=0, sample_every=0)
  c.optim.update(warmup_steps=4)
  c.ckpt.update(every=6, keep=2)
  c.eval.update(batch_size=16)
  c.sample.update(num_samples=8, batch_size=8, steps=16)
  c.log.progress_every_s = 5.0
  return c


def tiny(c):
  """`:tiny`: a small model that trains for real on a CPU in minutes."""
  c.model.update(hidden_size=128, n_blocks=2, n_heads=4, cond_dim=64, dropout=0.0)
  c.train.update(steps=2000, global_batch_size=32, log_every=50, eval_every=500,
                 sample_every=1000)
  c.optim.update(warmup_steps=100, ema=0.999)
  c.ckpt.update(every=500)
  c.eval.update(batch_size=32)
  c.sample.update(num_samples=8, batch_size=8, steps=64)
  return c


def offline(variant):
  """A small variant of a paper config that keeps its tokenizer and wrapping/padding but reads
  the embedded corpus (LM1B/OWT cannot be downloaded offline) in float32."""
  def apply(c):
    c = variant(c)
    c.data.update(source="embedded", path="")
    c.model.dtype = "float32"
    return c
  return apply


def apply_variant(c, arg, variants=None):
  """Apply `--config=file.py:<arg>`; every config knows 'smoke' and 'tiny' plus its own."""
  table = {"smoke": smoke, "tiny": tiny, **(variants or {})}
  if arg in (None, ""):
    return c
  if arg not in table:
    raise ValueError(f"unknown config variant {arg!r}; known: {sorted(table)}")
  return table[arg](c)
