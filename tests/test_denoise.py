"""Tests for volscore/denoise/: the maths on closed forms, the file handling on small NIfTI files.

- Noise estimators within 10 % at two sigmas: the Haar-MAD on a smooth phantom (and masked, over a
  zero-filled background), the Rayleigh-median on a magnitude phantom in air.
- Tweedie equals the Wiener / MMSE answer for a Gaussian prior from ``volscore.densities``: a full covariance
  over a whole small volume (one tile), and a coordinate-dependent pointwise prior through the stitcher
  (blend and shift), whose empirical error matches the closed-form MMSE.
- The Rician correction inverts the Rician mean and reduces the bias of a denoised constant
  (A 0.3, sigma 0.1), alone and through ``denoise_file``.
- Annealed denoising is reproducible per seed; 3 averaged predictor chains land between 1 and 1.7 MMSE.
- ``denoise_file`` / ``denoise_folder`` with a tiny untrained run saved in tmp_path (or a closed-form
  "model"): float32 output with the input's affine and header (int16 + scl_slope input, float64 input),
  the background rule and its record, refusals (input as output, directly or via a symlink; an existing
  output without force), folder mode (names kept, record, skips), bad inputs (VolumeError naming the file,
  nothing written), and 2-step self-supervised fits for both objectives. All seeded; volumes of
  24^3-40^3 voxels; patches of 16 (8 in the stitcher test). The whole file takes about 5 s on an idle
  2-core CPU, most of it the first imports of monai (blend stitching) and of the optimizer.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from volscore.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from volscore.config import TrainConfig
from volscore.data.nifti import IntensityScaler, VolumeError
from volscore.denoise import (
    RECORD_NAME,
    annealed_denoise,
    clamp_background,
    estimate_sigma,
    estimate_sigma_rician,
    fit_self_supervised,
    foreground_mask,
    rician_correct,
    rician_mean,
    self_supervised_levels,
    tweedie_denoise,
)
from volscore.denoise import denoise_file as _denoise_file
from volscore.denoise import denoise_folder as _denoise_folder
from volscore.densities import Gaussian
from volscore.nets import build_model, model_args
from volscore.options import DenoiseOptions
from volscore.run import Run

def _options(run, fields) -> tuple[DenoiseOptions, Run | None]:
    """DenoiseOptions from keyword fields; a loaded (e.g. closed-form) ``Run`` is passed through as is."""
    if isinstance(run, Run):
        return DenoiseOptions(run=run.name, **fields), run
    return DenoiseOptions(run=None if run is None else str(run), **fields), None


def denoise_file(src, dst, run=None, force=False, fit_dir=None, **fields):
    options, loaded = _options(run, fields)
    return _denoise_file(src, dst, options, run=loaded, force=force, fit_dir=fit_dir)


def denoise_folder(src_dir, dst_dir, run=None, force=False, **fields):
    options, _ = _options(run, fields)
    return _denoise_folder(src_dir, dst_dir, options, force=force)


AFFINE = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
PATCH = 16


def _grid(n: int | tuple[int, ...]) -> list[np.ndarray]:
    shape = (n,) * 3 if isinstance(n, int) else n
    return np.meshgrid(*[np.linspace(-1, 1, k) for k in shape], indexing="ij")


def smooth_phantom(n: int = 40) -> np.ndarray:
    """A gradient plus two Gaussian blobs: smooth everywhere, values about 0.1-1."""
    z, y, x = _grid(n)
    blob1 = 0.4 * np.exp(-((x - 0.2) ** 2 + y**2 + (z + 0.1) ** 2) / 0.3)
    blob2 = 0.3 * np.exp(-((x + 0.4) ** 2 + (y - 0.3) ** 2 + z**2) / 0.1)
    return 0.3 + 0.2 * x + blob1 + blob2


def head_phantom(n: int | tuple[int, ...] = 24) -> np.ndarray:
    """An ellipsoidal "head" (smooth interior 0.5-0.8) in air (exactly 0)."""
    z, y, x = _grid(n)
    inside = (x / 0.75) ** 2 + (y / 0.8) ** 2 + (z / 0.7) ** 2 < 1
    return inside * (0.5 + 0.3 * np.exp(-((x - 0.2) ** 2 + y**2) / 0.2))


def _write(path, data, header=None, affine=AFFINE):
    nib.Nifti1Image(data, affine, header).to_filename(path)
    return path


def _noisy_head(path, sigma=0.05, n=24, seed=0):
    rng = np.random.default_rng(seed)
    return _write(path, head_phantom(n) + sigma * rng.standard_normal((n, n, n)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny untrained 3D run (coordinate channels) with the keys ``Run.load`` and ``denoise_file`` read."""
    torch.manual_seed(0)
    model = build_model("tiny", 3, coord_channels=True)
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=["synthetic"],
        out=str(out),
        preset="tiny",
        steps=1,
        patch_size=PATCH,
        sigma_min=0.01,
        sigma_max=1.0,
        num_sigmas=10,
    )
    save_checkpoint(
        out / CHECKPOINT_NAME,
        {
            "model": model.state_dict(),
            "model_args": model_args("tiny", 3, coord_channels=True),
            "config": cfg.to_dict(),
            "data": {"kind": "nifti", "scalers": [IntensityScaler(0.0, 1.0).to_dict()]},
            "step": 0,
        },
    )
    return out


