"""Tests for volscore/restore/files.py and the ``volscore restore`` command on small NIfTI files.

A closed-form prior (every voxel N(0.5, 0.2^2), independent: its perturbed score is exact, so the pipeline
is checked without a trained network) and the shared ``tiny_run`` (a real 3D network, nearly untrained).
Checked: the super-resolved grid (shape, affine mapping the same world coordinates, voxel size), data
consistency (the output's thick-slice means are the input, with a noise-free measurement), inpainting that
keeps every known voxel bit for bit, the sd map of posterior draws, and the refusals (a mask of another
shape, a factor that does not divide, a 2D run, an existing output, the input as output), all before work.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from phantoms import AFFINE, closed_form_run, head_phantom, write_nifti

from volscore.cli import main
from volscore.data.nifti import load_volume
from volscore.options import RestoreOptions
from volscore.restore.files import border_gradient_ratio, default_std_path, restore_file
from volscore.restore.operators import SliceProfile

MU, SD = 0.5, 0.2


class GaussianPrior:
    """Patch score of independent N(MU, SD^2) voxels, with the preconditioner's sigma_data."""

    sigma_data = SD

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return (MU - x) / (SD**2 + s**2)


def _thick_affine(factor: int) -> np.ndarray:
    a = AFFINE.copy()
    a[2, 2] = 1.5 * factor  # in-plane 1.5 mm: the fine grid is isotropic
    return a


def _scan(tmp_path, factor: int = 2, n: int = 20):
    """A thick-slice scan: a head phantom's fine slices averaged in blocks of ``factor`` along axis 2."""
    rng = np.random.default_rng(3)
    fine = head_phantom((n, n, n * factor)) + 0.02 * rng.standard_normal((n, n, n * factor))
    thick = SliceProfile(n * factor, 2, factor).forward(torch.from_numpy(fine)[None, None])[0, 0].numpy()
    path = tmp_path / "thick.nii.gz"
    write_nifti(path, thick.astype(np.float32), affine=_thick_affine(factor))
    return path


def test_superres_grid_and_data_consistency(tmp_path) -> None:
    src = _scan(tmp_path, factor=2)
    out = tmp_path / "fine.nii.gz"
    options = RestoreOptions(noise_sigma="0")
    rec = restore_file(src, out, options, run=closed_form_run(GaussianPrior()), progress=False)
    img, thick = nib.load(out), load_volume(src)
    assert img.shape == (20, 20, 40) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.5, 1.5), atol=1e-6)
    # thick slice k's centre is fine index 2k + 0.5: the same world point
    for k in (0, 7, 19):
        w_thick = thick.affine @ np.array([3, 4, k, 1.0])
        w_fine = img.affine @ np.array([3, 4, 2 * k + 0.5, 1.0])
        np.testing.assert_allclose(w_thick, w_fine, atol=1e-6)
    means = img.get_fdata().reshape(20, 20, 20, 2).mean(-1)
    np.testing.assert_allclose(means, thick.data, atol=1e-4 * float(np.abs(thick.data).max()))
    assert rec["superres"] == {"axis": 2, "factor": 2, "profile": "box", "voxel_mm": [1.5, 1.5, 1.5]}
    assert rec["check"]["passed"] and rec["nfe_per_sample"] == 10


def _mask(tmp_path, shape=(24, 24, 24), name="mask.nii.gz"):
    mask = np.zeros(shape, np.uint8)
    mask[8:14, 6:12, 10:16] = 1
    path = tmp_path / name
    write_nifti(path, mask)
    return path, mask.astype(bool)


