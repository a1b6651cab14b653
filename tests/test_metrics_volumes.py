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
