"""Tests for volscore/denoise/spacing.py: the voxel-size rule, and ``denoise_file`` with ``spacing``.

- ``target_zooms``: "native" keeps the scan's grid; a number resamples to that isotropic size unless the scan
  has it; "auto" picks the nearest trained voxel size (least squared log ratio), keeping the scan's grid
  within 10 %: a 2 mm scan with a run trained at 1, 2 and 3 mm stays at 2 mm, a 1.4 mm scan goes to 1 mm.
- ``trained_zooms`` reads a run's zooms and multi-resolution spacings; self-supervised fits have none.
- ``Regrid``: there and back on a smooth volume is close to the identity, with the target voxel size and
  field of view; the scan's own voxel size is exactly the identity; ``noise_factor`` is the sd an independent
  white-noise volume keeps; ``record`` marks finer grids as correlated.
- ``denoise_file``: "auto" on a run's own voxel size does not resample; a number does, and the output keeps
  the scan's grid; the network is conditioned on the resampled noise level.
Seeded; volumes of at most 40^3 voxels.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from phantoms import AFFINE, ZOOMS, closed_form_run, head_phantom, noisy_head, smooth_phantom, write_nifti

from volscore.data.sources import resample, voxel_sizes
from volscore.denoise import denoise_file
from volscore.denoise.spacing import SPACING_TOLERANCE, Regrid, target_zooms, trained_zooms
from volscore.options import DenoiseOptions
from volscore.run import Run

MULTIRES = [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (3.0, 3.0, 3.0)]


def test_native_keeps_the_grid_and_a_number_is_isotropic():
    assert target_zooms((1.5, 1.5, 2.0), MULTIRES, "native") is None
    assert target_zooms((1.5, 1.5, 2.0), [], "native") is None
    assert target_zooms((1.5, 1.5, 2.0), [], 2.0) == (2.0, 2.0, 2.0)
    assert target_zooms((1.5, 1.5, 2.0), MULTIRES, "1.25") == (1.25, 1.25, 1.25)
    assert target_zooms((2.0, 2.0, 2.0), [], 2.0) is None  # already there
    assert target_zooms((2.0, 2.0, 2.0005), [], 2.0) is None  # within 0.1 %
    assert target_zooms((2.0, 2.0, 2.1), [], 2.0) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    "scan, expected",
    [
        ((2.0, 2.0, 2.0), None),  # a 2 mm scan, a run at 1, 2, 3 mm: 2 mm, i.e. the scan's own grid
        ((2.1, 1.95, 2.0), None),  # within 10 % of 2 mm
        ((1.8, 1.8, 2.6), (2.0, 2.0, 2.0)),  # nearest in log ratio, but 2.6 is 30 % off: resample
        ((1.4, 1.4, 1.4), (1.0, 1.0, 1.0)),  # log(1.4) = 0.34 < log(2 / 1.4) = 0.36
        ((1.45, 1.45, 1.45), (2.0, 2.0, 2.0)),
        ((2.5, 2.5, 2.5), (3.0, 3.0, 3.0)),
        ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
        ((1.05, 1.0, 0.95), None),
    ],
)
def test_auto_picks_the_nearest_trained_voxel_size(scan, expected):
    assert target_zooms(scan, MULTIRES, "auto") == expected


def test_auto_without_trained_sizes_keeps_the_grid():
    assert target_zooms((0.7, 0.7, 3.0), [], "auto") is None
    # the tolerance is relative: 10 % above and 1 / 1.1 below
    assert target_zooms((1 + SPACING_TOLERANCE - 1e-6,) * 3, [(1.0, 1.0, 1.0)], "auto") is None
    assert target_zooms((1 + SPACING_TOLERANCE + 1e-3,) * 3, [(1.0, 1.0, 1.0)], "auto") == (1.0, 1.0, 1.0)


def _run_with(data):
    run = closed_form_run(lambda x, s, c: 0 * x)
    run.data.update(data)
    return run


def test_trained_zooms_of_runs():
    assert trained_zooms(_run_with({})) == []  # a run that does not record them
    assert trained_zooms(_run_with({"zooms": [[1.5, 1.5, 2.0]]})) == [(1.5, 1.5, 2.0)]
    multires = _run_with({"zooms": [[1.0, 1.0, 1.0]], "multires": {"spacings": [2.0, 3.0], "shapes": []}})
    assert trained_zooms(multires) == MULTIRES
    assert trained_zooms(_run_with({"kind": "self-supervised", "zooms": [[1.0, 1.0, 1.0]]})) == []


def test_trained_zooms_of_a_trained_run(tiny_run):
    assert trained_zooms(Run.load(str(tiny_run))) == [ZOOMS]  # conftest: 1.5 x 1.5 x 2 mm


@pytest.mark.parametrize("zooms", [(2.0, 2.0, 2.0), (3.0, 3.0, 3.0), (1.2, 1.2, 1.6)])
def test_regrid_there_and_back_is_close_to_the_identity(zooms):
    volume = smooth_phantom(40).astype(np.float32)  # values 0.1-1, smooth
    regrid = Regrid(volume.shape, AFFINE, zooms)
    there = regrid.forward(volume)
    np.testing.assert_allclose(voxel_sizes(regrid.target_affine), zooms)
    # the same field of view (to within a voxel of the new grid), the axes' directions kept
    extent = (np.asarray(volume.shape) - 1) * np.asarray(ZOOMS)
    new_extent = (np.asarray(there.shape) - 1) * np.asarray(zooms)
    assert (np.abs(new_extent - extent) <= np.asarray(zooms)).all()
    assert (np.sign(np.diag(regrid.target_affine)[:3]) == np.sign(np.diag(AFFINE)[:3])).all()
    back = regrid.back(there)
    assert back.shape == volume.shape and back.dtype == np.float32
    assert np.abs(back - volume).max() < 0.03 and np.abs(back - volume).mean() < 0.005
    record = regrid.record()
    assert record["shape"] == list(there.shape) and record["zooms"] == list(zooms)
    assert record["correlated"] == any(z < s / 1.1 for z, s in zip(zooms, ZOOMS, strict=True))


def test_regrid_to_the_scans_own_voxel_size_is_the_identity():
    volume = smooth_phantom(24).astype(np.float32)
    regrid = Regrid(volume.shape, AFFINE, ZOOMS)
    assert regrid.noise_factor == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(regrid.back(regrid.forward(volume)), volume, atol=1e-5)
    with pytest.raises(RuntimeError):
        Regrid(volume.shape, AFFINE, ZOOMS).back(volume)


@pytest.mark.parametrize("zooms", [(2.0, 2.0, 2.0), (1.0, 1.0, 1.0)])
def test_noise_factor_is_the_sd_white_noise_keeps(zooms):
    shape = (40, 40, 40)
    regrid = Regrid(shape, AFFINE, zooms)
    noise = np.random.default_rng(123).standard_normal(shape).astype(np.float32)  # not the probe's seed
    out, _ = resample(noise, AFFINE, zooms)
    measured = float(np.sqrt((out.astype(np.float64) ** 2).mean() / (noise.astype(np.float64) ** 2).mean()))
    assert regrid.noise_factor == pytest.approx(measured, rel=0.03)
    assert 0.3 < regrid.noise_factor < 0.95  # interpolation averages: the sd always drops


def test_denoise_file_auto_and_a_number(tmp_path, tiny_run):
    src = noisy_head(tmp_path / "scan.nii.gz", sigma=0.05)  # the run's own voxel size
    run = Run.load(str(tiny_run))
    options = DenoiseOptions(run=str(tiny_run), spacing="auto", check="off")
    rec = denoise_file(src, tmp_path / "auto.nii.gz", options, run=run)
    assert rec["spacing"] == {"rule": "auto", "resampled": False}
    assert rec["sigma"]["network_conditioning"] == rec["sigma"]["model_units"]

    options = DenoiseOptions(run=str(tiny_run), spacing="3", check="off")
    rec = denoise_file(src, tmp_path / "three.nii.gz", options, run=run)
    spacing = rec["spacing"]
    assert spacing["resampled"] and spacing["zooms"] == [3.0, 3.0, 3.0] and not spacing["correlated"]
    assert spacing["scan_zooms"] == list(ZOOMS)
    assert rec["sigma"]["network_conditioning"] == pytest.approx(
        rec["sigma"]["model_units"] * spacing["noise_factor"]
    )
    out = nib.load(tmp_path / "three.nii.gz")
    assert out.shape == (24, 24, 24)
    np.testing.assert_array_equal(out.affine, AFFINE)
    assert np.isfinite(np.asarray(out.dataobj)).all()


def test_denoise_file_auto_follows_the_runs_multires_sizes(tmp_path):
    """A closed-form run recorded at 1, 2 and 3 mm: a 2 mm scan is denoised on its grid, a 1.4 mm at 1 mm."""
    run = _run_with({"zooms": [[1.0, 1.0, 1.0]], "multires": {"spacings": [2.0, 3.0], "shapes": []}})
    rng = np.random.default_rng(2)
    clean = head_phantom(24)
    for mm, resampled in ((2.0, False), (1.4, True)):
        affine = np.diag([mm, mm, mm, 1.0])
        src = write_nifti(
            tmp_path / f"{mm}.nii.gz", clean + 0.05 * rng.standard_normal(clean.shape), affine=affine
        )
        options = DenoiseOptions(run=run.name, sigma=0.05, spacing="auto", check="off", background="none")
        rec = denoise_file(src, tmp_path / f"{mm}-out.nii.gz", options, run=run)
        assert rec["spacing"]["resampled"] == resampled
        if resampled:
            assert rec["spacing"]["zooms"] == [1.0, 1.0, 1.0] and rec["spacing"]["correlated"]
        # the closed-form model returns its input: the scan itself, or the scan there and back
        out = np.asarray(nib.load(tmp_path / f"{mm}-out.nii.gz").dataobj)
        data = np.asarray(nib.load(src).dataobj, dtype=np.float32)
        if resampled:
            regrid = Regrid(data.shape, affine, (1.0, 1.0, 1.0))
            data = regrid.back(regrid.forward(data))
        assert out.shape == data.shape
        np.testing.assert_allclose(out, data, atol=1e-5)
