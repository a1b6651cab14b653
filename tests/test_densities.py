"""Tests for volscore.densities: log p against scipy, scores against autograd, perturbation in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from volscore.densities import Gaussian, GaussianMixture


def _cov(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.3 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("full", [False, True])
def test_gaussian_log_prob_matches_scipy_and_score_matches_autograd(full):
    d = 4
    mean = torch.linspace(-1, 1, d, dtype=torch.float64)
    cov = _cov(d, 0) if full else torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    p = Gaussian(mean, cov)
    x = torch.randn(7, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = multivariate_normal(mean.numpy(), (cov if full else torch.diag(cov)).numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(p.log_prob(x).numpy(), ref, rtol=1e-10)
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(p.log_prob(xr).sum(), xr)
    torch.testing.assert_close(p.score(x), auto)


def test_gaussian_event_shape_and_sample_moments():
    p = Gaussian(
        torch.zeros(8, dtype=torch.float64), torch.full((8,), 4.0, dtype=torch.float64), (1, 2, 2, 2)
    )
    x = p.sample(20000, torch.Generator().manual_seed(2))
    assert x.shape == (20000, 1, 2, 2, 2) and p.score(x).shape == x.shape
    var = x.flatten(1).var(0)
    # Standard error of a sample variance: var * sqrt(2 / n) = 0.04 here.
    assert torch.all((var - 4.0).abs() < 4 * 4.0 * math.sqrt(2 / 20000))


def test_gaussian_perturbed_matches_noisy_samples():
    p = Gaussian(torch.tensor([1.0, -1.0], dtype=torch.float64), _cov(2, 3))
    sigma = 0.7
    g = torch.Generator().manual_seed(4)
    x = p.sample(50000, g) + sigma * torch.randn(50000, 2, generator=g, dtype=torch.float64)
    ps = p.perturbed(sigma)
    emp = torch.cov(x.T)
    se = ps.cov.diagonal().sqrt().outer(ps.cov.diagonal().sqrt()) * math.sqrt(2 / 50000)
    assert torch.all((emp - ps.cov).abs() < 4 * se)
    assert math.isclose(ps.expected_sq_score_norm(), float(torch.linalg.inv(ps.cov).trace()), rel_tol=1e-10)


def test_mixture_log_prob_score_and_weights():
    w = torch.tensor([0.2, 0.8], dtype=torch.float64)
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    covs = torch.stack([_cov(2, 5), _cov(2, 6)])
    mix = GaussianMixture(w, means, covs)
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2
    ref = np.log(
        sum(
            float(w[k]) * multivariate_normal(means[k].numpy(), covs[k].numpy()).pdf(x.numpy())
            for k in range(2)
        )
    )
    np.testing.assert_allclose(mix.log_prob(x).numpy(), ref, rtol=1e-10)
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(mix.log_prob(xr).sum(), xr)
    torch.testing.assert_close(mix.score(x), auto)
    s = mix.sample(20000, torch.Generator().manual_seed(8))
    frac = float((mix.responsibilities(s)[:, 0] > 0.5).double().mean())
    assert abs(frac - 0.2) < 0.02  # components are well separated; binomial SE is 0.003
    pm = mix.perturbed(0.5)
    torch.testing.assert_close(pm.components[1].cov, covs[1] + 0.25 * torch.eye(2, dtype=torch.float64))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="cov"):
        Gaussian(torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match="sum to one"):
        GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.ones(2, 2))