def closed_form_run(patch_fn, patch_size=PATCH, coords=False):
    """A ``Run`` whose model is a closed-form patch score function."""
    net = {"spatial_dims": 3, "in_channels": 1, "coord_channels": coords}
    cfg = TrainConfig(data=["closed form"], out="", patch_size=patch_size, sigma_min=0.01, sigma_max=1.0)
    return Run("closed form", patch_fn, cfg, {"net": net}, {"kind": "nifti"}, 0)


# -- noise level -----------------------------------------------------------------------------------
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


# -- Tweedie = Wiener -------------------------------------------------------------------------------
def test_tweedie_full_covariance_gaussian_is_wiener():
    shape, sigma = (4, 5, 6), 0.2
    d = int(np.prod(shape))
    z, y, x = (torch.from_numpy(g).reshape(-1).double() * 3 for g in _grid(shape))
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
    coords = torch.stack([torch.from_numpy(g).float() for g in _grid(shape)])[None]
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


# -- annealed --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["pc", "annealed"])
def test_annealed_denoise_is_seeded(sampler):
    shape, sigma, scale = (20, 18, 16), 0.1, 0.1  # prior sd 0.045-0.055: the noise dominates

    def score(x, s, c):
        return pointwise_prior_score(x, s, c, scale)

    coords = torch.stack([torch.from_numpy(g).float() for g in _grid(shape)])[None]
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


# -- Rician ----------------------------------------------------------------------------------------
def test_rician_correct_inverts_the_rician_mean():
    sigma = 0.1
    a = np.array([0.0, 0.05, 0.1, 0.3, 1.0, 5.9, 8.0])
    np.testing.assert_allclose(rician_correct(rician_mean(a, sigma), sigma), a, atol=2e-4)
    assert rician_correct(np.array([0.5 * sigma]), sigma)[0] == 0  # below the air level sqrt(pi/2) sigma


def test_rician_correction_reduces_bias_of_a_denoised_constant():
    rng = np.random.default_rng(4)
    a, sigma, n = 0.3, 0.1, 32
    magnitude = np.abs(a + sigma * (rng.standard_normal((n,) * 3) + 1j * rng.standard_normal((n,) * 3)))
    denoised = ndimage.uniform_filter(magnitude, 9)  # stand-in for a Gaussian denoiser: keeps E[M]
    naive = float(denoised.mean())
    corrected = float(rician_correct(denoised, sigma).mean())
    second_moment = float(np.sqrt(np.maximum(denoised**2 - 2 * sigma**2, 0)).mean())
    assert naive - a > 0.01  # the Rician bias: E[M] = 0.317 for A = 0.3
    assert abs(corrected - a) < abs(naive - a) and abs(corrected - a) < 0.005
    assert abs(corrected - a) < abs(second_moment - a)  # sqrt(D^2 - 2 sigma^2) over-corrects