def test_inpaint_keeps_known_voxels_bit_for_bit_and_writes_the_sd_of_draws(tmp_path) -> None:
    rng = np.random.default_rng(5)
    raw = np.round((head_phantom(24) + 0.05 * rng.standard_normal((24,) * 3)) * 1000).astype(np.int16)
    src = tmp_path / "scan.nii.gz"
    write_nifti(src, raw)
    mask_path, hole = _mask(tmp_path)
    out = tmp_path / "filled.nii.gz"
    options = RestoreOptions(task="inpaint", mask=str(mask_path), sampler="heun", n_samples=3, steps=6)
    rec = restore_file(src, out, options, run=closed_form_run(GaussianPrior()), progress=False)
    result, given = nib.load(out).get_fdata(dtype=np.float32), load_volume(src).data
    assert np.array_equal(result[~hole], given[~hole])
    assert np.isfinite(result).all() and not np.array_equal(result[hole], given[hole])
    std = nib.load(default_std_path(out)).get_fdata()
    assert rec["std_output"] == str(default_std_path(out))
    assert (std[~hole] == 0).all() and (std[hole] > 0).all()
    assert rec["inpaint"]["voxels"] == int(hole.sum()) and rec["n_samples"] == 3


def test_tiny_run_through_the_command(tmp_path, tiny_run, capsys) -> None:
    src = _scan(tmp_path, factor=2, n=16)
    out, png = tmp_path / "fine.nii.gz", tmp_path / "sr.png"
    status = main(["restore", str(src), str(out), "--run", str(tiny_run), "--png", str(png), "--steps", "2"])
    assert status == 0, capsys.readouterr().err
    assert nib.load(out).shape == (16, 16, 32) and png.stat().st_size > 1000
    record = json.loads((tmp_path / "fine.restore.json").read_text())
    assert record["method"] == "pnp" and record["levels"]["n"] == 2
    assert "x2 along axis 2" in capsys.readouterr().out


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("mask shape", "mask shape"),
        ("factor", "not an integer"),
        ("2d run", "2D model"),
        ("exists", "exists"),
        ("input as output", "refusing to overwrite the input"),
        ("empty mask", "marks no voxel"),
        ("mask grid", "affine differs"),
        ("pnp draws", "pnp is deterministic"),
        ("no mask", "needs --mask"),
    ],
)
def test_refusals_name_the_problem_and_write_nothing(
    tmp_path, tiny_mnist_run, tiny_run, capsys, case, message
):
    scan = _scan(tmp_path, factor=2, n=12)  # 12 x 12 x 12 at 1.5 x 1.5 x 3 mm
    out = tmp_path / "out.nii.gz"
    args = ["restore", str(scan), str(out), "--run", str(tiny_run)]
    if case == "mask shape":
        mask, _ = _mask(tmp_path, shape=(12, 12, 13))
        args += ["--task", "inpaint", "--mask", str(mask)]
    elif case == "factor":
        img = nib.load(scan)
        a = img.affine.copy()
        a[2, 2] = 2.5  # 2.5 mm slices over 1.5 mm in-plane: 1.67
        write_nifti(scan, np.asarray(img.dataobj), affine=a)
    elif case == "2d run":
        args[4] = str(tiny_mnist_run)
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "input as output":
        args[2] = str(scan)
    elif case == "empty mask":
        path = tmp_path / "empty.nii.gz"
        write_nifti(path, np.zeros((12, 12, 12), np.uint8), affine=_thick_affine(2))
        args += ["--task", "inpaint", "--mask", str(path)]
    elif case == "mask grid":
        mask, _ = _mask(tmp_path, shape=(12, 12, 12))  # the fine grid's affine, not the scan's
        args += ["--task", "inpaint", "--mask", str(mask)]
    elif case == "pnp draws":
        args += ["--sampler", "pnp", "--n-samples", "2"]
    elif case == "no mask":
        args += ["--task", "inpaint"]
    before = scan.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert scan.read_bytes() == before
    assert (
        (out.read_bytes() == b"keep me")
        if case == "exists"
        else (case == "input as output" or not out.exists())
    )


def test_border_gradient_ratio_sees_a_seam() -> None:
    z, y, x = np.meshgrid(*[np.linspace(0, 1, 24)] * 3, indexing="ij")
    smooth = (x + 0.5 * y).astype(np.float32)
    hole = np.zeros(smooth.shape, bool)
    hole[8:16, 8:16, 8:16] = True
    assert border_gradient_ratio(smooth, hole) == pytest.approx(1.0, abs=0.05)
    seam = np.where(hole, smooth + 0.5, smooth)
    assert border_gradient_ratio(seam, hole) > 1.5  # the self-check's threshold over a smooth fill
