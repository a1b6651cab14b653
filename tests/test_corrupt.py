"""Tests for volscore/corrupt.py: noisy copies with known noise (moments within 4 standard errors)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from volscore.corrupt import add_noise, make_noisy_file, reference_level

N = 200_000


def test_gaussian_noise_has_the_asked_sd_and_leaves_the_input_alone():
    clean = np.linspace(0, 10, N, dtype=np.float32)
    before = clean.copy()
    noisy = add_noise(clean, 0.5, "gaussian", seed=1)
    assert noisy.dtype == np.float32 and np.array_equal(clean, before)
    resid = (noisy - clean).astype(np.float64)
    assert abs(resid.mean()) < 4 * 0.5 / math.sqrt(N)
    # sd of the sample variance of N(0, s^2): s^2 sqrt(2 / N)
    assert abs(resid.var() - 0.25) < 4 * 0.25 * math.sqrt(2 / N)
    assert np.array_equal(noisy, add_noise(clean, 0.5, "gaussian", seed=1))
    assert not np.array_equal(noisy, add_noise(clean, 0.5, "gaussian", seed=2))


def test_rician_noise_matches_the_rician_moments():
    sigma, a = 0.3, 1.0
    m = add_noise(np.full(N, a, np.float32), sigma, "rician", seed=3).astype(np.float64)
    assert m.min() >= 0
    # E[M^2] = A^2 + 2 sigma^2 exactly; Var[M^2] = 4 A^2 sigma^2 + 4 sigma^4
    se = math.sqrt((4 * a**2 * sigma**2 + 4 * sigma**4) / N)
    assert abs((m**2).mean() - (a**2 + 2 * sigma**2)) < 4 * se
    # in air (A = 0) the magnitude is Rayleigh: mean sigma sqrt(pi / 2), sd sigma sqrt(2 - pi / 2)
    air = add_noise(np.zeros(N, np.float32), sigma, "rician", seed=4).astype(np.float64)
    se = sigma * math.sqrt((2 - math.pi / 2) / N)
    assert abs(air.mean() - sigma * math.sqrt(math.pi / 2)) < 4 * se


def test_bad_noise_options():
    with pytest.raises(ValueError, match="noise must be"):
        add_noise(np.zeros(3), 0.1, "poisson")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        add_noise(np.zeros(3), 0.0)


@pytest.mark.reliability
def test_make_noisy_file_keeps_the_space_and_refuses_to_overwrite(tmp_path):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    clean = np.random.default_rng(0).random((12, 13, 14)).astype(np.float32)
    src = tmp_path / "clean.nii.gz"
    nib.Nifti1Image(clean, affine).to_filename(src)
    dst = tmp_path / "noisy.nii.gz"
    r = make_noisy_file(src, dst, 0.1, "gaussian", seed=0)
    img = nib.load(dst)
    assert np.allclose(img.affine, affine) and img.get_data_dtype() == np.float32
    assert r["sigma"] == pytest.approx(0.1 * reference_level(clean))
    resid = np.asarray(img.dataobj) - clean
    assert resid.std() == pytest.approx(r["sigma"], rel=0.1)
    with pytest.raises(FileExistsError, match="noisy.nii.gz"):
        make_noisy_file(src, dst, 0.1)
    make_noisy_file(src, dst, 0.2, force=True)
    with pytest.raises(Exception, match="refusing to overwrite"):
        make_noisy_file(src, src, 0.1, force=True)
    assert np.array_equal(np.asarray(nib.load(src).dataobj), clean)