def _local_mean_model(x, sigma, coords):
    """A "model" whose Tweedie step is a 7^3 local mean: score = (mean - x) / sigma^2."""
    blurred = F.avg_pool3d(F.pad(x, (3,) * 6, mode="replicate"), 7, stride=1)
    return (blurred - x) / sigma.reshape(-1, 1, 1, 1, 1) ** 2


def test_denoise_file_rician_is_less_biased_than_gaussian(tmp_path):
    rng = np.random.default_rng(5)
    a, sigma, n = 0.3, 0.1, 32
    magnitude = np.abs(a + sigma * (rng.standard_normal((n,) * 3) + 1j * rng.standard_normal((n,) * 3)))
    src = _write(tmp_path / "mag.nii.gz", magnitude.astype(np.float32))
    means = {}
    for noise in ("gaussian", "rician"):
        rec = denoise_file(
            src,
            tmp_path / f"{noise}.nii.gz",
            run=closed_form_run(_local_mean_model),
            sigma=sigma,
            noise=noise,
            background="none",
        )
        means[noise] = float(
            np.asarray(nib.load(tmp_path / f"{noise}.nii.gz").dataobj)[4:-4, 4:-4, 4:-4].mean()
        )
        assert rec["noise"] == noise and rec["sigma"]["input_units"] == sigma
    assert abs(means["rician"] - a) < abs(means["gaussian"] - a)
    assert abs(means["rician"] - a) < 0.01


# -- background rule -------------------------------------------------------------------------------
def _hallucinating_model(x, sigma, coords):
    """Denoises perfectly towards 0.5 everywhere: tissue painted into the air."""
    return (0.5 - x) / sigma.reshape(-1, 1, 1, 1, 1) ** 2


def test_background_clamp_removes_hallucinated_signal(tmp_path):
    rng = np.random.default_rng(6)
    clean = head_phantom(32)
    src = _write(tmp_path / "in.nii.gz", (clean + 0.05 * rng.standard_normal(clean.shape)).astype(np.float32))
    air = ~foreground_mask(np.asarray(nib.load(src).dataobj))  # the mask denoise_file uses
    outside = {}
    for rule in ("clamp", "none"):
        rec = denoise_file(
            src,
            tmp_path / f"{rule}.nii.gz",
            run=closed_form_run(_hallucinating_model),
            sigma=0.05,
            background=rule,
        )
        outside[rule] = rec["background"]["outside_mean_abs_output"]
        out = np.asarray(nib.load(tmp_path / f"{rule}.nii.gz").dataobj)
        assert rec["background"]["rule"] == rule and 0.1 < rec["background"]["mask_fraction"] < 0.9
        if rule == "clamp":  # within 3 standard errors of the local mean of the data: about the clean air
            assert np.abs(out[air] - clean[air]).max() < 0.05 and rec["background"]["clamped_fraction"] > 0.9
    # clamped: at most k se = 3 sigma / 18.9 above the air's local mean; the noisy air itself has 0.8 sigma
    assert outside["clamp"] < 0.3 * 0.05 < 0.3 < outside["none"]


def test_clamp_background_leaves_mask_and_consistent_voxels_alone():
    rng = np.random.default_rng(7)
    noisy = 0.1 * rng.standard_normal((24, 24, 24)).astype(np.float32)
    mask = np.zeros(noisy.shape, dtype=bool)
    mask[8:16, 8:16, 8:16] = True
    denoised = ndimage.gaussian_filter(noisy, 2.0)  # exactly the local mean: nothing to clamp
    out, frac = clamp_background(denoised + mask * 1.0, noisy, 0.1, mask)
    np.testing.assert_array_equal(out, (denoised + mask * 1.0).astype(np.float32))
    assert frac == 0


# -- files with a tiny run -------------------------------------------------------------------------
def _header_int16():
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header["descrip"] = b"volscore test scan"
    header.set_xyzt_units("mm", "sec")
    return header


