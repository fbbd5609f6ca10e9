"""Uniform-state diffusion: UDLM (Schiff et al. 2024) and Duo (Sahoo et al. 2025) with its
Gaussian-guided curriculum (reference/teachers.md §2.4, §4.1-4.3, §8), and IDLM's pieces
through Duo's Gaussian latent (reference/idlm.md §2.3, §3.4)."""

import functools

import jax
import jax.numpy as jnp

from idlm_jax import fields as F
from idlm_jax import rng
from idlm_jax.diffusion import chunks, duo_integral, relax, uniform
from idlm_jax.diffusion.processes.base import InverseParts, Process, Renoised, valid_weights
from idlm_jax.diffusion.processes.chunked import LogitMaps, embed_latent, soft_renoise
from idlm_jax.diffusion.schedules import get_schedule, sample_t, student_t
from idlm_jax.fields import ConfigError, Field

FIELDS = {
    "diffusion.curriculum_start": Field(
        0, 'Duo curriculum (algo "duo"): active for train steps in [curriculum_start, '
        'curriculum_end), plain UDLM NELBO after. gamma_t = gamma_min + t (gamma_max - '
        'gamma_min); the network sees softmax(w_t / tau) with w_t = alpha~ onehot(x) + sigma~ '
        'eps, the NELBO is taken at z_t = argmax w_t with alpha_t = T(alpha~) '
        '(diffusion/duo_integral.py, table cached in data.cache_dir/duo_integral).',
        check=F.non_negative),
    "diffusion.curriculum_end": Field(500_000, "end of the Duo curriculum (train step).",
                                      check=F.non_negative),
    "diffusion.gamma_min": Field(-3.55, "gamma_t range of the Duo curriculum (DCD: [-4, -1])."),
    "diffusion.gamma_max": Field(-1.85, "upper end of the gamma_t range."),
    "diffusion.tau": Field(1e-3, "temperature of the network's soft input softmax(w_t / tau).",
                           check=F.positive),
    "diffusion.duo_table_points": Field(4001, "gamma points of the cached Duo transformation "
                                        "table.", check=F.at_least(3)),
}


def duo_transform(config, vocab_size: int) -> duo_integral.DuoTransform:
  """Duo's T: gamma -> alpha over [diffusion.gamma_min, gamma_max] for the model vocabulary."""
  f = config.diffusion
  return duo_integral.DuoTransform.create(vocab_size, f.gamma_min, f.gamma_max,
                                          cache_dir=config.data.cache_dir,
                                          num_points=f.duo_table_points)


