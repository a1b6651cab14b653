"""Tests for volscore.sampling.langevin: samplers checked against closed-form stationary laws.

The headline check is NCSN's experiment: for 0.2 N(-5, I) + 0.8 N(5, I), plain Langevin with the true
score keeps the initial 50/50 split (modes do not talk), while annealed Langevin with the true
perturbed scores recovers the 0.2/0.8 weights within 0.03 on 10,000 samples.
"""

from __future__ import annotations

import math

import torch

from volscore.densities import Gaussian, GaussianMixture
from volscore.noise import geometric_sigmas
from volscore.sampling.langevin import annealed_langevin, langevin, predictor_corrector, randn_like


def _ncsn_mixture() -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([0.2, 0.8]), torch.tensor([[-5.0, -5.0], [5.0, 5.0]]), torch.ones(2, 2)
    )


def _perturbed_score(p):
    cache: dict[float, object] = {}

    def score(x, sigma):
        s = float(sigma[0])
        if s not in cache:
            cache[s] = p.perturbed(s)
        return cache[s].score(x)

    return score


def test_annealed_langevin_recovers_mixture_weights_plain_does_not():
    p = _ncsn_mixture()
    n = 10000
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, 2, generator=g) * 16 - 8
    plain = langevin(p.score, x0.clone(), step_size=0.1, n_steps=1000, generator=g)
    annealed = annealed_langevin(
        _perturbed_score(p),
        x0.clone(),
        geometric_sigmas(20.0, 1.0, 10),
        n_steps_each=100,
        step_lr=0.1,
        generator=g,
    )
    frac_plain = float((plain[:, 0] < 0).float().mean())
    frac_annealed = float((annealed[:, 0] < 0).float().mean())
    assert abs(frac_annealed - 0.2) < 0.03, frac_annealed
    assert abs(frac_plain - 0.2) > 0.1, frac_plain  # stays near the initial 0.5


def test_langevin_matches_the_discretised_stationary_variance():
    # For N(0, s^2) the update is an AR(1) chain with stationary variance s^2 / (1 - gamma / (2 s^2)).
    s2, gamma, n = 2.0, 0.5, 20000
    p = Gaussian(torch.zeros(1, dtype=torch.float64), torch.full((1,), s2, dtype=torch.float64))
    x = langevin(
        p.score,
        torch.zeros(n, 1, dtype=torch.float64),
        gamma,
        200,
        generator=torch.Generator().manual_seed(1),
    )
    expected = s2 / (1 - gamma / (2 * s2))
    assert abs(float(x.var()) - expected) < 4 * expected * math.sqrt(2 / n)
    assert abs(float(x.var()) - s2) > 4 * expected * math.sqrt(2 / n)  # the bias is visible, as it should be


def test_annealed_langevin_final_tweedie_step_is_the_posterior_mean():
    p = Gaussian(torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.04], dtype=torch.float64))
    sigmas = torch.tensor([0.5, 0.2])
    x = torch.randn(5, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = annealed_langevin(_perturbed_score(p), x.clone(), sigmas, n_steps_each=0, denoise=True)
    # With no Langevin steps only Tweedie runs: E[x0 | x] = mu + var / (var + sigma^2) (x - mu).
    torch.testing.assert_close(out, 0.3 + 0.04 / (0.04 + 0.04) * (x - 0.3))


def test_predictor_corrector_samples_a_gaussian():
    mean, var = 1.0, 0.25
    p = Gaussian(torch.tensor([mean, -mean], dtype=torch.float64), torch.full((2,), var, dtype=torch.float64))
    sigmas = geometric_sigmas(10.0, 0.05, 30).double()
    n = 20000
    g = torch.Generator().manual_seed(3)
    x = sigmas[0] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    out = predictor_corrector(
        _perturbed_score(p), x, sigmas, n_steps_each=1, snr=0.16, denoise=False, generator=g
    )
    target_var = var + float(sigmas[-1]) ** 2
    se_mean = math.sqrt(target_var / n)
    assert abs(float(out[:, 0].mean()) - mean) < 4 * se_mean + 0.01
    # The reverse-diffusion discretisation adds a small bias, so allow 5 % on the variance besides 4 SE.
    assert abs(float(out[:, 0].var()) - target_var) < 4 * target_var * math.sqrt(2 / n) + 0.05 * target_var


def test_per_sample_generators_make_samples_independent_of_batch():
    p = Gaussian(torch.zeros(3), torch.ones(3))
    sigmas = geometric_sigmas(1.0, 0.1, 3)
    score = _perturbed_score(p)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    x4 = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(100 + s)) for s in range(4)])
    batch = annealed_langevin(score, x4, sigmas, n_steps_each=5, step_lr=0.01, generator=gens)
    single = annealed_langevin(
        score, x4[2:3], sigmas, n_steps_each=5, step_lr=0.01, generator=[torch.Generator().manual_seed(2)]
    )
    torch.testing.assert_close(batch[2:3], single)


def test_randn_like_checks_generator_count():
    try:
        randn_like(torch.zeros(3, 2), [torch.Generator()])
    except ValueError as e:
        assert "generators" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_samplers_work_on_volumes_and_call_back():
    x = torch.randn(2, 1, 5, 6, 7, generator=torch.Generator().manual_seed(4))
    seen = []
    out = annealed_langevin(
        lambda y, s: -y,
        x,
        geometric_sigmas(1.0, 0.1, 3),
        n_steps_each=2,
        callback=lambda info: seen.append(info["sigma"]),
    )
    assert out.shape == x.shape and len(seen) == 3
    out = predictor_corrector(lambda y, s: -y, x, geometric_sigmas(1.0, 0.1, 3))
    assert out.shape == x.shape and torch.isfinite(out).all()
