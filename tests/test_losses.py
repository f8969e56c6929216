"""Tests of jaxdiff.losses against identities and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from jaxdiff import losses, oracle, parameterization, schedules

BIN_HALF_WIDTH = 1.0 / 255.0


def _quantize(x):
  """Clips to [-1, 1] and rounds onto the 256 levels of 8-bit data."""
  return jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


@pytest.fixture(scope="module")
def mixture():
  # Modes at radius 0.6 with std 0.05: every point lies well inside [-1, 1].
  return oracle.ring(radius=0.6, std=0.05)


@pytest.fixture(scope="module")
def ddpm():
  return schedules.discrete_ddpm("linear", 1000)


def _points(mixture, num, seed=0):
  return _quantize(mixture.sample(jax.random.PRNGKey(seed), num))


# --------------------------------------------------------------------------
# diffusion_loss
# --------------------------------------------------------------------------


def _error_scale(process, t, target, weighting):
  """c(t) with loss(target, weighting) = c(t) * loss(eps, none) for an eps-net.

  With e = eps_hat - eps at fixed x_t: x0 error -(sigma/alpha) e, v error
  alpha e - sigma (x0 error) = (alpha^2 + sigma^2)/alpha e, score error
  -e / sigma, velocity error (sigma' - alpha' sigma / alpha) e.
  """
  a, s = process.alpha(t), process.sigma(t)
  da, ds = process.d_alpha(t), process.d_sigma(t)
  factor = {"eps": 1.0, "x0": -s / a, "v": (a**2 + s**2) / a, "score": -1.0 / s,
            "velocity": ds - da * s / a}[target]
  weight = {"none": 1.0, "sigma2": s**2, "likelihood": process.g2(t)}[weighting]
  return weight * factor**2


@pytest.mark.parametrize("name", ["ddpm", "flow", "edm"])
@pytest.mark.parametrize("target,weighting", [
    ("x0", "none"), ("v", "none"), ("velocity", "none"), ("score", "none"),
    ("score", "sigma2"), ("score", "likelihood"), ("eps", "likelihood")])
def test_targets_rescale_the_eps_error(mixture, name, target, weighting):
  process = schedules.make_process(name)
  x0, key = _points(mixture, 64), jax.random.PRNGKey(1)
  denoise_fn = mixture.denoise_fn(process, "eps")
  loss_eps, metrics_eps = losses.diffusion_loss(denoise_fn, process, x0, key)
  loss, metrics = losses.diffusion_loss(denoise_fn, process, x0, key, target=target,
                                        weighting=weighting)
  t = metrics["t"]
  np.testing.assert_array_equal(t, metrics_eps["t"])  # Same key, same t and eps.
  assert np.all(loss_eps > 0)
  np.testing.assert_allclose(loss, _error_scale(process, t, target, weighting) * loss_eps,
                             rtol=2e-3)
  if (target, weighting) == ("score", "sigma2"):  # Song et al.'s DSM is L_eps.
    np.testing.assert_allclose(loss, loss_eps, rtol=2e-3)


@pytest.mark.parametrize("prediction", parameterization.PREDICTIONS)
@pytest.mark.parametrize("target", ["eps", "x0"])
def test_prediction_type_does_not_change_the_loss(mixture, ddpm, prediction, target):
  x0, key = _points(mixture, 64), jax.random.PRNGKey(2)
  reference, _ = losses.diffusion_loss(mixture.denoise_fn(ddpm, target), ddpm, x0, key,
                                       prediction=target, target=target)
  loss, _ = losses.diffusion_loss(mixture.denoise_fn(ddpm, prediction), ddpm, x0, key,
                                  prediction=prediction, target=target)
  np.testing.assert_allclose(loss, reference, rtol=2e-3, atol=1e-7)


def test_l_simple_draws_t_on_the_ddpm_grid(mixture):
  num_steps, batch = 10, 4096
  process = schedules.discrete_ddpm("linear", num_steps)
  zero_net = lambda x, t, cond: jnp.zeros_like(x)
  loss, metrics = losses.diffusion_loss(zero_net, process, _points(mixture, batch),
                                        jax.random.PRNGKey(3))
  # t = i / T with i in 1..T, each step about equally often.
  steps = np.asarray(metrics["t"]) * num_steps
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
  counts = np.bincount(np.round(steps).astype(int), minlength=num_steps + 1)
  assert counts[0] == 0 and counts.sum() == batch
  expected = batch / num_steps
  assert np.all(np.abs(counts[1:] - expected) < 5 * math.sqrt(expected))
  # A zero network's L_simple is mean_d eps_d^2: mean 1, variance 2 / D = 1 for D = 2.
  assert loss.shape == (batch,)
  assert abs(float(metrics["loss"]) - 1.0) < 5 / math.sqrt(batch)
  loss_sum, _ = losses.diffusion_loss(zero_net, process, _points(mixture, batch),
                                      jax.random.PRNGKey(3), reduce="sum")
  np.testing.assert_allclose(loss_sum, 2 * loss, rtol=1e-6)  # sum = D * mean.


def test_l_simple_gradient_of_a_linear_model(mixture, ddpm):
  params = {"w": 0.1 * jnp.eye(2), "b": jnp.zeros(2), "c": jnp.ones(2)}

  def objective(params, x0, key):
    model = lambda x, t, cond: x @ params["w"] + params["b"] + t[:, None] * params["c"]
    return losses.diffusion_loss(model, ddpm, x0, key)[1]["loss"]

  grads = jax.jit(jax.grad(objective))(params, _points(mixture, 32), jax.random.PRNGKey(4))
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf)) and np.any(leaf != 0)


# --------------------------------------------------------------------------
# The variational bound
# --------------------------------------------------------------------------


def _ddpm_times(process):
  return np.arange(1, process.num_steps + 1) / process.num_steps


@pytest.fixture(scope="module")
def vlb_1000(mixture, ddpm):
  """VLB terms at T = 1000 of the exact oracle and of one with a 10% too large eps."""
  x0, key = _points(mixture, 256, seed=5), jax.random.PRNGKey(6)
  exact_fn, traces = mixture.denoise_fn(ddpm, "eps"), []

  @jax.jit
  def terms(scale, x0, key):
    def denoise_fn(x, t, cond):
      traces.append(t.shape)
      return (1.0 + scale) * exact_fn(x, t, cond)
    return losses.vlb_terms(denoise_fn, ddpm, x0, key, _ddpm_times(ddpm))

  return x0, terms(0.0, x0, key), terms(0.1, x0, key), traces


def test_vlb_of_the_oracle_is_finite_and_a_bound(mixture, vlb_1000):
  x0, exact, _, traces = vlb_1000
  assert len(traces) == 1  # One trace of the network for all 1000 steps and both models...
  assert int(exact["nfe"]) == 1000  # ...and calls it once per step.
  for name in ("prior", "diffusion", "decoder", "total", "bpd"):
    assert exact[name].shape == (256,) and np.all(np.isfinite(exact[name])), name
  assert exact["terms"].shape == (256, 1000)
  assert np.all(exact["decoder"] > 0) and np.all(exact["bpd"] > 0)
  # The total is the prior plus every term: the decoder and the T - 1 KLs.
  np.testing.assert_allclose(exact["decoder"], exact["terms"][:, 0], rtol=1e-6)
  np.testing.assert_allclose(exact["diffusion"], np.sum(exact["terms"][:, 1:], axis=1), rtol=1e-5)
  np.testing.assert_allclose(exact["total"], exact["prior"] + np.sum(exact["terms"], axis=1),
                             rtol=1e-5)
  np.testing.assert_allclose(exact["total"],
                             exact["prior"] + exact["diffusion"] + exact["decoder"], rtol=1e-6)
  np.testing.assert_allclose(exact["bpd"], exact["total"] / (2 * math.log(2)), rtol=1e-6)
  # An upper bound on the true NLL of the 8-bit data, -log(p(x0) bin width^2),
  # in expectation over the noise, and not a loose one (0.62 bpd observed).
  nll_bpd = -(mixture.log_prob(x0) + 2 * math.log(2 * BIN_HALF_WIDTH)) / (2 * math.log(2))
  gap = np.asarray(exact["bpd"] - nll_bpd)
  standard_error = gap.std() / math.sqrt(gap.size)
  assert gap.mean() > 3 * standard_error and gap.mean() < 1.0


def test_vlb_grows_for_a_worse_model(vlb_1000):
  _, exact, worse, _ = vlb_1000
  # Both models see the same x_t at every step, so the paired difference has a
  # small Monte-Carlo error (mean 0.117 bpd, standard error 0.012 observed).
  diff = np.asarray(worse["bpd"] - exact["bpd"])
  standard_error = diff.std() / math.sqrt(diff.size)
  assert diff.mean() > 5 * standard_error
  assert float(worse["bpd"].mean()) > float(exact["bpd"].mean())


def _prior_kl(x0, log_alpha2, log_alpha2_prior):
  """KL(N(alpha x0, 1 - alpha^2) || N(0, 1 - alpha_prior^2)) per example, float64."""
  var_q, var_p = -np.expm1(log_alpha2), -np.expm1(log_alpha2_prior)
  mean_q = np.exp(0.5 * log_alpha2) * np.asarray(x0, np.float64)
  return 0.5 * np.sum(var_q / var_p - 1 - np.log(var_q / var_p) + mean_q**2 / var_p, axis=1)


def test_prior_term_closed_form_ddpm(vlb_1000):
  x0, exact, _, _ = vlb_1000
  log_alpha_bar = np.sum(np.log1p(-schedules.beta_schedule("linear", 1000)))
  np.testing.assert_allclose(exact["prior"], _prior_kl(x0, log_alpha_bar, log_alpha_bar),
                             rtol=1e-3)


def test_prior_term_closed_form_vp_short_grid(mixture):
  """The grid stops at t = 0.5 < t_max: the variance mismatch term counts too."""
  process, times, x0 = schedules.VP(), np.array([0.25, 0.5]), _points(mixture, 8)
  log_alpha2 = lambda t: -0.5 * t**2 * (20.0 - 0.1) - t * 0.1
  out = losses.vlb_terms(mixture.denoise_fn(process), process, x0, jax.random.PRNGKey(7), times)
  np.testing.assert_allclose(out["prior"], _prior_kl(x0, log_alpha2(0.5), log_alpha2(1.0)),
                             rtol=1e-4)


def test_vlb_with_the_true_x0_has_closed_form_terms(mixture):
  """A network that knows x0: each KL is 0 (beta-tilde) or the variance mismatch (beta)."""
  num_steps = 10
  betas = schedules.beta_schedule("linear", num_steps, beta_end=0.2)
  process = schedules.DiscreteDDPM(betas=tuple(betas))
  x0 = _points(mixture, 8)
  true_x0 = lambda x, t, cond: x0
  out = {variance: losses.vlb_terms(true_x0, process, x0, jax.random.PRNGKey(8),
                                    _ddpm_times(process), prediction="x0", variance=variance)
         for variance in losses.VARIANCES}
  # With the posterior's own mean and variance every KL is exactly zero.
  assert np.all(np.asarray(out["beta_tilde"]["terms"][:, 1:]) == 0.0)
  assert np.all(np.asarray(out["beta_tilde"]["diffusion"]) == 0.0)
  # With beta_i: KL = D/2 (r - 1 - log r), D = 2, where
  # r = beta_tilde_i / beta_i = (1 - abar_{i-1}) / (1 - abar_i).
  one_minus_abar = -np.expm1(np.cumsum(np.log1p(-betas)))
  r = one_minus_abar[:-1] / one_minus_abar[1:]
  np.testing.assert_allclose(out["beta"]["terms"][:, 1:],
                             np.broadcast_to(r - 1 - np.log(r), (8, num_steps - 1)), rtol=1e-4)
  # Decoder: mean x0, std sqrt(beta_tilde_2) in both variants (Ho et al.'s
  # convention), so each coordinate's bin has mass 2 Phi(h / std) - 1.
  std = math.sqrt(betas[1] * one_minus_abar[0] / one_minus_abar[1])
  decoder = -2 * np.log(2 * stats.norm.cdf(BIN_HALF_WIDTH / std) - 1)
  for variance in losses.VARIANCES:
    np.testing.assert_allclose(out[variance]["decoder"], np.full(8, decoder), rtol=1e-4)


def test_vlb_of_a_model_off_by_known_amounts_is_closed_form(mixture):
  """x0_hat = x0 + d_i u (|u| = 1) at step i, whatever x_t. Then q and p differ in mean by
  c_i d_i u, c_i = sqrt(abar_{i-1}) beta_i / (1 - abar_i) (Ho et al. eq. 7), so with the
  posterior variance beta_tilde_i KL_i = (c_i d_i)^2 / (2 beta_tilde_i) for every noise draw;
  the decoder is the bin mass of N(x0 + d_1 u, beta_tilde_2) and the total the prior plus
  all T terms. Here c_i d_i = z_i sqrt(beta_tilde_i) (d_1 = z_1 sqrt(beta_tilde_2)),
  z_i = 1 + i / T: KL_i = z_i^2 / 2 nats, the last one (2 nats) included."""
  num_steps, dim = 10, 2
  betas = schedules.beta_schedule("linear", num_steps, beta_end=0.2)
  process = schedules.DiscreteDDPM(betas=tuple(betas))
  abar = np.cumprod(np.concatenate([[1.0], 1.0 - betas]))  # abar_0 = 1, ..., abar_T
  i = np.arange(1, num_steps + 1)
  c = np.sqrt(abar[i - 1]) * betas / (1 - abar[i])  # [T]; c_1 = 1
  beta_tilde = (1 - abar[i - 1]) / (1 - abar[i]) * betas  # [T]; beta_tilde_1 = 0
  std_1 = math.sqrt(beta_tilde[1])  # The decoder's std (Ho et al.'s convention).
  z = 1.0 + i / num_steps
  d = z * np.concatenate([[std_1], np.sqrt(beta_tilde[1:])]) / c  # [T]
  u = np.array([0.6, -0.8])
  x0 = _points(mixture, 8)
  offsets = jnp.asarray(np.concatenate([[0.0], d]), jnp.float32)  # Indexed by the step i.

  def off_model(x, t, cond):
    step = jnp.round(t * num_steps).astype(jnp.int32)  # [B], t = i / T
    return x0 + offsets[step][:, None] * jnp.asarray(u, jnp.float32)

  out = jax.jit(lambda key: losses.vlb_terms(off_model, process, x0, key, _ddpm_times(process),
                                             prediction="x0"))(jax.random.PRNGKey(9))
  kl = (c[1:] * d[1:]) ** 2 / (2 * beta_tilde[1:])  # [T - 1]
  np.testing.assert_allclose(kl, z[1:] ** 2 / 2, rtol=1e-12)
  h = BIN_HALF_WIDTH  # Every point lies inside (-1, 1): no edge bin.
  decoder = -np.sum(np.log(stats.norm.cdf((h - d[0] * u) / std_1)
                           - stats.norm.cdf((-h - d[0] * u) / std_1)))
  prior = _prior_kl(x0, np.log(abar[-1]), np.log(abar[-1]))  # [8]
  total = prior + kl.sum() + decoder
  assert out["terms"].shape == (8, num_steps)
  np.testing.assert_allclose(out["terms"][:, 0], np.full(8, decoder), rtol=1e-4)
  np.testing.assert_allclose(out["terms"][:, 1:], np.broadcast_to(kl, (8, num_steps - 1)),
                             rtol=1e-4)
  np.testing.assert_allclose(out["decoder"], np.full(8, decoder), rtol=1e-4)
  np.testing.assert_allclose(out["diffusion"], np.full(8, kl.sum()), rtol=1e-4)
  np.testing.assert_allclose(out["prior"], prior, rtol=1e-4)
  np.testing.assert_allclose(out["total"], total, rtol=1e-4)
  np.testing.assert_allclose(out["bpd"], total / (dim * math.log(2)), rtol=1e-4)


def test_vlb_of_the_exact_denoiser_of_gaussian_data_has_its_closed_form_mean():
  """Data N(mu, s^2 I) and its exact denoiser x0_hat(x_t) = E[x0 | x_t]. The error
  x0 - x0_hat ~ N(0, v_i I), v_i = s^2 sigma_i^2 / (alpha_i^2 s^2 + sigma_i^2), whatever x_t,
  so E KL_i = D c_i^2 v_i / (2 beta_tilde_i), c_i as above; the decoder's mean is, per
  coordinate, E -log(Phi((e + h) / std_1) - Phi((e - h) / std_1)) over e ~ N(0, v_1)
  (Gauss-Hermite); the prior's, with both variances 1 - abar_T (the grid ends at t_max),
  D/2 abar_T (s^2 + mu^2) / (1 - abar_T). The Monte-Carlo means over 512 examples match
  within 5 standard errors, and the bound exceeds the data's own expected NLL,
  D/2 log(2 pi e s^2) - D log(2h)."""
  num_steps, dim, mu, s, batch = 20, 2, 0.2, 0.1, 512
  betas = schedules.beta_schedule("linear", num_steps, beta_end=0.25)
  process = schedules.DiscreteDDPM(betas=tuple(betas))
  gaussian = oracle.GaussianMixture(np.ones(1), np.full((1, dim), mu), np.full(1, s))
  x0 = gaussian.sample(jax.random.PRNGKey(10), batch)  # Continuous, inside (-1, 1).
  out = jax.jit(lambda key: losses.vlb_terms(gaussian.denoise_fn(process), process, x0, key,
                                             _ddpm_times(process)))(jax.random.PRNGKey(11))

  abar = np.cumprod(np.concatenate([[1.0], 1.0 - betas]))  # abar_0 = 1, ..., abar_T
  i = np.arange(1, num_steps + 1)
  c = np.sqrt(abar[i - 1]) * betas / (1 - abar[i])  # [T]
  beta_tilde = (1 - abar[i - 1]) / (1 - abar[i]) * betas  # [T]
  v = s**2 * (1 - abar[i]) / (abar[i] * s**2 + 1 - abar[i])  # [T]
  std_1, h = math.sqrt(beta_tilde[1]), BIN_HALF_WIDTH
  nodes, weights = np.polynomial.hermite_e.hermegauss(60)  # E f(e), e ~ N(0, 1)
  e = -np.abs(math.sqrt(v[0]) * nodes)  # The mass is even in e; the lower tail is accurate.
  upper, lower = special.log_ndtr((e + h) / std_1), special.log_ndtr((e - h) / std_1)
  log_mass = upper + np.log(-np.expm1(lower - upper))
  decoder = -dim * np.sum(weights * log_mass) / weights.sum()
  prior = dim / 2 * abar[-1] * (s**2 + mu**2) / (1 - abar[-1])
  nll = dim / 2 * math.log(2 * math.pi * math.e * s**2) - dim * math.log(2 * h)
  kl = dim * c[1:] ** 2 * v[1:] / (2 * beta_tilde[1:])  # [T - 1]; var_i = beta_tilde_i
  expected = {"prior": prior, "decoder": decoder, "diffusion": kl.sum(),
              "total": prior + decoder + kl.sum()}
  assert expected["total"] > nll + 1.0
  for name, value in expected.items():
    sample = np.asarray(out[name], np.float64)
    standard_error = sample.std() / math.sqrt(batch)
    assert abs(sample.mean() - value) < 5 * standard_error + 1e-4 * abs(value), (
        name, sample.mean(), value, standard_error)
  per_step = np.asarray(out["terms"][:, 1:], np.float64)  # [B, T - 1]
  np.testing.assert_array_less(np.abs(per_step.mean(0) - kl),
                               5 * per_step.std(0) / math.sqrt(batch) + 1e-4 * kl)


def test_discretized_decoder_matches_scipy_and_normalizes():
  levels = np.linspace(-1.0, 1.0, 256)
  # Elementwise log-probabilities and their derivatives in the mean.
  log_prob_fn = jax.jit(lambda mean, std: (
      losses.discretized_gaussian_log_prob(jnp.asarray(levels, jnp.float32), mean, std),
      jax.grad(lambda m: losses.discretized_gaussian_log_prob(levels, m, std).sum())(mean)))
  for mean, std in [(0.0, 1e-4), (0.3, 1e-2), (-0.95, 0.3), (0.5, 10.0), (0.99, 3e-3)]:
    log_prob, grad = log_prob_fn(jnp.full(256, mean), std)
    # Reference in float64; upper-tail bins through the survival function.
    lower = np.where(np.arange(256) == 0, -np.inf, (levels - BIN_HALF_WIDTH - mean) / std)
    upper = np.where(np.arange(256) == 255, np.inf, (levels + BIN_HALF_WIDTH - mean) / std)
    mass = np.where(lower + upper > 0, stats.norm.sf(lower) - stats.norm.sf(upper),
                    stats.norm.cdf(upper) - stats.norm.cdf(lower))
    finite = mass > 1e-30
    expected_grad = (stats.norm.pdf(lower) - stats.norm.pdf(upper))[finite] / (std * mass[finite])
    assert np.all(np.isfinite(log_prob)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(log_prob[finite], np.log(mass[finite]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad[finite], expected_grad, rtol=1e-3,
                               atol=1e-4 * np.abs(expected_grad).max())
    assert abs(special.logsumexp(np.asarray(log_prob, np.float64))) < 1e-5  # Bins sum to 1.


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"target": "noise"}, "unknown target 'noise'"),
    ({"prediction": "eps_hat"}, "unknown prediction 'eps_hat'"),
    ({"weighting": "snr"}, "unknown weighting 'snr'.*likelihood"),
    ({"reduce": "max"}, "unknown reduce 'max'.*sum"),
])
def test_diffusion_loss_rejects_unknown_names(mixture, ddpm, kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.diffusion_loss(mixture.denoise_fn(ddpm), ddpm, np.zeros((4, 2)),
                          jax.random.PRNGKey(0), **kwargs)


def test_diffusion_loss_rejects_cond_of_another_batch(mixture, ddpm):
  with pytest.raises(ValueError, match="batch size 3"):
    losses.diffusion_loss(mixture.denoise_fn(ddpm), ddpm, np.zeros((4, 2)),
                          jax.random.PRNGKey(0), cond=np.zeros(3, np.int32))


@pytest.mark.parametrize("x0,times,kwargs,match", [
    (None, None, {"variance": "learned"}, "unknown variance 'learned'.*beta_tilde"),
    (None, np.array([0.5]), {}, "strictly increasing"),
    (None, np.array([0.5, 0.4]), {}, "strictly increasing"),
    (None, np.array([0.0, 0.5]), {}, "t_1 > 0"),
    (np.full((2, 2), 1.5), None, {}, r"x0 in \[-1, 1\]"),
])
def test_vlb_rejects_bad_arguments(mixture, ddpm, x0, times, kwargs, match):
  x0 = np.zeros((2, 2)) if x0 is None else x0
  times = _ddpm_times(ddpm) if times is None else times
  with pytest.raises(ValueError, match=match):
    losses.vlb_terms(mixture.denoise_fn(ddpm), ddpm, x0, jax.random.PRNGKey(0), times, **kwargs)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_autoencoder_loss_is_the_summed_reconstruction_error_plus_weighted_kl(kind):
  """Rombach et al. 2022's first-stage loss, per example, against numpy float64: the KL of
  N(mean, exp(logvar)) from N(0, 1) is sum (mean^2 + exp(logvar) - 1 - logvar) / 2."""
  rng = np.random.default_rng(0)
  x, reconstruction = rng.uniform(-1, 1, (2, 3, 4, 4, 1))
  mean, logvar = rng.normal(size=(2, 3, 2, 2, 2))
  loss, metrics = losses.autoencoder_loss(x, reconstruction, mean, logvar, kind=kind,
                                          kl_weight=0.01)
  error = np.abs(reconstruction - x) if kind == "l1" else np.square(reconstruction - x)
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
  np.testing.assert_allclose(loss, error.sum(axis=(1, 2, 3)) + 0.01 * kl, rtol=1e-5)
  np.testing.assert_allclose(metrics["reconstruction"], error.mean(axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)
