"""Tests for volscore.noise: schedules, NCSNv2's techniques, sigma sampling and rank-agnostic broadcasting."""

from __future__ import annotations

import math

import pytest
import torch

from volscore.noise import (
    _overlap,
    append_dims,
    as_sigma_batch,
    geometric_sigmas,
    ncsnv2_gamma,
    ncsnv2_num_sigmas,
    sample_training_sigmas,
    sigma_max_from_data,
)


@pytest.mark.parametrize("shape", [(4, 3), (4, 1, 5, 6), (4, 1, 3, 5, 7)])
def test_append_dims_broadcasts_per_sample(shape):
    x = torch.ones(shape)
    sigma = torch.arange(1.0, 5.0)
    out = append_dims(sigma, x.ndim) * x
    for b in range(4):
        assert torch.all(out[b] == sigma[b])


def test_append_dims_rejects_lower_target():
    with pytest.raises(ValueError):
        append_dims(torch.ones(2, 3), 1)


def test_as_sigma_batch_forms():
    assert torch.equal(as_sigma_batch(0.5, 3), torch.full((3,), 0.5))
    assert torch.equal(as_sigma_batch(torch.tensor([1.0, 2.0]), 2), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        as_sigma_batch(torch.ones(3), 2)


def test_geometric_sigmas_endpoints_and_constant_ratio():
    s = geometric_sigmas(50.0, 0.01, 12)
    assert s.shape == (12,)
    assert math.isclose(float(s[0]), 50.0, rel_tol=1e-6) and math.isclose(float(s[-1]), 0.01, rel_tol=1e-6)
    ratios = s[:-1] / s[1:]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-5)
    with pytest.raises(ValueError):
        geometric_sigmas(0.01, 1.0, 10)
    with pytest.raises(ValueError):
        geometric_sigmas(1.0, 0.01, 1)


def test_ncsnv2_gamma_solves_technique_2():
    for d in (784, 32**3):
        gamma = ncsnv2_gamma(d)
        assert gamma > 1
        assert abs(_overlap(gamma, d) - 0.5) < 1e-6
    # Higher dimensions need closer noise levels.
    assert ncsnv2_gamma(64**3) < ncsnv2_gamma(32**3) < ncsnv2_gamma(16**3)


def test_ncsnv2_num_sigmas_covers_the_range():
    d, smax, smin = 3072, 50.0, 0.01
    n = ncsnv2_num_sigmas(d, smax, smin)
    gamma = ncsnv2_gamma(d)
    assert gamma ** (n - 1) >= smax / smin > gamma ** (n - 2)


def test_sigma_max_from_data_is_the_largest_pairwise_distance():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    assert math.isclose(sigma_max_from_data(x), 5.0, rel_tol=1e-9)
    g = torch.Generator().manual_seed(0)
    big = torch.randn(500, 7, generator=g)
    sub = sigma_max_from_data(big, max_points=100, generator=g)
    assert 0 < sub <= sigma_max_from_data(big)


def test_sigma_sampling():
    g = torch.Generator().manual_seed(0)
    sigmas = geometric_sigmas(1.0, 0.01, 5)
    draws = sample_training_sigmas("geometric", 2000, g, 0.01, 1.0, num_sigmas=5)
    assert torch.allclose(torch.tensor(sorted(set(draws.tolist()))), sigmas.flip(0))
    ln = torch.log(sample_training_sigmas("lognormal", 20000, g, 1e-9, 1e9, p_mean=-1.2, p_std=1.2))
    # Monte Carlo: the mean of 20,000 normals has standard error 1.2 / sqrt(20000) = 0.0085.
    assert abs(float(ln.mean()) + 1.2) < 4 * 1.2 / math.sqrt(20000)
    clamped = sample_training_sigmas("lognormal", 1000, g, 0.1, 2.0, p_mean=0.0, p_std=3.0)
    assert float(clamped.min()) >= 0.1 and float(clamped.max()) <= 2.0
    # log-uniform: ln sigma uniform on [ln 0.01, ln 1], mean -2.303, sd 1.329 / sqrt(20000) per mean
    lu = torch.log(sample_training_sigmas("loguniform", 20000, g, 0.01, 1.0))
    assert float(lu.min()) >= math.log(0.01) - 1e-6 and float(lu.max()) <= 1e-6
    assert abs(float(lu.mean()) - math.log(0.1)) < 4 * (2 * math.log(10) / math.sqrt(12)) / math.sqrt(20000)
    with pytest.raises(ValueError):
        sample_training_sigmas("uniform", 3, g, 0.01, 1.0)


def test_ncsnv2_step_lr_reproduces_the_published_cifar10_value():
    from volscore.noise import ncsnv2_step_lr

    # NCSNv2 CIFAR-10: sigma 50 -> 0.01 over L = 232 levels, T = 5 steps each, published eps = 6.2e-6.
    gamma = (50 / 0.01) ** (1 / 231)
    assert abs(ncsnv2_step_lr(0.01, gamma, 5) / 6.2e-6 - 1) < 0.02
    # More steps per level allow a smaller step.
    assert ncsnv2_step_lr(0.01, gamma, 20) < ncsnv2_step_lr(0.01, gamma, 5)


def test_karras_sigmas_endpoints_monotone_and_rho_limits():
    from volscore.noise import karras_sigmas

    s = karras_sigmas(18, 0.002, 80.0)
    assert s.shape == (18,) and s.dtype == torch.float32
    assert float(s[0]) == pytest.approx(80.0) and float(s[-1]) == pytest.approx(0.002)
    assert torch.all(s[1:] < s[:-1])
    # EDM's schedule: (80^(1/7) + i/17 (0.002^(1/7) - 80^(1/7)))^7 at i = 9
    assert float(s[9]) == pytest.approx(
        (80 ** (1 / 7) + 9 / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7, rel=1e-5
    )
    # rho = 1: uniform in sigma; a large rho approaches the geometric schedule
    torch.testing.assert_close(karras_sigmas(5, 1.0, 5.0, rho=1.0), torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]))
    torch.testing.assert_close(
        karras_sigmas(6, 0.01, 10.0, rho=1e4), geometric_sigmas(10.0, 0.01, 6), rtol=2e-3, atol=0
    )
    # rho = 7 lies between uniform (rho = 1) and geometric (rho -> infinity) at every inner level
    mid = karras_sigmas(10, 0.01, 10.0)[1:-1]
    assert torch.all(mid < karras_sigmas(10, 0.01, 10.0, rho=1.0)[1:-1])
    assert torch.all(mid > geometric_sigmas(10.0, 0.01, 10)[1:-1])
    with pytest.raises(ValueError):
        karras_sigmas(1, 0.01, 1.0)
    with pytest.raises(ValueError):
        karras_sigmas(5, 1.0, 0.5)
