"""Tests for volscore.sampling.dpm_solver: DPM-Solver++(2M) on closed-form densities (moments of a Gaussian
within Monte Carlo error, second-order convergence, one network evaluation per level)."""

from __future__ import annotations

import math

import torch

from volscore.densities import Gaussian, GaussianMixture
from volscore.noise import karras_sigmas
from volscore.sampling.dpm_solver import dpm_solver_2m
from volscore.sampling.edm import heun_sampler


def perturbed_score(p):
    cache: dict[float, object] = {}

    def score(x, sigma):
        s = float(sigma[0])
        if s not in cache:
            cache[s] = p.perturbed(s)
        return cache[s].score(x)

    return score


def test_dpm_solver_maps_the_noise_to_the_gaussian_with_one_evaluation_per_level():
    p = Gaussian(
        torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.25, 0.04], dtype=torch.float64)
    )
    n, sigma_max = 20000, 80.0
    calls = []

    def score(x, sigma):
        calls.append(1)
        return perturbed_score(p)(x, sigma)

    x = p.perturbed(sigma_max).sample(n, torch.Generator().manual_seed(0))
    out = dpm_solver_2m(score, x, karras_sigmas(100, 0.002, sigma_max).double())
    assert len(calls) == 100
    var = torch.tensor([0.25, 0.04], dtype=torch.float64)
    assert torch.all((out.mean(0) - p.mean).abs() < 4 * (var / n).sqrt())
    assert torch.all((out.var(0) - var).abs() < 5 * var * math.sqrt(2 / n)), out.var(0)


def test_dpm_solver_is_second_order_and_agrees_with_heun():
    p = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=torch.float64),
        torch.tensor([[-1.0], [1.5]], dtype=torch.float64),
        torch.full((2, 1), 0.09, dtype=torch.float64),
    )
    x = 5.0 * torch.randn(200, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    score = perturbed_score(p)
    ref = heun_sampler(
        score, x.clone(), karras_sigmas(801, 0.05, 5.0).double()
    )  # the same ODE, solved finely

    def err(n):
        return float(
            (dpm_solver_2m(score, x.clone(), karras_sigmas(n, 0.05, 5.0).double()) - ref).abs().mean()
        )

    e1, e2 = err(21), err(41)
    assert e2 < e1 / 3, (e1, e2)


def test_dpm_solver_is_deterministic_and_works_on_volumes():
    x = torch.randn(2, 1, 5, 6, 7, generator=torch.Generator().manual_seed(2))
    seen = []
    out = dpm_solver_2m(
        lambda y, s: -y, x, karras_sigmas(4, 0.1, 1.0), callback=lambda i: seen.append(i["level"])
    )
    assert out.shape == x.shape and seen == [0, 1, 2, 3]
    torch.testing.assert_close(out, dpm_solver_2m(lambda y, s: -y, x, karras_sigmas(4, 0.1, 1.0)))