@pytest.mark.reliability
def test_int16_with_scl_slope_round_trip(tmp_path, run_dir):
    rng = np.random.default_rng(8)
    raw = np.round((head_phantom(24) + 0.05 * rng.standard_normal((24,) * 3)) * 2000).astype(np.int16)
    img = nib.Nifti1Image(raw, AFFINE, _header_int16())
    img.header.set_slope_inter(0.5, 10.0)  # input units: raw * 0.5 + 10
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=2)
    src = tmp_path / "scan.nii.gz"
    img.to_filename(src)
    units = raw * 0.5 + 10.0

    rec = denoise_file(src, tmp_path / "out.nii.gz", run=run_dir)
    back = nib.load(tmp_path / "out.nii.gz")
    out = np.asarray(back.dataobj)
    assert back.get_data_dtype() == np.float32 and out.dtype == np.float32 and out.shape == raw.shape
    assert back.dataobj.slope == 1 and back.dataobj.inter == 0  # float output never rescaled
    np.testing.assert_array_equal(back.affine, AFFINE)
    assert back.header["descrip"].item() == b"volscore test scan" and int(back.header["sform_code"]) == 2
    assert back.header.get_zooms() == img.header.get_zooms()
    # The untrained tiny model shrinks by c_skip ~ 0.99 in model units: the output stays in input units.
    assert np.abs(out - units).mean() < 0.05 * np.ptp(units)
    assert rec["scaler"]["source"] == "scan"  # 10-1600 is not the run's 0-1 range
    sigma_true = 0.05 * 2000 * 0.5
    assert abs(rec["sigma"]["input_units"] / sigma_true - 1) < 0.15
    assert rec["sigma"]["model_units"] == pytest.approx(
        rec["sigma"]["input_units"] / (rec["scaler"]["hi"] - rec["scaler"]["lo"])
    )
    assert rec["method"] == "tweedie" and json.loads(json.dumps(rec)) == rec


@pytest.mark.reliability
def test_float64_input_and_annealed_record(tmp_path, run_dir):
    src = _noisy_head(tmp_path / "scan.nii", sigma=0.05)
    assert nib.load(src).get_data_dtype() == np.float64
    rec = denoise_file(src, tmp_path / "out.nii", run=run_dir, steps=2, seed=3)
    back = nib.load(tmp_path / "out.nii")
    assert back.get_data_dtype() == np.float32 and back.shape == (24, 24, 24)
    np.testing.assert_array_equal(back.affine, AFFINE)
    assert rec["method"] == "pc" and rec["steps"] == 2 and rec["scaler"]["source"] == "run"
    again = denoise_file(src, tmp_path / "again.nii", run=run_dir, steps=2, seed=3)
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "again.nii").dataobj), np.asarray(back.dataobj)
    )
    assert again["sigma"] == rec["sigma"]


@pytest.mark.reliability
def test_refuses_to_overwrite_input_directly_or_via_symlink(tmp_path, run_dir):
    src = _noisy_head(tmp_path / "scan.nii.gz")
    before = src.read_bytes()
    with pytest.raises(VolumeError, match="overwrite the input"):
        denoise_file(src, src, run=run_dir, force=True)
    link = tmp_path / "link.nii.gz"
    os.symlink(src, link)
    with pytest.raises(VolumeError, match="overwrite the input"):
        denoise_file(src, link, run=run_dir, force=True)
    assert src.read_bytes() == before


@pytest.mark.reliability
def test_existing_output_needs_force(tmp_path, run_dir):
    src = _noisy_head(tmp_path / "scan.nii.gz")
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="force"):
        denoise_file(src, out, run=run_dir)
    assert out.read_bytes() == b"precious"
    denoise_file(src, out, run=run_dir, force=True)
    assert nib.load(out).shape == (24, 24, 24)


