"""Tests for volscore.sampling.edm: EDM's Heun and stochastic samplers on closed-form densities.

With the exact perturbed score of a Gaussian, the probability-flow ODE maps N(mu, Sigma + sigma_max^2 I) to
N(mu, Sigma): Heun's samples must match that mean and covariance within Monte Carlo error (4-5 standard
errors). The stochastic sampler must recover NCSN's 0.2 / 0.8 mixture weights; Heun's error must fall
like h^2 (second order).
"""

from __future__ import annotations

import math

import torch

from volscore.densities import Gaussian, GaussianMixture
from volscore.noise import karras_sigmas
from volscore.sampling.edm import edm_sampler, heun_sampler
from volscore.sampling.stitch import StitchedScore


def perturbed_score(p):
    cache: dict[float, object] = {}

    def score(x, sigma):
        s = float(sigma[0])
        if s not in cache:
            cache[s] = p.perturbed(s)
        return cache[s].score(x)

    return score


def _gaussian() -> Gaussian:
    return Gaussian(
        torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.25, 0.04], dtype=torch.float64)
    )


def _check_gaussian_moments(out: torch.Tensor, p: Gaussian, n: int) -> None:
    var = torch.tensor([0.25, 0.04], dtype=torch.float64)
    se_mean = (var / n).sqrt()
    assert torch.all((out.mean(0) - p.mean).abs() < 4 * se_mean), (out.mean(0), p.mean)
    assert torch.all((out.var(0) - var).abs() < 5 * var * math.sqrt(2 / n)), out.var(0)
    assert abs(float(torch.corrcoef(out.T)[0, 1])) < 5 / math.sqrt(n)  # independent axes stay independent


def test_heun_maps_the_noise_to_the_gaussian():
    p, n, sigma_max = _gaussian(), 20000, 80.0
    g = torch.Generator().manual_seed(0)
    x = p.perturbed(sigma_max).sample(n, g)
    out = heun_sampler(perturbed_score(p), x, karras_sigmas(80, 0.002, sigma_max).double())
    _check_gaussian_moments(out, p, n)


def test_heun_from_pure_noise_and_its_network_evaluations():
    # Starting from N(0, sigma_max^2 I) instead of the exact marginal costs O(|mu| sd / sigma_max): tiny.
    p, n, sigma_max = _gaussian(), 20000, 80.0
    calls = []

    def score(x, sigma):
        calls.append(1)
        return perturbed_score(p)(x, sigma)

    x = sigma_max * torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = heun_sampler(score, x, karras_sigmas(80, 0.002, sigma_max).double())
    _check_gaussian_moments(out, p, n)
    assert len(calls) == 2 * 80 - 1  # N levels: N - 1 Heun steps and a final Euler step to 0
    # EDM's 18 steps (35 evaluations) are coarse for a 2-d Gaussian 400 sd below sigma_max: about 13 %
    # too much variance (measured), shrinking to 1 % at 72 steps: the error of a second-order solver.
    out18 = heun_sampler(perturbed_score(p), x, karras_sigmas(18, 0.002, sigma_max).double())
    assert torch.all((out18.var(0) / torch.tensor([0.25, 0.04], dtype=torch.float64) - 1).abs() < 0.2)


def test_heun_is_second_order():
    p = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=torch.float64),
        torch.tensor([[-1.0], [1.5]], dtype=torch.float64),
        torch.full((2, 1), 0.09, dtype=torch.float64),
    )
    x = 5.0 * torch.randn(200, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    score = perturbed_score(p)
    # Same end level for every N, so only the step size changes; the reference uses many more steps.
    ref = heun_sampler(score, x.clone(), karras_sigmas(801, 0.05, 5.0).double())

    def err(n):
        return float(
            (heun_sampler(score, x.clone(), karras_sigmas(n, 0.05, 5.0).double()) - ref).abs().mean()
        )

    e1, e2 = err(21), err(41)
    assert e2 < e1 / 3, (e1, e2)  # ~4 for a second-order method, ~2 for Euler


def test_edm_sampler_recovers_ncsn_mixture_weights():
    p = GaussianMixture(torch.tensor([0.2, 0.8]), torch.tensor([[-5.0, -5.0], [5.0, 5.0]]), torch.ones(2, 2))
    n = 10000
    g = torch.Generator().manual_seed(3)
    sigmas = karras_sigmas(40, 0.01, 80.0)
    x = 80.0 * torch.randn(n, 2, generator=g)
    out = edm_sampler(perturbed_score(p), x, sigmas, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, generator=g)
    frac = float((out[:, 0] < 0).float().mean())
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n), frac
    # Within a mode, the mode's unit variance: churn's extra noise is not fully removed by a finite number of
    # steps (measured +19 % at 18 steps, +7 % at 40, +5 % at 80; Heun alone +8 %, +2 %, +1 %).
    assert abs(float(out[out[:, 0] > 0, 0].var()) - 1.0) < 0.1


def test_edm_sampler_without_churn_is_heun_and_is_reproducible():
    p = _gaussian()
    sigmas = karras_sigmas(6, 0.01, 10.0).double()
    x = 10.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(edm_sampler(perturbed_score(p), x, sigmas, s_churn=0.0),
                               heun_sampler(perturbed_score(p), x, sigmas))  # fmt: skip
    a = edm_sampler(perturbed_score(p), x, sigmas, generator=torch.Generator().manual_seed(5))
    b = edm_sampler(perturbed_score(p), x, sigmas, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, heun_sampler(perturbed_score(p), x, sigmas))


def test_per_sample_generators_make_samples_independent_of_batch():
    p = _gaussian()
    sigmas = karras_sigmas(5, 0.01, 10.0).double()
    x = 10.0 * torch.randn(4, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    batch = edm_sampler(perturbed_score(p), x, sigmas, generator=gens)
    single = edm_sampler(perturbed_score(p), x[2:3], sigmas, generator=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(batch[2:3], single)


def test_stitched_pointwise_score_gives_the_plain_path():
    # A 1x1x1 receptive field: the stitched score is the plain score voxel for voxel, so are the samples.
    def pointwise(x, sigma, coords=None):
        return -(x - 0.5) / (0.04 + sigma.view(-1, *[1] * (x.ndim - 1)) ** 2)

    x = 3.0 * torch.randn(1, 1, 9, 10, 11, generator=torch.Generator().manual_seed(7))
    sigmas = karras_sigmas(6, 0.01, 3.0)
    stitched = StitchedScore(
        pointwise, 4, stitch="shift", coords=False, generator=torch.Generator().manual_seed(8)
    )
    plain = heun_sampler(lambda y, s: pointwise(y, s), x, sigmas)
    torch.testing.assert_close(heun_sampler(stitched, x, sigmas), plain)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(
        edm_sampler(stitched, x, sigmas, generator=g1),
        edm_sampler(lambda y, s: pointwise(y, s), x, sigmas, generator=g2),
    )


def test_samplers_work_on_volumes_and_call_back():
    x = torch.randn(2, 1, 5, 6, 7, generator=torch.Generator().manual_seed(10))
    seen = []
    out = heun_sampler(
        lambda y, s: -y, x, karras_sigmas(4, 0.1, 1.0), callback=lambda i: seen.append(i["sigma"])
    )
    assert out.shape == x.shape and len(seen) == 4 and seen == sorted(seen, reverse=True)
