"""Tests for volscore/denoise/rician.py: the Rician correction inverts the Rician mean and reduces the bias
of a denoised constant (A 0.3, sigma 0.1), alone and through ``denoise_file`` with a closed-form "model"
(a 7^3 local mean). Seeded; 32^3 voxels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch.nn.functional as F
from phantoms import closed_form_run, write_nifti
from scipy import ndimage

from volscore.denoise import denoise_file, rician_correct, rician_mean
from volscore.options import DenoiseOptions


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
    src = write_nifti(tmp_path / "mag.nii.gz", magnitude.astype(np.float32))
    run = closed_form_run(_local_mean_model)
    means = {}
    for noise in ("gaussian", "rician"):
        options = DenoiseOptions(run=run.name, sigma=sigma, noise=noise, background="none")
        rec = denoise_file(src, tmp_path / f"{noise}.nii.gz", options, run=run)
        means[noise] = float(
            np.asarray(nib.load(tmp_path / f"{noise}.nii.gz").dataobj)[4:-4, 4:-4, 4:-4].mean()
        )
        assert rec["noise"] == noise and rec["sigma"]["input_units"] == sigma
    assert abs(means["rician"] - a) < abs(means["gaussian"] - a)
    assert abs(means["rician"] - a) < 0.01
