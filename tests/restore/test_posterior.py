"""Tests for volscore.restore.posterior against the exact Gaussian posterior.

Prior N(mu, sd^2 I) on R^8 (a 1D "volume" of 8 voxels) with its exact perturbed score
(mu - x) / (sd^2 + sigma^2), measurement y = A x + n with a Gaussian slice profile (factor 2: A mixes
neighbouring voxels) and noise 0.1: the posterior is N(m, C) with C = (I / sd^2 + A^T A / s^2)^-1,
m = C (mu / sd^2 + A^T y / s^2). ``PosteriorScore`` is exact for this prior, so every sampler must reproduce m
and C within Monte Carlo error (mean: 4.5 standard errors; covariance entries: 5 standard errors of a sample
covariance, sqrt((C_ii C_jj + C_ij^2) / n)); the mask leaves known voxels bit for bit; with the identity
operator the posterior mean is Tweedie's estimate y + s^2 score(y, s), the denoiser's.
"""

from __future__ import annotations

import pytest
import torch

from volscore.noise import karras_sigmas
from volscore.restore.operators import Identity, Mask, SliceProfile
from volscore.restore.posterior import PosteriorScore, posterior_sample, tweedie_variance
from volscore.sampling.settings import SamplerSettings

N_DIM, SD, NOISE, N = 8, 0.5, 0.1, 4000
MU = torch.linspace(-0.4, 0.6, N_DIM, dtype=torch.float64)


def prior_score(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    s = float(sigma.flatten()[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
    return (MU - x) / (SD**2 + s**2)


def exact_posterior(a: torch.Tensor, y: torch.Tensor, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    precision = torch.eye(N_DIM, dtype=torch.float64) / SD**2 + a.T @ a / noise**2
    cov = torch.linalg.inv(precision)
    return cov @ (MU / SD**2 + a.T @ y / noise**2), cov


def _draw(operator, y, noise, sampler: str, steps: int, seed: int = 0) -> torch.Tensor:
    settings = SamplerSettings(
        sampler=sampler, steps=steps, s_churn=10.0, s_tmin=0.0, s_tmax=100.0, s_noise=1.0
    )
    sigmas = karras_sigmas(steps, 0.002, 20.0).double()
    out = posterior_sample(
        prior_score, operator, y, noise, sigmas, settings, SD, (N, 1, N_DIM),
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return out[:, 0]


def _check_moments(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    n = len(samples)
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((samples.mean(0) - mean).abs() <= 4.5 * se_mean).all(), (samples.mean(0) - mean) / se_mean
    got = torch.cov(samples.T)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((got - cov).abs() <= 5 * se_cov).all(), ((got - cov) / se_cov).abs().max()


@pytest.mark.parametrize(("sampler", "steps"), [("heun", 40), ("edm", 60), ("dpm", 80)])
def test_slice_profile_posterior_matches_the_exact_gaussian(sampler: str, steps: int) -> None:
    op = SliceProfile(N_DIM, axis=0, factor=2, profile="gaussian", spatial_dims=1)
    y = torch.tensor([0.1, -0.3, 0.5, 0.9], dtype=torch.float64)
    mean, cov = exact_posterior(op.matrix, y, NOISE)
    _check_moments(_draw(op, y, NOISE, sampler, steps), mean, cov)


def test_a_wrong_covariance_would_fail() -> None:
    """The check can fail: the prior's own moments are far from the posterior's."""
    op = SliceProfile(N_DIM, axis=0, factor=2, profile="box", spatial_dims=1)
    y = torch.tensor([0.1, -0.3, 0.5, 0.9], dtype=torch.float64)
    mean, cov = exact_posterior(op.matrix, y, NOISE)
    prior = MU + SD * torch.randn(N, N_DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(AssertionError):
        _check_moments(prior, mean, cov)


def test_noise_free_mask_keeps_known_voxels_and_samples_the_prior_elsewhere() -> None:
    known = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    y = torch.where(
        known, torch.linspace(1.0, 2.0, N_DIM, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    )
    out = _draw(Mask(known), y, 0.0, "heun", 30)
    assert torch.equal(out[:, known], y[known].expand(N, -1))
    # unknown voxels: independent of the known ones under an isotropic prior, so the prior's marginal
    free = ~known
    cov = SD**2 * torch.eye(int(free.sum()), dtype=torch.float64)
    _check_moments(out[:, free], MU[free], cov)


def test_identity_posterior_mean_is_tweedies_denoiser() -> None:
    y = torch.linspace(0.0, 1.0, N_DIM, dtype=torch.float64)
    tweedie = y + NOISE**2 * prior_score(y, NOISE)
    samples = _draw(Identity(), y, NOISE, "heun", 30)
    mean, cov = exact_posterior(torch.eye(N_DIM, dtype=torch.float64), y, NOISE)
    torch.testing.assert_close(mean, tweedie)
    _check_moments(samples, mean, cov)


def test_denoise_is_the_proximal_step_on_tweedie() -> None:
    op = Mask(torch.tensor([1, 0] * 4, dtype=torch.bool))
    y = torch.ones(N_DIM, dtype=torch.float64)
    post = PosteriorScore(prior_score, op, y, 0.2, SD)
    x = torch.zeros(1, 1, N_DIM, dtype=torch.float64)
    d = x + 0.3**2 * prior_score(x, 0.3)
    r2 = tweedie_variance(0.3, SD)
    w = r2 / (r2 + 0.04)
    expected = torch.where(op.known, w * y + (1 - w) * d, d)
    torch.testing.assert_close(post.denoise(x, torch.tensor([0.3])), expected)
    torch.testing.assert_close(post(x, torch.tensor([0.3])), (expected - x) / 0.09)


def test_mixed_levels_in_a_batch_are_refused() -> None:
    post = PosteriorScore(prior_score, Identity(), torch.zeros(N_DIM), 0.1, SD)
    with pytest.raises(ValueError, match="same noise level"):
        post(torch.zeros(2, 1, N_DIM), torch.tensor([0.1, 0.2]))