class UDLM(Process):
  """Uniform-state process, mean parameterization, closed-form continuous-time NELBO."""

  name = "udlm"
  graphs = ("uniform",)
  parameterization = "mean"
  time_conditioned = True
  samplers = ("ancestral",)

  def __init__(self, schedule, *, vocab_size: int, mask_id: int = -1, antithetic: bool = True,
               tau: float = 1e-3, transform_fn=None, loss_chunk: int = 0):
    super().__init__(schedule, mask_id=mask_id, vocab_size=vocab_size, antithetic=antithetic,
                     loss_chunk=loss_chunk)
    self.tau = tau
    self._transform_fn = transform_fn  # () -> DuoTransform (IDLM's Gaussian relaxation)

  @classmethod
  def from_config(cls, config, *, vocab_size: int, mask_id: int):
    f = config.diffusion
    return cls(get_schedule(f.schedule, f.eps), vocab_size=vocab_size, mask_id=mask_id,
               antithetic=f.antithetic, tau=f.tau,
               transform_fn=functools.partial(duo_transform, config, vocab_size),
               loss_chunk=config.model.loss_chunk)

  @functools.cached_property
  def transform(self) -> duo_integral.DuoTransform:
    if self._transform_fn is None:
      raise ValueError("this process was built without Duo's transformation table")
    return self._transform_fn()

  def q_xt(self, key, x0, t):
    return uniform.q_xt(key, x0, self.schedule.alpha(t), self.vocab_size)

  def loss_sums(self, model, batch, key, *, train, step=None):
    """UDLM's closed-form continuous-time NELBO (teachers.md §4.2): every position counts."""
    del step
    s = self.schedule
    x0 = batch["input_ids"]
    valid = valid_weights(batch)
    k_t, k_x, k_drop = rng.split(key, 3)
    t = sample_t(k_t, x0.shape[0], s.eps, self.antithetic)
    alpha, dalpha = s.alpha(t), s.dalpha(t)
    zt = uniform.q_xt(k_x, x0, alpha, model.vocab_size)
    drop = k_drop if train else None
    if self.loss_chunk > 0:
      h = model.features(zt, s.sigma(t), dropout_key=drop)
      return {"nelbo_sum": self.chunked_nelbo(model, h, zt, x0, valid, alpha, dalpha),
              "tokens": valid.sum()}
    logits = model(zt, s.sigma(t), dropout_key=drop)
    nelbo = uniform.nelbo_per_token(jax.nn.log_softmax(logits, -1), zt, x0, alpha, dalpha)
    return {"nelbo_sum": (nelbo * valid).sum(), "tokens": valid.sum()}

  def chunked_nelbo(self, model, h, zt, x0, valid, alpha, dalpha) -> jax.Array:
    """sum of valid * the UDLM NELBO integrand from the output features h [B, L, d], the
    projection and log-softmax taken loss_chunk positions at a time (chunks.chunk_sum)."""
    project, head = model.head()

    def fn(params, h_c, pp, shared):
      zt_c, x0_c, valid_c = pp
      log_p = jax.nn.log_softmax(project(params, h_c), -1)
      return jnp.sum(uniform.nelbo_per_token(log_p, zt_c, x0_c, *shared) * valid_c)

    return chunks.chunk_sum(fn, head, h, jax.lax.stop_gradient((zt, x0, valid)),
                            jax.lax.stop_gradient((alpha, dalpha)), self.loss_chunk)

  def log_probs_fn(self, model):
    s = self.schedule
    return lambda x, t: jax.nn.log_softmax(model(x, s.sigma(t)), axis=-1)

  def inverse_parts(self, stop_path: bool = False, student_grid: int = 0,
                    **unused) -> InverseParts:
    """Through Duo's Gaussian latent (gamma_t linear, alpha_t = T(a~)): the student's x_theta
    of Gaussian-noised real data, a low-temperature softmax input to teacher and fake with the
    pathwise gradient (relax.duo_soft_input), the hard argmax token for the loss, and the
    UDLM NELBO with soft x0 (uniform.nelbo_per_token_soft). Both Gaussian draws are made
    position by position (rng.normal_per_position), so that loss_chunk > 0 draws the same
    noise a chunk at a time (processes/chunked.soft_renoise)."""
    del unused
    transform, tau, eps, k = self.transform, self.tau, self.schedule.eps, self.vocab_size

    def student_input(batch, key):
      x0 = batch["input_ids"]
      k_t, k_w = rng.split(key)
      t = student_t(k_t, x0.shape[0], eps, student_grid)  # input times: schedules.student_t
      return x0, transform.gamma(t), -jnp.log(transform.alpha(t)), k_w

    def student(model, batch, key, dropout_key):
      x0, gamma, sigma, k_w = student_input(batch, key)
      w = uniform.gaussian_latent(k_w, x0, gamma, k)
      logits = model(uniform.relaxed_input(w, tau), sigma, dropout_key=dropout_key)
      return relax.simplex(logits)  # "mean" parameterization: x_theta over all K states

    def renoise_time(key, n):
      k_t, k_xi = rng.split(key)
      t = sample_t(k_t, n, eps, True)
      alpha_tilde = jnp.sqrt(jax.nn.sigmoid(-transform.gamma(t)))
      alpha = transform.alpha(t)
      return k_xi, alpha_tilde, -jnp.log(alpha), alpha, (alpha, transform.dalpha(t))

    def renoise(G, key):
      k_xi, alpha_tilde, sigma, weight, extra = renoise_time(key, G.shape[0])
      xi = rng.normal_per_position(k_xi, G.shape)
      soft, z = relax.duo_soft_input(G, alpha_tilde, xi, tau, stop_path)
      return Renoised(soft, z, sigma, weight, extra)

    def output(model, r):
      return output_of(model(r.net_in, r.sigma), r)

    def fake_loss(log_f, r, G):
      alpha, dalpha = r.extra
      return uniform.nelbo_per_token_soft(log_f, r.tokens, G, alpha, dalpha)

    def inverse_loss(log_teacher, log_fake, r, G):  # pathwise through both networks' inputs
      return fake_loss(log_teacher, r, G) - fake_loss(log_fake, r, G)

    chunked = None
    if self.loss_chunk > 0:
      chunked = soft_renoise(LogitMaps(_student_of, output_of), fake_loss, inverse_loss,
                             student_input, renoise_time, tau, stop_path, self.loss_chunk)
    return InverseParts(student, renoise, output, fake_loss, inverse_loss, chunked)