def test_folder_mode_keeps_names_records_and_skips(tmp_path, run_dir):
    src_dir, dst_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    _noisy_head(src_dir / "a.nii", seed=1)
    _noisy_head(src_dir / "b.nii.gz", seed=2)
    _write(src_dir / "c_bad.nii.gz", np.full((24, 24, 24), np.nan))
    rec = denoise_folder(src_dir, dst_dir, run=run_dir)
    assert sorted(p.name for p in dst_dir.iterdir()) == ["a.nii", "b.nii.gz", RECORD_NAME]
    assert (rec["n_done"], rec["n_skipped"], rec["n_failed"]) == (2, 0, 1)
    failed = [f for f in rec["files"] if f["status"] == "failed"][0]
    assert "c_bad.nii.gz" in failed["error"] and "NaN" in failed["error"]
    assert json.loads((dst_dir / RECORD_NAME).read_text()) == json.loads(json.dumps(rec))
    assert all(f["run"] == str(run_dir) for f in rec["files"] if f["status"] == "done")

    (dst_dir / "a.nii").unlink()
    rec = denoise_folder(src_dir, dst_dir, run=run_dir)
    status = {os.path.basename(f["input"]): f["status"] for f in rec["files"]}
    assert status == {"a.nii": "done", "b.nii.gz": "skipped", "c_bad.nii.gz": "failed"}
    rec = denoise_folder(src_dir, dst_dir, run=run_dir, force=True)
    assert rec["n_done"] == 2
    with pytest.raises(VolumeError, match="input folder"):
        denoise_folder(src_dir, src_dir, run=run_dir)


def _bad_inputs(tmp_path):
    yield tmp_path / "missing.nii.gz", "no such file"
    yield _write(tmp_path / "flat.nii.gz", np.zeros((24, 24), dtype=np.float32)), "2D"
    yield _write(tmp_path / "series.nii.gz", np.zeros((24, 24, 24, 2), dtype=np.float32)), "4D"
    data = head_phantom(24).astype(np.float32)
    data[3, 4, 5] = np.nan
    yield _write(tmp_path / "nan.nii.gz", data), "NaN"


@pytest.mark.reliability
def test_bad_inputs_raise_volume_error_and_write_nothing(tmp_path, run_dir):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for src, problem in _bad_inputs(tmp_path):
        with pytest.raises(VolumeError, match=problem) as info:
            denoise_file(src, out_dir / "out.nii.gz", run=run_dir)
        assert str(src) in str(info.value)
        assert list(out_dir.iterdir()) == []


