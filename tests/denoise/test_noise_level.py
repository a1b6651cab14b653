"""Tests for volscore/denoise/noise_level.py: the noise estimators within 10 % at two sigmas.

The Haar-MAD on a smooth phantom (and masked, over a zero-filled background), the Rayleigh-median on a
magnitude phantom in air; a noise-free background is refused. Seeded; 40^3 voxels.
"""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import head_phantom, smooth_phantom
from scipy import ndimage

from volscore.denoise import estimate_sigma, estimate_sigma_rician


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_estimate_sigma_on_smooth_phantom(sigma):
    rng = np.random.default_rng(1)
    phantom = smooth_phantom(40)
    est = estimate_sigma(phantom + sigma * rng.standard_normal(phantom.shape))
    assert abs(est / sigma - 1) < 0.1, est


def test_estimate_sigma_masked_ignores_zero_filled_background():
    rng = np.random.default_rng(2)
    phantom = head_phantom(40)
    inside = phantom > 0
    data = np.where(inside, phantom + 0.05 * rng.standard_normal(phantom.shape), 0.0)  # skull-stripped look
    assert estimate_sigma(data) < 0.5 * 0.05  # the noise-free air pulls the median down ...
    eroded = ndimage.binary_erosion(inside, iterations=2)
    assert abs(estimate_sigma(data, mask=eroded) / 0.05 - 1) < 0.1  # ... the mask removes it


@pytest.mark.parametrize("sigma", [0.05, 0.15])
def test_estimate_sigma_rician_from_air(sigma):
    rng = np.random.default_rng(3)
    a = head_phantom(40)
    magnitude = np.abs(a + sigma * (rng.standard_normal(a.shape) + 1j * rng.standard_normal(a.shape)))
    assert abs(estimate_sigma_rician(magnitude) / sigma - 1) < 0.1


def test_estimate_sigma_rician_refuses_noise_free_background():
    with pytest.raises(ValueError, match="noise-free"):
        estimate_sigma_rician(head_phantom(40))
