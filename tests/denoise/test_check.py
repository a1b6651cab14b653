"""Tests for volscore/denoise/check.py: the SURE self-check against closed forms, and its actions in
``denoise_file``.

For x ~ N(0, s^2) per voxel and y = x + sigma n:
- the Wiener filter f = k y, k = s^2 / (s^2 + sigma^2), has MSE s^2 sigma^2 / (s^2 + sigma^2), divergence k
  and SURE-optimal mixing weight 1; its SURE terms (1 - k)^2 y^2 - sigma^2 + 2 sigma^2 k have the standard
  deviation sqrt(2) (1 - k)^2 (s^2 + sigma^2), from which the tolerance (4 standard errors) follows;
- f = 0 has MSE s^2 (worse than the input when s > sigma) and mixing weight sigma^2 / (s^2 + sigma^2), which
  turns it into the Wiener filter;
- the identity has a gain of exactly 0 dB and passes, at any offset and noise level (float32 rounding of the
  probe once tipped it below 0 dB);
- a heavy blur of a phantom with edges fails (worse than the input, anatomy in the residual), and SURE
  estimates its true error.
Shrinking never raises SURE over the unmixed output, and the SURE of the mixed output is the one ``sure``
predicts. In ``denoise_file`` (closed-form models on a 24^3 head): "refuse" writes nothing, "shrink" writes
the mixed output, "warn" keeps it, "off" skips the check, a passing model is left alone. All seeded.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from phantoms import closed_form_run, head_phantom, write_nifti
from scipy import ndimage

from volscore.denoise import denoise_file
from volscore.denoise.check import (
    MAX_RESIDUAL_POWER,
    MAX_STRUCTURE,
    CheckFailed,
    check_denoiser,
    residual_statistics,
    shrink,
    sure,
)
from volscore.options import DenoiseOptions

N = 48  # 110 592 voxels: a standard error of 0.1 % of the MSE for the Wiener filter


def _gaussian_data(s, sigma, seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = s * rng.standard_normal((n,) * 3)
    y = (x + sigma * rng.standard_normal(x.shape)).astype(np.float32)
    return x, y


def _linear(k):
    return lambda v: (k * np.asarray(v, np.float64)).astype(np.float32)


def _everywhere(y):
    return np.ones(y.shape, dtype=bool)


@pytest.mark.parametrize("s, sigma", [(0.2, 0.1), (0.05, 0.1)])
def test_sure_of_the_wiener_filter_matches_its_closed_form(s, sigma):
    x, y = _gaussian_data(s, sigma)
    total = s**2 + sigma**2
    k = s**2 / total
    f = _linear(k)
    result = check_denoiser(f, y, f(y), sigma, _everywhere(y))
    head = result["sure_head"]
    mse = s**2 * sigma**2 / total / sigma**2  # per sigma^2
    se = math.sqrt(2) * (1 - k) ** 2 * total / math.sqrt(y.size) / sigma**2
    assert abs(head["mse"] - mse) < 4 * se
    assert head["mse_se"] == pytest.approx(se, rel=0.05)
    assert head["divergence"] == pytest.approx(k, abs=1e-6)
    assert head["gain_db"] == pytest.approx(10 * math.log10(total / s**2), abs=4 * head["gain_se_db"])
    assert head["shrink_weight"] > 0.98  # 1 up to the noise in mean r^2 (sqrt(2 / N) = 0.4 %)
    assert head["shrink_gain_db"] >= head["gain_db"] - 1e-12
    assert result["sure_volume"]["mse"] == head["mse"]  # the mask is the whole volume
    # the empirical error is near the closed form too (it fluctuates as much as SURE does)
    assert abs(float(((f(y) - x) ** 2).mean()) / sigma**2 - mse) < 0.02
    assert result["passed"] and result["failures"] == []
    residual = result["residual"]
    assert residual["power"] == pytest.approx((1 - k) ** 2 * total / sigma**2, rel=0.02)
    assert max(abs(c) for c in residual["lag_covariance"]) < 0.01  # white: 1 / sqrt(N) ~ 0.003
    # Stein: r = (1 - k) y and the smoothed output g = k G y share the noise through G's centre weight w0,
    # so the structure is power w0^2 / sum(G^2) (about 0.02 power for SMOOTH = 2), never 0
    delta = np.zeros((25, 25, 25))
    delta[12, 12, 12] = 1.0
    kernel = ndimage.gaussian_filter(delta, 2.0)
    expected = residual["power"] * kernel[12, 12, 12] ** 2 / (kernel**2).sum()
    assert residual["structure"] == pytest.approx(expected, rel=0.15)


@pytest.mark.parametrize("offset", [0.0, 0.5, 3.0, 10.0])
@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.3])
def test_the_identity_has_zero_gain_and_passes(offset, sigma):
    rng = np.random.default_rng(1)
    y = (offset + rng.standard_normal((20, 20, 20))).astype(np.float32)
    result = check_denoiser(lambda v: np.asarray(v, np.float32), y, y, sigma, _everywhere(y))
    head = result["sure_head"]
    assert head["gain_db"] == pytest.approx(0.0, abs=1e-9) and head["divergence"] == pytest.approx(1.0)
    assert head["shrink_weight"] == 1.0 and result["residual"]["power"] == 0.0
    assert result["passed"], result["failures"]


def test_the_zero_denoiser_fails_and_shrinks_to_wiener():
    s, sigma = 0.2, 0.1
    x, y = _gaussian_data(s, sigma, seed=2)
    f = _linear(0.0)
    result = check_denoiser(f, y, f(y), sigma, _everywhere(y))
    head = result["sure_head"]
    # SURE terms y^2 - sigma^2: mean s^2, standard deviation sqrt(2) (s^2 + sigma^2)
    total = s**2 + sigma**2
    se = math.sqrt(2) * total / math.sqrt(y.size) / sigma**2
    assert abs(head["mse"] - s**2 / sigma**2) < 4 * se
    assert head["gain_db"] == pytest.approx(-10 * math.log10(s**2 / sigma**2), abs=0.05)
    assert head["shrink_weight"] == pytest.approx(sigma**2 / total, rel=0.02)
    assert head["shrink_gain_db"] == pytest.approx(10 * math.log10(total / s**2), abs=0.05)  # Wiener's
    assert not result["passed"]
    assert any("worse than the input inside the head" in m for m in result["failures"])
    assert any("worse than the input over the volume" in m for m in result["failures"])
    assert result["residual"]["power"] > MAX_RESIDUAL_POWER
    assert any("power" in m for m in result["failures"])


def test_a_heavy_blur_of_a_phantom_fails():
    rng = np.random.default_rng(3)
    clean, sigma = head_phantom(40), 0.05
    y = (clean + sigma * rng.standard_normal(clean.shape)).astype(np.float32)
    head = clean > 0

    def blur(v):
        return ndimage.gaussian_filter(np.asarray(v, np.float32), 4.0)

    result = check_denoiser(blur, y, blur(y), sigma, head)
    estimate = result["sure_head"]
    true_mse = float(((blur(y) - clean)[head] ** 2).mean()) / sigma**2
    assert abs(estimate["mse"] - true_mse) < 5 * estimate["mse_se"]
    assert not result["passed"]
    assert any("worse than the input inside the head" in m for m in result["failures"])
    assert any("holds anatomy" in m for m in result["failures"])
    assert any("not white" in m for m in result["failures"])


def _denoisers():
    yield "wiener", _linear(0.8)
    yield "zero", _linear(0.0)
    yield "overshoot", _linear(-0.5)
    yield "amplify", _linear(1.3)
    yield "identity", _linear(1.0)
    yield "blur", lambda v: ndimage.gaussian_filter(np.asarray(v, np.float32), 1.5)
    yield "clip", lambda v: np.clip(np.asarray(v, np.float32), 0.0, None)


@pytest.mark.parametrize("name, f", list(_denoisers()), ids=[n for n, _ in _denoisers()])
def test_shrinking_never_raises_sure_and_its_prediction_holds(name, f):
    s, sigma = 0.2, 0.1
    _, y = _gaussian_data(s, sigma, seed=4, n=24)
    rng = np.random.default_rng(5)
    probe = rng.integers(0, 2, size=y.shape).astype(np.float32) * 2 - 1
    eps = 0.1 * sigma
    moved = (y + eps * probe).astype(np.float32)
    step = probe.astype(np.float64) * (moved.astype(np.float64) - y)  # the step actually taken
    fy, fmoved = f(y), f(moved)
    plain = sure(y, fy, fmoved, probe, step, sigma)
    a = plain["shrink_weight"]
    assert 0.0 <= a <= 1.0 and plain["shrink_gain_db"] >= plain["gain_db"] - 1e-12
    mask = _everywhere(y)
    mixed = sure(y, shrink(y, fy, a, mask), shrink(moved, fmoved, a, mask), probe, step, sigma)
    assert mixed["gain_db"] == pytest.approx(plain["shrink_gain_db"], abs=1e-3)
    # a is SURE-optimal among the mixes: its neighbours are no better
    for other in (max(a - 0.05, 0.0), min(a + 0.05, 1.0)):
        g = sure(y, shrink(y, fy, other, mask), shrink(moved, fmoved, other, mask), probe, step, sigma)
        assert g["gain_db"] <= mixed["gain_db"] + 1e-6


def test_shrink_mixes_inside_the_mask_only():
    y = np.full((4, 4, 4), 2.0, np.float32)
    f = np.zeros((4, 4, 4), np.float32)
    mask = np.zeros((4, 4, 4), bool)
    mask[:2] = True
    out = shrink(y, f, 0.25, mask)
    assert out.dtype == np.float32
    assert (out[:2] == 1.5).all() and (out[2:] == 0.0).all()  # y - a (y - f) inside, f outside
    np.testing.assert_array_equal(shrink(y, f, 1.0, mask), np.where(mask, f, f))
    np.testing.assert_array_equal(shrink(y, f, 0.0, mask), np.where(mask, y, f))


def test_residual_statistics_see_correlated_and_structured_residuals():
    rng = np.random.default_rng(6)
    sigma = 0.1
    y = (0.5 + sigma * rng.standard_normal((32, 32, 32))).astype(np.float32)
    mask = _everywhere(y)
    # removing smooth noise: a strongly correlated residual
    smooth_noise = ndimage.gaussian_filter(rng.standard_normal(y.shape), 2.0)
    smooth_noise *= sigma / np.sqrt((smooth_noise**2).mean())
    stats = residual_statistics(y, y - smooth_noise, sigma, mask)
    assert stats["power"] == pytest.approx(1.0, rel=1e-3)
    assert min(stats["lag_covariance"]) > 0.8  # neighbours of a 2-voxel blur: correlation ~ 0.94
    # a contrast change: r = 0.2 (y - mean) follows the output
    ramp = np.linspace(0, 1, 32)[None, None, :] * np.ones(y.shape)
    y2 = (ramp + sigma * rng.standard_normal(y.shape)).astype(np.float32)
    stats = residual_statistics(y2, y2 - 0.2 * (ramp - 0.5), sigma, mask)
    # all of r follows the smoothed output g ~ 0.8 ramp: slope 0.2 / 0.8, structure = the power of r
    assert stats["structure_slope"] == pytest.approx(0.25, rel=0.05)
    assert stats["structure"] == pytest.approx(stats["power"], rel=0.05) and stats["power"] > MAX_STRUCTURE


# -- in denoise_file -----------------------------------------------------------------------------------------
def _zeroing_model(x, sigma, coords):
    """Tweedie with this score is 0 everywhere: the worst over-smoothing."""
    return -x / sigma.reshape(-1, 1, 1, 1, 1) ** 2


def _identity_model(x, sigma, coords):
    return 0 * x


@pytest.fixture
def scan(tmp_path):
    rng = np.random.default_rng(7)
    clean = head_phantom(24)
    return write_nifti(tmp_path / "in.nii.gz", (clean + 0.05 * rng.standard_normal(clean.shape)))


def _denoise(src, out, model, check):
    run = closed_form_run(model)
    options = DenoiseOptions(run=run.name, sigma=0.05, check=check, background="none")
    return denoise_file(src, out, options, run=run)


def test_refuse_writes_nothing(scan, tmp_path):
    out = tmp_path / "out" / "denoised.nii.gz"
    out.parent.mkdir()
    with pytest.raises(CheckFailed, match="self-check"):
        _denoise(scan, out, _zeroing_model, "refuse")
    assert list(out.parent.iterdir()) == []
    rec = _denoise(scan, out, _identity_model, "refuse")  # a passing model is written as usual
    assert out.exists() and rec["check"]["passed"] and rec["check"]["action"] == "none"


def test_shrink_warn_and_off_in_denoise_file(scan, tmp_path):
    data = np.asarray(nib.load(scan).dataobj, dtype=np.float32)
    rec = _denoise(scan, tmp_path / "shrink.nii.gz", _zeroing_model, "shrink")
    check = rec["check"]
    assert not check["passed"] and check["action"] == "shrink" and check["mode"] == "shrink"
    a = check["sure_head"]["shrink_weight"]
    assert 0 < a < 1 and any("self-check failed" in w for w in rec["warnings"])
    out = np.asarray(nib.load(tmp_path / "shrink.nii.gz").dataobj)
    assert np.abs(out).max() > 0.1  # the input mixed back in: (1 - a) y inside the head, not zero

    rec = _denoise(scan, tmp_path / "warn.nii.gz", _zeroing_model, "warn")
    assert not rec["check"]["passed"] and rec["check"]["action"] == "none"
    assert any("Output kept" in w for w in rec["warnings"])
    kept = np.asarray(nib.load(tmp_path / "warn.nii.gz").dataobj)
    # the zeroing model's output as it was: 0 in model units, the scaler's low percentile in input units
    assert np.ptp(kept) < 1e-6 * np.ptp(data) and kept.flat[0] == pytest.approx(rec["scaler"]["lo"])

    rec = _denoise(scan, tmp_path / "off.nii.gz", _zeroing_model, "off")
    assert rec["check"] is None and "check" not in rec["timings"]
    assert not any("self-check" in w for w in rec["warnings"])
