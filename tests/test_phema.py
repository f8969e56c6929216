"""Post-hoc EMA (Karras et al. 2024, section 3, appendix C): sigma_rel <-> gamma against the
paper's numbers, the tracked EMA's weights against the power-function profile, the
reconstruction's coefficients against profiles integrated by quadrature, and its range.
The trained run (snapshots, resumption, generate.load) is tested in test_train.py."""

import numpy as np
import pytest
from scipy import integrate

from jaxdiff.train import phema


def test_sigma_rel_and_gamma_round_trip_and_match_the_paper():
  """EDM2 (section 3.1): gamma 16.97 is sigma_rel 0.05, gamma 6.94 is sigma_rel 0.10."""
  np.testing.assert_allclose(phema.gamma_to_sigma_rel([16.97, 6.94]), [0.05, 0.10],
                             atol=5e-5)  # The paper gives gamma to two decimals.
  sigma_rels = np.array([0.001, 0.01, 0.05, 0.1, 0.2, 0.28])
  np.testing.assert_allclose(phema.gamma_to_sigma_rel(phema.sigma_rel_to_gamma(sigma_rels)),
                             sigma_rels, rtol=1e-12)
  # The standard deviation of the profile at t = 1 (relative to the training time), by
  # quadrature.
  for gamma in (0.5, 6.94):
    moment = [integrate.quad(lambda tau, k=k: tau ** k * phema.profile(1.0, gamma, tau), 0, 1)[0]
              for k in (0, 1, 2)]
    np.testing.assert_allclose(moment[0], 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(moment[2] - moment[1] ** 2),
                               phema.gamma_to_sigma_rel(gamma), rtol=1e-10)


def test_tracked_weights_are_the_profile_mass_of_each_step():
  """theta_ema <- beta_t theta_ema + (1 - beta_t) theta_t, t = 1..T: theta_tau's weight is
  the integral of p_T over [tau - 1, tau] (so the first update's beta is 0)."""
  T, gamma = 200, float(phema.sigma_rel_to_gamma(0.1))
  betas = np.asarray(phema.beta(gamma, np.arange(1, T + 1)), np.float64)
  assert betas[0] == 0
  weights = (1 - betas) * np.append(np.cumprod(betas[::-1])[::-1][1:], 1.0)  # [T]
  tau = np.arange(1, T + 1)
  mass = [integrate.quad(lambda s: phema.profile(T, gamma, s), t - 1, t)[0] for t in tau]
  np.testing.assert_allclose(weights, mass, rtol=1e-4, atol=1e-9)


def test_coefficients_are_the_least_squares_fit_of_profiles_by_quadrature():
  """A_ij = <p_i, p_j>, b_i = <p_i, p*> integrated numerically in float64: the same
  coefficients (and profile error) as the closed forms of eq. 151."""
  steps = [300, 300, 600, 600, 1000, 1000]
  sigma_rels = [0.05, 0.10] * 3
  target_step, target = 1000, 0.07
  gammas = phema.sigma_rel_to_gamma(sigma_rels)
  g_target = float(phema.sigma_rel_to_gamma(target))

  def dot(t_a, g_a, t_b, g_b):
    return integrate.quad(lambda s: phema.profile(t_a, g_a, s) * phema.profile(t_b, g_b, s),
                          0, min(t_a, t_b), epsabs=0, epsrel=1e-12, limit=200)[0]

  A = np.array([[dot(ta, ga, tb, gb) for tb, gb in zip(steps, gammas)]
                for ta, ga in zip(steps, gammas)])
  b = np.array([dot(ta, ga, target_step, g_target) for ta, ga in zip(steps, gammas)])
  x = np.linalg.solve(A, b)
  x /= x.sum()
  # The fitted profile's L2 distance to the target's, by quadrature too.
  fit = lambda s: sum(x_i * phema.profile(t, g, s) for x_i, t, g in zip(x, steps, gammas))
  miss = integrate.quad(lambda s: (fit(s) - phema.profile(target_step, g_target, s)) ** 2,
                        0, target_step, points=[300, 600], limit=200)[0]
  coefficients, error = phema.coefficients(steps, sigma_rels, target_step, target)
  np.testing.assert_allclose(coefficients, x, rtol=1e-7, atol=1e-10)
  np.testing.assert_allclose(error, np.sqrt(miss / dot(target_step, g_target, target_step,
                                                       g_target)), rtol=1e-4)
  # A tracked length at a snapshot's step is that snapshot alone.
  np.testing.assert_allclose(phema.coefficients(steps, sigma_rels, 1000, 0.10)[0],
                             np.eye(6)[5], atol=1e-9)


def test_targets_the_snapshots_cannot_represent_are_refused_naming_the_range():
  snapshots = [phema.Snapshot(t, s, lambda: None) for t in (500, 1000, 1500)
               for s in (0.05, 0.10)]
  [(low, high)] = phema.representable([s.step for s in snapshots],
                                      [s.sigma_rel for s in snapshots], 1500)
  assert 0.03 < low < 0.05 and 0.10 < high < 0.2
  with pytest.raises(ValueError, match=r"cannot represent sigma_rel 0.25 at step 1500: its "
                     r"reconstructed profile misses by .*; they can represent sigma_rel in "
                     rf"\[{low:.3f}, {high:.3f}\]"):
    phema.reconstruct(snapshots, 0.25)
  with pytest.raises(ValueError, match=r"sigma_rel must lie in \(0, 0.2887\)"):
    phema.reconstruct(snapshots, 0.3)
  with pytest.raises(ValueError, match="no post-hoc EMA snapshot at or before step 400"):
    phema.reconstruct(snapshots, 0.07, 400)
