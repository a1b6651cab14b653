"""Tests for volscore/denoise/background.py: the background rule outside the head.

A closed-form "model" that paints tissue into the air is clamped back to the air's local mean by
``denoise_file`` with ``background="clamp"`` (and left alone with "none"); ``clamp_background`` leaves the
mask and consistent voxels as they are. Seeded; 24^3-32^3 voxels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from phantoms import closed_form_run, head_phantom, write_nifti
from scipy import ndimage

from volscore.denoise import clamp_background, denoise_file, foreground_mask, otsu_threshold
from volscore.options import DenoiseOptions


def _hallucinating_model(x, sigma, coords):
    """Denoises perfectly towards 0.5 everywhere: tissue painted into the air."""
    return (0.5 - x) / sigma.reshape(-1, 1, 1, 1, 1) ** 2


def test_background_clamp_removes_hallucinated_signal(tmp_path):
    rng = np.random.default_rng(6)
    clean = head_phantom(32)
    src = write_nifti(
        tmp_path / "in.nii.gz", (clean + 0.05 * rng.standard_normal(clean.shape)).astype(np.float32)
    )
    air = ~foreground_mask(np.asarray(nib.load(src).dataobj))  # the mask denoise_file uses
    run = closed_form_run(_hallucinating_model)
    outside = {}
    for rule in ("clamp", "none"):
        options = DenoiseOptions(run=run.name, sigma=0.05, background=rule)
        rec = denoise_file(src, tmp_path / f"{rule}.nii.gz", options, run=run)
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


def test_otsu_threshold_splits_two_levels_and_foreground_mask_covers_the_head_with_a_margin():
    rng = np.random.default_rng(8)
    values = np.concatenate([0.1 + 0.01 * rng.standard_normal(500), 0.7 + 0.01 * rng.standard_normal(300)])
    assert 0.1 < otsu_threshold(values) < 0.7
    assert otsu_threshold(np.full(10, 0.3)) == 0.3  # a constant: nothing to split
    head = head_phantom(32) > 0
    mask = foreground_mask(head_phantom(32) + 0.02 * rng.standard_normal((32, 32, 32)))
    assert mask[head].all()  # every voxel of the head, ...
    ring = ndimage.binary_dilation(head, iterations=2) & ~head
    assert mask[ring].all() and not mask[0, 0, 0]  # ... its edge and a margin, but not the far corner
