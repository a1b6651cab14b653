"""Tests for volscore/corrupt.py: noisy copies with known noise (moments within 4 standard errors)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from volscore.corrupt import add_noise, make_noisy_file, reference_level
from volscore.data.nifti import VolumeError

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


# -- refusals: options by name, noise beyond float32, 4D files (#16) -----------------------------------------
def _scan(path, data=None):
    data = np.random.default_rng(1).random((10, 11, 12)).astype(np.float32) * 1000 if data is None else data
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    return path


@pytest.mark.reliability
@pytest.mark.parametrize(
    "changes, option",
    [
        ({"fraction": 0.0}, "--fraction"),
        ({"fraction": -0.05}, "--fraction"),
        ({"fraction": math.nan}, "--fraction"),
        ({"fraction": math.inf}, "--fraction"),
        ({"seed": -1}, "--seed"),
        ({"seed": 2**63}, "--seed"),
        ({"noise": "poisson"}, "noise"),
    ],
)
def test_noisy_options_are_refused_by_name_before_the_scan_is_read(tmp_path, changes, option):
    kwargs = {"fraction": 0.05, **changes}
    with pytest.raises(ValueError) as info:  # the input does not exist: the options fail first
        make_noisy_file(tmp_path / "missing.nii.gz", tmp_path / "noisy.nii.gz", **kwargs)
    assert option in str(info.value), str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.reliability
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    "fraction, error, message",
    [
        (
            1e36,
            FloatingPointError,
            "beyond float32's range: the noisy copy would hold",
        ),  # sigma ~1e39 in float32
        (1e306, VolumeError, "gives no noise level (sigma inf)"),  # sigma overflows even float64
    ],
)
def test_a_fraction_beyond_float32_is_refused_and_nothing_is_written(tmp_path, fraction, error, message):
    src = _scan(tmp_path / "clean.nii.gz")
    with pytest.raises(error) as info:
        make_noisy_file(src, tmp_path / "noisy.nii.gz", fraction)
    assert str(src) in str(info.value) and message in str(info.value), str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.nii.gz"]


@pytest.mark.reliability
def test_a_scan_without_bright_voxels_gets_no_noise_level(tmp_path):
    data = np.zeros((10, 10, 10), np.float32)
    data[0, 0, 0] = 5.0  # the 99.5th percentile is still 0
    src = _scan(tmp_path / "dark.nii.gz", data)
    with pytest.raises(VolumeError, match=r"dark.nii.gz: its 99.5th percentile is 0"):
        make_noisy_file(src, tmp_path / "noisy.nii.gz", 0.05)
    assert not (tmp_path / "noisy.nii.gz").exists()


@pytest.mark.reliability
def test_make_noisy_file_of_a_4d_scan_needs_a_volume_index(tmp_path):
    series = np.stack([np.full((6, 7, 8), 10.0), np.full((6, 7, 8), 100.0)], axis=-1).astype(np.float32)
    src = _scan(tmp_path / "series.nii.gz", series)
    dst = tmp_path / "noisy.nii.gz"
    with pytest.raises(VolumeError, match="series.nii.gz: 4D image with 2 volumes"):
        make_noisy_file(src, dst, 0.1)
    with pytest.raises(VolumeError, match="volume_index 2 out of range"):
        make_noisy_file(src, dst, 0.1, volume_index=2)
    assert not dst.exists()
    r = make_noisy_file(src, dst, 0.1, volume_index=-1)  # the last: sigma from its level, 100
    assert r["sigma"] == pytest.approx(10.0) and nib.load(dst).shape == (6, 7, 8)
    assert abs(np.asarray(nib.load(dst).dataobj).mean() - 100.0) < 3.0
