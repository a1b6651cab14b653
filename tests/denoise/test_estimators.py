"""Tests for volscore/denoise/estimators.py: Tweedie and annealed denoising on closed forms.

- Tweedie equals the Wiener / MMSE answer for a Gaussian prior from ``volscore.densities``: a full covariance
  over a whole small volume (one tile), and a coordinate-dependent pointwise prior through the stitcher
  (blend and shift), whose empirical error matches the closed-form MMSE.
- Annealed denoising is reproducible per seed; 3 averaged predictor chains land between 1 and 1.7 MMSE.
- The flip / offset ensemble: ``ensemble=1`` is the single pass of before, bit for bit (the tiny run's
  network and a lopsided closed form); for a pointwise model of (x, sigma, coords), which is exactly
  flip-equivariant once ``mirrored`` negates the flipped coordinates, every ensemble equals the single pass
  (and for a lopsided one it does not); two passes on one tile are the mean of the plain and the mirrored
  pass; ``flip_patterns`` order, ``ensemble`` >= 1, bf16 autocast close to float32.
All seeded; volumes of about 20^3 voxels, patches of 8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from phantoms import grid

from volscore.denoise import annealed_denoise, tweedie_denoise
from volscore.denoise.estimators import flip_patterns, mirrored
from volscore.densities import Gaussian


def test_tweedie_full_covariance_gaussian_is_wiener():
    shape, sigma = (4, 5, 6), 0.2
    d = int(np.prod(shape))
    z, y, x = (torch.from_numpy(g).reshape(-1).double() * 3 for g in grid(shape))
    dist2 = (z[:, None] - z) ** 2 + (y[:, None] - y) ** 2 + (x[:, None] - x) ** 2
    cov = 0.04 * torch.exp(-dist2 / 2) + 1e-3 * torch.eye(d, dtype=torch.float64)
    mean = 0.5 + 0.1 * x
    prior = Gaussian(mean, cov, event_shape=(1, *shape))
    g = torch.Generator().manual_seed(0)
    clean = prior.sample(1, g)[0, 0]
    noisy = (clean + sigma * torch.randn(shape, generator=g, dtype=torch.float64)).float()

    def patch_fn(xt, s, coords):  # the exact score of p_sigma = N(mean, cov + sigma^2 I)
        return prior.perturbed(float(s[0])).score(xt.double()).float()

    wiener = mean + cov @ torch.linalg.solve(
        cov + sigma**2 * torch.eye(d, dtype=torch.float64), noisy.double().reshape(-1) - mean
    )
    for stitch in ("blend", "shift"):  # patch == volume: one tile
        out = tweedie_denoise(patch_fn, noisy, sigma, shape, coords=False, stitch=stitch)
        assert out.shape == shape
        torch.testing.assert_close(out.double().reshape(-1), wiener, atol=1e-5, rtol=1e-5)


def _prior_from_coords(coords, scale=1.0):
    """Per-voxel mean and variance of a pointwise prior, from whole-volume coordinates (N, 3, ...)."""
    mean = 0.5 + 0.2 * coords[:, :1] - 0.1 * coords[:, 2:]
    var = scale * (0.02 + 0.01 * (coords[:, 1:2] + 1) / 2)
    return mean, var


def pointwise_prior_score(x, sigma, coords, scale=1.0):
    """Exact score of the perturbed pointwise prior, one ``densities.Gaussian`` per tile."""
    mean, var = _prior_from_coords(coords, scale)
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        prior = Gaussian(mean[n].reshape(-1), var[n].reshape(-1), event_shape=x.shape[1:])
        out[n] = prior.perturbed(float(sigma[n])).score(x[n : n + 1])[0]
    return out


@pytest.mark.parametrize("stitch", ["blend", "shift"])
def test_stitched_tweedie_with_pointwise_prior_is_wiener_and_mmse(stitch):
    shape, sigma = (20, 23, 17), 0.1
    coords = torch.stack([torch.from_numpy(g).float() for g in grid(shape)])[None]
    mean, var = (t[0, 0] for t in _prior_from_coords(coords))
    g = torch.Generator().manual_seed(1)
    clean = mean + var.sqrt() * torch.randn(shape, generator=g)
    noisy = clean + sigma * torch.randn(shape, generator=g)
    out = tweedie_denoise(
        pointwise_prior_score,
        noisy,
        sigma,
        8,
        coords=True,
        stitch=stitch,
        generator=torch.Generator().manual_seed(2),
    )
    wiener = mean + var / (var + sigma**2) * (noisy - mean)
    torch.testing.assert_close(out, wiener, atol=1e-5, rtol=1e-5)
    mmse = float((var * sigma**2 / (var + sigma**2)).mean())
    mse = float(((out - clean) ** 2).mean())
    assert abs(mse / mmse - 1) < 0.1 and mse < 0.8 * sigma**2


@pytest.mark.parametrize("sampler", ["pc", "annealed"])
def test_annealed_denoise_is_seeded(sampler):
    shape, sigma, scale = (20, 18, 16), 0.1, 0.1  # prior sd 0.045-0.055: the noise dominates

    def score(x, s, c):
        return pointwise_prior_score(x, s, c, scale)

    coords = torch.stack([torch.from_numpy(g).float() for g in grid(shape)])[None]
    mean, var = (t[0, 0] for t in _prior_from_coords(coords, scale))
    g = torch.Generator().manual_seed(3)
    clean = mean + var.sqrt() * torch.randn(shape, generator=g)
    noisy = clean + sigma * torch.randn(shape, generator=g)

    def run(seed, chains=1):
        return annealed_denoise(
            score,
            noisy,
            sigma,
            4,
            8,
            True,
            0.01,
            sampler=sampler,
            chains=chains,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    if sampler == "pc":  # a posterior sampler: 3 averaged chains, error about (1 + 1/3) MMSE
        mmse = float((var * sigma**2 / (var + sigma**2)).mean())
        mse = float(((run(0, chains=3) - clean) ** 2).mean())
        assert mmse < mse < 1.7 * mmse < 0.5 * sigma**2


# -- the flip / offset ensemble ------------------------------------------------------------------------------
def _old_single_pass(model, noisy, sigma, patch_size, coords, stitch, generator):
    """``tweedie_denoise`` as it was before the ensemble: one stitched score, one Tweedie step."""
    from volscore.sampling.stitch import StitchedScore

    x = torch.as_tensor(noisy, dtype=torch.float32)[None, None]
    score_fn = StitchedScore(
        model, patch_size, stitch=stitch, tile_batch=8, coords=coords, generator=generator
    )
    return (x + float(sigma) ** 2 * score_fn(x, float(sigma)))[0, 0]


def _lopsided_model(x, sigma, coords):
    """Not flip-equivariant: a one-sided neighbour difference along every axis, plus a coordinate term."""
    s = sigma.reshape(-1, 1, 1, 1, 1)
    shifted = x.roll(1, 2) + x.roll(1, 3) + x.roll(1, 4)
    out = (shifted / 3 - x) / s**2
    return out if coords is None else out + 0.3 * coords[:, :1] / s


def test_flip_patterns_order():
    assert flip_patterns() == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert flip_patterns([2]) == [(), (2,)]
    assert flip_patterns([]) == [()]


def test_mirrored_negates_the_flipped_coordinate_channels():
    def echo(x, sigma, coords):
        return coords

    coords = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = mirrored(echo, (0, 2))(torch.zeros(2, 1, 4, 4, 4), torch.ones(2), coords)
    torch.testing.assert_close(out, torch.stack([-coords[:, 0], coords[:, 1], -coords[:, 2]], 1))
    assert torch.equal(mirrored(echo, ())(None, None, coords), coords)
    assert mirrored(echo, (1,))(None, None, None) is None


@pytest.mark.parametrize("stitch", ["blend", "shift"])
def test_ensemble_of_one_is_the_old_single_pass_bit_for_bit(stitch, tiny_run):
    from volscore.run import Run

    run = Run.load(str(tiny_run))
    noisy = 0.5 + 0.1 * torch.randn((20, 18, 24), generator=torch.Generator().manual_seed(4))
    for model, coords in ((run.model, True), (_lopsided_model, True), (_lopsided_model, False)):
        old = _old_single_pass(model, noisy, 0.1, 16, coords, stitch, torch.Generator().manual_seed(5))
        new = tweedie_denoise(
            model, noisy, 0.1, 16, coords, stitch, generator=torch.Generator().manual_seed(5), ensemble=1,
            overlap=0.5,  # the old pass blended at StitchedScore's default overlap
        )  # fmt: skip
        assert torch.equal(new, old)


@pytest.mark.parametrize("stitch", ["blend", "shift"])
def test_ensemble_of_a_pointwise_model_is_the_single_pass(stitch):
    """Any pointwise function of (x, sigma, coords) is exactly flip-equivariant when the flipped axes'
    coordinates are negated (``mirrored``), and does not care about the tiling: every pass is the same."""
    shape, sigma = (20, 23, 17), 0.1
    noisy = 0.5 + 0.15 * torch.randn(shape, generator=torch.Generator().manual_seed(6))
    single = tweedie_denoise(pointwise_prior_score, noisy, sigma, 8, True, stitch)
    for ensemble, axes in ((2, (0, 1, 2)), (8, (0, 1, 2)), (11, (0, 1, 2)), (3, (1,)), (3, ())):
        out = tweedie_denoise(
            pointwise_prior_score, noisy, sigma, 8, True, stitch,
            generator=torch.Generator().manual_seed(7), ensemble=ensemble, flip_axes=axes,
        )  # fmt: skip
        torch.testing.assert_close(out, single, atol=2e-6, rtol=1e-6)
    # ... which it is not for a model that is not equivariant: the test can tell
    lopsided = tweedie_denoise(_lopsided_model, noisy, sigma, 8, True, stitch)
    ensemble = tweedie_denoise(
        _lopsided_model, noisy, sigma, 8, True, stitch, generator=torch.Generator().manual_seed(7), ensemble=2
    )
    assert (ensemble - lopsided).abs().max() > 1e-2


def test_ensemble_averages_the_flipped_passes():
    """With ``stitch="shift"`` and a patch as large as the volume (one tile, no offsets), an ensemble of 2 is
    the mean of the plain pass and the pass on the volume flipped along axis 0 with its coordinates."""
    shape, sigma = (8, 8, 8), 0.1
    noisy = 0.5 + 0.15 * torch.randn(shape, generator=torch.Generator().manual_seed(8))
    plain = tweedie_denoise(_lopsided_model, noisy, sigma, shape, True, "shift")
    flipped = tweedie_denoise(
        mirrored(_lopsided_model, (0,)), noisy.flip(0), sigma, shape, True, "shift"
    ).flip(0)
    out = tweedie_denoise(
        _lopsided_model,
        noisy,
        sigma,
        shape,
        True,
        "shift",
        generator=torch.Generator().manual_seed(0),
        ensemble=2,
    )
    torch.testing.assert_close(out, (plain + flipped) / 2)


def test_ensemble_and_amp_options(tiny_run):
    from volscore.run import Run

    noisy = 0.5 + 0.1 * torch.randn((16, 16, 16), generator=torch.Generator().manual_seed(9))
    with pytest.raises(ValueError, match="ensemble"):
        tweedie_denoise(pointwise_prior_score, noisy, 0.1, 8, True, ensemble=0)
    run = Run.load(str(tiny_run))
    full = tweedie_denoise(run.model, noisy, 0.1, 16, True)
    half = tweedie_denoise(run.model, noisy, 0.1, 16, True, amp=torch.bfloat16)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    # only the network's output is rounded (bf16: 2^-8 relative), times c_out ~ sigma
    assert (half - full).abs().max() < 0.01 and not torch.equal(half, full)
