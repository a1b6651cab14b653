"""Tests for volscore/metrics/volumes.py: PSNR from the MSE in closed form, SSIM of identical and noisy
volumes."""

from __future__ import annotations

import math

import pytest
import torch

from volscore.metrics import psnr, ssim


def test_psnr_matches_the_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(13, 17, 11, generator=g)
    x = ref + 0.05 * torch.randn(ref.shape, generator=g)
    mse = float(((x.double() - ref.double()) ** 2).mean())
    assert psnr(x, ref, data_range=1.0) == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-9)
    assert psnr(x.numpy() * 4, ref.numpy() * 4, data_range=4.0) == pytest.approx(
        10 * math.log10(1.0 / mse), rel=1e-6
    )


def test_ssim_is_one_for_identical_and_lower_for_noisy() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(12, 15, 13, generator=g)
    assert ssim(ref, ref, data_range=1.0) == pytest.approx(1.0, abs=1e-5)
    noisy = ref + 0.1 * torch.randn(ref.shape, generator=g)
    noisier = ref + 0.3 * torch.randn(ref.shape, generator=g)
    s1, s2 = ssim(noisy, ref, data_range=1.0), ssim(noisier, ref, data_range=1.0)
    assert s2 < s1 < 1.0
    batch = torch.stack([noisy, noisier])[:, None]  # (B, C, D, H, W): mean over the batch
    assert ssim(batch, torch.stack([ref, ref])[:, None], data_range=1.0) == pytest.approx(
        (s1 + s2) / 2, rel=1e-5
    )
    with pytest.raises(ValueError):
        ssim(torch.rand(8, 20, 20), torch.rand(8, 20, 20), data_range=1.0)


def _smooth_head(n: int = 40, seed: int = 0):
    """A smooth ellipsoid 'head' with blurred internal structure on a zero background (float32)."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n] / (n - 1) * 2 - 1
    head = ((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.7) ** 2) < 1
    texture = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 3)
    return ndimage.gaussian_filter(head * (0.6 + 2.0 * texture), 1.5).astype(np.float32)  # no sharp edge


def test_volume_sample_quality_clean_copy_and_noisy_copy() -> None:
    import numpy as np

    from volscore.metrics.volumes import volume_sample_quality

    ref = _smooth_head()
    same = volume_sample_quality(ref, ref)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert same["noise_ratio"] == pytest.approx(1.0) and same["histogram_distance"] == 0.0
    rng = np.random.default_rng(1)
    r = float(np.percentile(ref, 99.5) - np.percentile(ref, 0.5))
    noisy = ref + 0.1 * r * rng.standard_normal(ref.shape).astype(np.float32)
    q = volume_sample_quality(noisy, ref)
    # white noise of sd 0.1 r adds in quadrature to what the wavelet MAD sees in the reference (within 5 %)
    expected = float(np.hypot(0.1 * r, q["reference_sigma"]))
    assert q["sample_sigma"] == pytest.approx(expected, rel=0.05) and q["reference_sigma"] < 0.05 * r
    assert q["noise_ratio"] > 5 and q["ssim"] < 0.9 and q["histogram_distance"] > 0.01
    # a different anatomy, just as clean: noise ratio near 1, SSIM lower than the copy's
    other = volume_sample_quality(_smooth_head(seed=2), ref)
    assert 0.3 < other["noise_ratio"] < 3 and other["ssim"] < 0.99
    with pytest.raises(ValueError):
        volume_sample_quality(ref[:-1], ref)