def _student_of(logits, x_t, sigma):
  """The student's x_theta ("mean" parameterization) of one chunk's logits."""
  del x_t, sigma
  return relax.simplex(logits)


def output_of(logits, r):
  """A network's log x_theta of its logits (what the UDLM NELBO reads), float32."""
  del r
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


class Duo(UDLM):
  """UDLM's NELBO with Duo's Gaussian-guided curriculum for train steps in
  [curriculum_start, curriculum_end) (validation always uses the UDLM NELBO)."""

  name = "duo"

  def __init__(self, schedule, *, curriculum=(0, 0), **kwargs):
    super().__init__(schedule, **kwargs)
    self.curriculum = curriculum

  @classmethod
  def from_config(cls, config, *, vocab_size: int, mask_id: int):
    f = config.diffusion
    proc = cls(get_schedule(f.schedule, f.eps), vocab_size=vocab_size, mask_id=mask_id,
               antithetic=f.antithetic, tau=f.tau,
               transform_fn=functools.partial(duo_transform, config, vocab_size),
               curriculum=(f.curriculum_start, f.curriculum_end),
               loss_chunk=config.model.loss_chunk)
    proc.transform  # the table is needed by the training loss: build (or read) it now
    return proc

  @classmethod
  def validate(cls, config) -> None:
    super().validate(config)
    f = config.diffusion
    if f.curriculum_end < f.curriculum_start:
      raise ConfigError(f"config.diffusion.curriculum_end: {f.curriculum_end} is before "
                        f"curriculum_start {f.curriculum_start}")
    if not f.gamma_min < f.gamma_max:
      raise ConfigError(f"config.diffusion.gamma_min: must be < gamma_max, got "
                        f"{f.gamma_min} >= {f.gamma_max}")

  def curriculum_sums(self, model, batch, key, *, train: bool = True) -> dict:
    """Duo's curriculum loss (teachers.md §4.3): gamma_t linear in t; w_t = alpha~ onehot(x) +
    sigma~ eps; the network sees softmax(w_t / tau) (expected embedding) and sigma =
    -log alpha_t; the UDLM NELBO at z_t = argmax w_t with the discrete alpha_t = T(alpha~_t)."""
    transform = self.transform
    x0 = batch["input_ids"]
    valid = valid_weights(batch)
    k_t, k_w, k_drop = rng.split(key, 3)
    t = sample_t(k_t, x0.shape[0], self.schedule.eps, self.antithetic)
    alpha, dalpha = transform.alpha(t), transform.dalpha(t)
    drop = k_drop if train else None
    if self.loss_chunk > 0:  # the soft input embedded a chunk at a time, then the NELBO
      e, zt = embed_latent(model, x0, transform.gamma(t), k_w, self.tau, self.loss_chunk)
      h = model.features_from_embedding(e, -jnp.log(alpha), dropout_key=drop)
      return {"nelbo_sum": self.chunked_nelbo(model, h, zt, x0, valid, alpha, dalpha),
              "tokens": valid.sum()}
    w = uniform.gaussian_latent(k_w, x0, transform.gamma(t), transform.vocab_size)
    zt = jnp.argmax(w, axis=-1).astype(x0.dtype)
    logits = model(uniform.relaxed_input(w, self.tau), -jnp.log(alpha), dropout_key=drop)
    nelbo = uniform.nelbo_per_token(jax.nn.log_softmax(logits, -1), zt, x0, alpha, dalpha)
    return {"nelbo_sum": (nelbo * valid).sum(), "tokens": valid.sum()}

  def loss_sums(self, model, batch, key, *, train, step=None):
    if not train or step is None:
      return super().loss_sums(model, batch, key, train=train)
    start, end = self.curriculum
    active = jnp.logical_and(step >= start, step < end)
    return jax.lax.cond(active, lambda: self.curriculum_sums(model, batch, key),
                        lambda: UDLM.loss_sums(self, model, batch, key, train=True))