@pytest.mark.reliability
def test_bad_options_are_refused_before_reading(tmp_path, run_dir):
    src = tmp_path / "never_read.nii.gz"  # does not exist: the options fail first
    out = tmp_path / "out.nii.gz"
    with pytest.raises(ValueError, match="either a trained run"):
        denoise_file(src, out)
    for kwargs, match in (
        ({"noise": "poisson"}, "noise"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": "guess"}, "sigma"),
        ({"background": "zero"}, "background"),
        ({"steps": 2, "sampler": "euler"}, "sampler"),
    ):
        with pytest.raises(ValueError, match=match):
            denoise_file(src, out, run=run_dir, **kwargs)
    with pytest.raises(VolumeError, match="extension"):
        denoise_file(src, tmp_path / "out.img", run=run_dir)


# -- self-supervised -------------------------------------------------------------------------------
FIT = dict(preset="tiny", patch_size=PATCH, steps=2, batch_size=2, amp="off")


@pytest.mark.parametrize("objective", ["ssm-vr", "dsm"])
def test_fit_self_supervised_trains_at_small_extra_noise(tmp_path, objective):
    rng = np.random.default_rng(9)
    noisy = (head_phantom(24) + 0.05 * rng.standard_normal((24,) * 3)).astype(np.float32)
    model = fit_self_supervised(noisy, 0.05, None, objective, out_dir=tmp_path / "ss", seed=0, **FIT).model
    state = load_checkpoint(tmp_path / "ss" / CHECKPOINT_NAME)
    t_min, t_max = self_supervised_levels(0.05, objective)
    assert state["step"] == 2 and state["data"]["kind"] == "self-supervised"
    assert state["config"]["sigma_min"] == t_min < t_max == state["config"]["sigma_max"] <= 0.1
    assert state["data"]["score_sigma"] == t_min <= 0.2 * 0.05 + 1e-12  # level error sqrt(1 + 0.2^2) = 1.02
    out = tweedie_denoise(model, torch.from_numpy(noisy), 0.05, PATCH, True, score_sigma=t_min)
    assert out.shape == noisy.shape and torch.isfinite(out).all()


def test_denoise_file_self_supervised(tmp_path):
    src = _noisy_head(tmp_path / "scan.nii.gz", sigma=0.05)
    rec = denoise_file(src, tmp_path / "out.nii.gz", self_supervised=True, fit_overrides=FIT)
    assert rec["self_supervised"] and rec["run"] is None and rec["scaler"]["source"] == "scan"
    # the default objective is DSM (measured better in bench_denoise), read at t_min = 0.2 sigma
    assert rec["objective"] == "dsm"
    assert rec["sigma"]["network_conditioning"] == pytest.approx(0.2 * rec["sigma"]["model_units"])
    assert nib.load(tmp_path / "out.nii.gz").get_data_dtype() == np.float32
    with pytest.raises(ValueError, match="steps=0"):
        denoise_file(src, tmp_path / "out2.nii.gz", self_supervised=True, steps=3)


# -- the command line ---------------------------------------------------------------------------------
def test_cli_denoise_file_writes_volume_record_and_picture(tmp_path, run_dir, capsys):
    from volscore.cli import main

    src = _noisy_head(tmp_path / "noisy.nii.gz", sigma=0.05, seed=3)
    dst, png = tmp_path / "clean.nii.gz", tmp_path / "before_after.png"
    assert (
        main(["denoise", str(src), str(dst), "--run", str(run_dir), "--sigma", "0.05", "--png", str(png)])
        == 0
    )
    out = capsys.readouterr().out
    assert "sigma 0.05" in out and "given" in out
    record = json.loads((tmp_path / "clean.denoise.json").read_text())
    assert record["sigma"]["input_units"] == 0.05 and record["output"] == str(dst)
    assert nib.load(dst).shape == nib.load(src).shape and png.stat().st_size > 0
    # auto sigma is printed; the same output again needs --force; input as output is refused
    assert main(["denoise", str(src), str(dst), "--run", str(run_dir)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["denoise", str(src), str(dst), "--run", str(run_dir), "--force"]) == 0
    assert "haar-hhh-mad" in capsys.readouterr().out
    assert main(["denoise", str(src), str(src), "--run", str(run_dir), "--force"]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err


def test_cli_denoise_folder_and_argument_errors(tmp_path, run_dir, capsys):
    from volscore.cli import main

    src_dir, dst_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    _noisy_head(src_dir / "a.nii.gz", seed=1)
    assert main(["denoise", "-i", str(src_dir), "-o", str(dst_dir), "--run", str(run_dir)]) == 0
    assert (dst_dir / "a.nii.gz").exists() and (dst_dir / RECORD_NAME).exists()
    assert "done" in capsys.readouterr().out
    for argv, message in [
        (["denoise", str(src_dir / "a.nii.gz"), str(tmp_path / "x.nii.gz")], "--run RUN"),
        (["denoise", "a.nii.gz", "b.nii.gz", "--run", str(run_dir), "--self-supervised"], "not both"),
        (["denoise", "a.nii.gz", "--run", str(run_dir)], "both INPUT and OUTPUT"),
        (["denoise", "a.nii.gz", "b.nii.gz", "-i", str(src_dir), "--run", str(run_dir)], "not both"),
        (["denoise", "a.nii.gz", "b.nii.gz", "--run", str(run_dir), "--sigma", "high"], "--sigma"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_cli_noisy_then_denoise_self_supervised(tmp_path, capsys):
    from volscore.cli import main

    clean = _write(tmp_path / "clean.nii.gz", head_phantom(24).astype(np.float32))
    noisy, out = tmp_path / "noisy.nii.gz", tmp_path / "den.nii.gz"
    assert main(["noisy", str(clean), str(noisy), "--fraction", "0.05", "--seed", "1"]) == 0
    assert "sigma" in capsys.readouterr().out
    argv = ["denoise", str(noisy), str(out), "--self-supervised", "--minutes", "0.05", "--objective", "dsm"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "den.denoise.json").read_text())
    assert record["self_supervised"] and record["objective"] == "dsm"
