"""Tests for volscore/denoise/files.py: ``denoise_file`` / ``denoise_folder`` on small NIfTI files with the
shared ``tiny_run`` (conftest: a 3D run with coordinate channels trained for two steps, nearly untrained).

Float32 output with the input's affine and header (int16 + scl_slope input, float64 input), refusals
(input as output, directly or via a symlink; an existing output without force), folder mode (names kept,
record, skips), bad inputs (VolumeError naming the file, nothing written), bad options refused before
reading, and ``choose_scaler``'s choice between the run's scaling and the scan's. Seeded; 24^3 voxels.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from phantoms import AFFINE, head_phantom, noisy_head, write_nifti

from volscore.data.nifti import IntensityScaler, VolumeError
from volscore.denoise import RECORD_NAME, choose_scaler, denoise_file, denoise_folder
from volscore.options import DenoiseOptions


def _header_int16():
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header["descrip"] = b"volscore test scan"
    header.set_xyzt_units("mm", "sec")
    return header


@pytest.mark.reliability
def test_int16_with_scl_slope_round_trip(tmp_path, tiny_run):
    rng = np.random.default_rng(8)
    raw = np.round((head_phantom(24) + 0.05 * rng.standard_normal((24,) * 3)) * 2000).astype(np.int16)
    img = nib.Nifti1Image(raw, AFFINE, _header_int16())
    img.header.set_slope_inter(0.5, 10.0)  # input units: raw * 0.5 + 10
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=2)
    src = tmp_path / "scan.nii.gz"
    img.to_filename(src)
    units = raw * 0.5 + 10.0

    rec = denoise_file(src, tmp_path / "out.nii.gz", DenoiseOptions(run=str(tiny_run)))
    back = nib.load(tmp_path / "out.nii.gz")
    out = np.asarray(back.dataobj)
    assert back.get_data_dtype() == np.float32 and out.dtype == np.float32 and out.shape == raw.shape
    assert back.dataobj.slope == 1 and back.dataobj.inter == 0  # float output never rescaled
    np.testing.assert_array_equal(back.affine, AFFINE)
    assert back.header["descrip"].item() == b"volscore test scan" and int(back.header["sform_code"]) == 2
    assert back.header.get_zooms() == img.header.get_zooms()
    # The nearly untrained tiny model shrinks by c_skip ~ 0.99 in model units: output stays in input units.
    assert np.abs(out - units).mean() < 0.05 * np.ptp(units)
    assert rec["scaler"]["source"] == "scan"  # 10-1600 is not the run's 0-1 range
    sigma_true = 0.05 * 2000 * 0.5
    assert abs(rec["sigma"]["input_units"] / sigma_true - 1) < 0.15
    assert rec["sigma"]["model_units"] == pytest.approx(
        rec["sigma"]["input_units"] / (rec["scaler"]["hi"] - rec["scaler"]["lo"])
    )
    assert rec["method"] == "tweedie" and json.loads(json.dumps(rec)) == rec


@pytest.mark.reliability
def test_float64_input_and_annealed_record(tmp_path, tiny_run):
    src = noisy_head(tmp_path / "scan.nii", sigma=0.05)
    assert nib.load(src).get_data_dtype() == np.float64
    options = DenoiseOptions(run=str(tiny_run), steps=2, seed=3)
    rec = denoise_file(src, tmp_path / "out.nii", options)
    back = nib.load(tmp_path / "out.nii")
    assert back.get_data_dtype() == np.float32 and back.shape == (24, 24, 24)
    np.testing.assert_array_equal(back.affine, AFFINE)
    assert rec["method"] == "pc" and rec["steps"] == 2 and rec["scaler"]["source"] == "run"
    again = denoise_file(src, tmp_path / "again.nii", DenoiseOptions(run=str(tiny_run), steps=2, seed=3))
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "again.nii").dataobj), np.asarray(back.dataobj)
    )
    assert again["sigma"] == rec["sigma"]


@pytest.mark.reliability
def test_refuses_to_overwrite_input_directly_or_via_symlink(tmp_path, tiny_run):
    src = noisy_head(tmp_path / "scan.nii.gz")
    before = src.read_bytes()
    options = DenoiseOptions(run=str(tiny_run))
    with pytest.raises(VolumeError, match="overwrite the input"):
        denoise_file(src, src, options, force=True)
    link = tmp_path / "link.nii.gz"
    os.symlink(src, link)
    with pytest.raises(VolumeError, match="overwrite the input"):
        denoise_file(src, link, options, force=True)
    assert src.read_bytes() == before


@pytest.mark.reliability
def test_existing_output_needs_force(tmp_path, tiny_run):
    src = noisy_head(tmp_path / "scan.nii.gz")
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"precious")
    options = DenoiseOptions(run=str(tiny_run))
    with pytest.raises(FileExistsError, match="force"):
        denoise_file(src, out, options)
    assert out.read_bytes() == b"precious"
    denoise_file(src, out, options, force=True)
    assert nib.load(out).shape == (24, 24, 24)


def test_folder_mode_keeps_names_records_and_skips(tmp_path, tiny_run):
    src_dir, dst_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    noisy_head(src_dir / "a.nii", seed=1)
    noisy_head(src_dir / "b.nii.gz", seed=2)
    write_nifti(src_dir / "c_bad.nii.gz", np.full((24, 24, 24), np.nan))
    options = DenoiseOptions(run=str(tiny_run))
    rec = denoise_folder(src_dir, dst_dir, options)
    assert sorted(p.name for p in dst_dir.iterdir()) == ["a.nii", "b.nii.gz", RECORD_NAME]
    assert (rec["n_done"], rec["n_skipped"], rec["n_failed"]) == (2, 0, 1)
    failed = [f for f in rec["files"] if f["status"] == "failed"][0]
    assert "c_bad.nii.gz" in failed["error"] and "NaN" in failed["error"]
    assert json.loads((dst_dir / RECORD_NAME).read_text()) == json.loads(json.dumps(rec))
    assert all(f["run"] == str(tiny_run) for f in rec["files"] if f["status"] == "done")

    (dst_dir / "a.nii").unlink()
    rec = denoise_folder(src_dir, dst_dir, options)
    status = {os.path.basename(f["input"]): f["status"] for f in rec["files"]}
    assert status == {"a.nii": "done", "b.nii.gz": "skipped", "c_bad.nii.gz": "failed"}
    rec = denoise_folder(src_dir, dst_dir, options, force=True)
    assert rec["n_done"] == 2
    with pytest.raises(VolumeError, match="input folder"):
        denoise_folder(src_dir, src_dir, options)


def _bad_inputs(tmp_path):
    yield tmp_path / "missing.nii.gz", "no such file"
    yield write_nifti(tmp_path / "flat.nii.gz", np.zeros((24, 24), dtype=np.float32)), "2D"
    yield write_nifti(tmp_path / "series.nii.gz", np.zeros((24, 24, 24, 2), dtype=np.float32)), "4D"
    data = head_phantom(24).astype(np.float32)
    data[3, 4, 5] = np.nan
    yield write_nifti(tmp_path / "nan.nii.gz", data), "NaN"


@pytest.mark.reliability
def test_bad_inputs_raise_volume_error_and_write_nothing(tmp_path, tiny_run):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for src, problem in _bad_inputs(tmp_path):
        with pytest.raises(VolumeError, match=problem) as info:
            denoise_file(src, out_dir / "out.nii.gz", DenoiseOptions(run=str(tiny_run)))
        assert str(src) in str(info.value)
        assert list(out_dir.iterdir()) == []


@pytest.mark.reliability
def test_bad_options_are_refused_before_reading(tmp_path, tiny_run):
    src = tmp_path / "never_read.nii.gz"  # does not exist: the options fail first
    out = tmp_path / "out.nii.gz"
    with pytest.raises(ValueError, match="no model: give --run RUN"):
        denoise_file(src, out, DenoiseOptions())
    for kwargs, match in (
        ({"noise": "poisson"}, "noise"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": "guess"}, "sigma"),
        ({"background": "zero"}, "background"),
        ({"steps": 2, "sampler": "euler"}, "sampler"),
    ):
        with pytest.raises(ValueError, match=match):
            denoise_file(src, out, DenoiseOptions(run=str(tiny_run), **kwargs))
    with pytest.raises(VolumeError, match="extension"):
        denoise_file(src, tmp_path / "out.img", DenoiseOptions(run=str(tiny_run)))


def test_choose_scaler_keeps_the_run_scaling_for_a_scan_in_its_range():
    rng = np.random.default_rng(10)
    scan = head_phantom(24) + 0.02 * rng.standard_normal((24,) * 3)
    trained = IntensityScaler.fit(scan).to_dict()
    scaler, source = choose_scaler(scan, trained)
    assert source == "run" and scaler.to_dict() == trained
    scaler, source = choose_scaler(1000 * scan + 50, trained)  # another gain: the scan's own percentiles
    assert source == "scan" and scaler.lo > 0 and 500 < scaler.hi < 1000
    scaler, source = choose_scaler(scan, None)  # no run (self-supervised): the scan's own
    assert source == "scan" and scaler.to_dict() != trained


# -- finite out; folder mode goes on past any failure (#16) -------------------------------------------------
@pytest.mark.reliability
@pytest.mark.parametrize("noise", ["gaussian", "rician"])
@pytest.mark.parametrize("sigma", ["1e30", "1e18"])  # 1e30 overflowed to inf; 1e18 gave a finite guess
def test_an_absurd_sigma_is_an_error_naming_it_and_nothing_is_written(tmp_path, tiny_run, noise, sigma):
    src = noisy_head(tmp_path / "scan.nii.gz", seed=6)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    options = DenoiseOptions(run=str(tiny_run), sigma=sigma, noise=noise, check="off")
    with pytest.raises(ValueError) as info:
        denoise_file(src, out_dir / "den.nii.gz", options)
    message = str(info.value)
    assert str(src) in message and f"sigma {float(sigma):.4g} (given;" in message, message
    assert "10x the largest noise level" in message and str(tiny_run) in message, message
    assert list(out_dir.iterdir()) == []


@pytest.mark.reliability
@pytest.mark.parametrize("steps", [0, 2], ids=["tweedie", "annealed"])
def test_a_non_finite_network_output_is_an_error_naming_the_run_and_nothing_is_written(
    tmp_path, tiny_run, steps
):
    from volscore.run import Run

    run = Run.load(tiny_run)
    real = run.model
    run.model = lambda x, *args, **kwargs: torch.full_like(real(x, *args, **kwargs), float("nan"))
    src = noisy_head(tmp_path / "scan.nii.gz", seed=7)
    out = tmp_path / "den.nii.gz"
    with pytest.raises(FloatingPointError, match=f"{src}: the denoiser produced .*check the run {tiny_run}"):
        denoise_file(src, out, DenoiseOptions(run=str(tiny_run), steps=steps, sigma="0.05"), run=run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def _mixed_folder(tmp_path):
    """in/: two good scans (24^3), a truncated file, and a 20^3 scan on which the denoiser crashes."""
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    noisy_head(src_dir / "a_good.nii.gz", seed=1)
    whole = noisy_head(tmp_path / "whole.nii.gz", seed=2).read_bytes()
    (src_dir / "b_corrupt.nii.gz").write_bytes(whole[: len(whole) // 2])
    noisy_head(src_dir / "c_crash.nii.gz", n=20, seed=3)
    noisy_head(src_dir / "d_good.nii", seed=4)
    return src_dir


@pytest.fixture
def crash_on_20(monkeypatch):
    """The denoiser raises an exception no caller expects (not a ValueError or OSError) on a 20^3 scan."""
    from volscore.denoise import files

    real = files.tweedie_denoise

    def tweedie(model, x, *args, **kwargs):
        if x.shape[-1] == 20:
            raise ZeroDivisionError("simulated crash inside the denoiser")
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(files, "tweedie_denoise", tweedie)


@pytest.mark.reliability
def test_folder_mode_records_each_failure_and_denoises_the_rest(tmp_path, tiny_run, crash_on_20):
    src_dir, dst_dir = _mixed_folder(tmp_path), tmp_path / "out"
    rec = denoise_folder(src_dir, dst_dir, DenoiseOptions(run=str(tiny_run), check="off"))
    status = {os.path.basename(f["input"]): f["status"] for f in rec["files"]}
    assert status == {"a_good.nii.gz": "done", "b_corrupt.nii.gz": "failed", "c_crash.nii.gz": "failed",
                      "d_good.nii": "done"}  # fmt: skip
    assert (rec["n_done"], rec["n_skipped"], rec["n_failed"]) == (2, 0, 2)
    errors = {os.path.basename(f["input"]): f["error"] for f in rec["files"] if f["status"] == "failed"}
    assert (
        errors["b_corrupt.nii.gz"].startswith("VolumeError: ")
        and "b_corrupt.nii.gz" in errors["b_corrupt.nii.gz"]
    )
    assert errors["c_crash.nii.gz"] == "ZeroDivisionError: simulated crash inside the denoiser"
    # the good scans are written, the failed ones are not, and the record on disk says all of it
    assert sorted(p.name for p in dst_dir.iterdir()) == ["a_good.nii.gz", "d_good.nii", RECORD_NAME]
    assert json.loads((dst_dir / RECORD_NAME).read_text()) == json.loads(json.dumps(rec))
    assert nib.load(dst_dir / "d_good.nii").shape == (24, 24, 24)


@pytest.mark.reliability
def test_folder_mode_record_is_written_after_every_file(tmp_path, tiny_run, monkeypatch):
    """Even a failure that ends the whole call (Ctrl-C) leaves a record of the files finished before it."""
    from volscore.denoise import files

    src_dir, dst_dir = _mixed_folder(tmp_path), tmp_path / "out"
    real = files.denoise_file

    def stop_at_the_fourth(path, *args, **kwargs):
        if path.name == "d_good.nii":
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "denoise_file", stop_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        denoise_folder(src_dir, dst_dir, DenoiseOptions(run=str(tiny_run), check="off"))
    on_disk = json.loads((dst_dir / RECORD_NAME).read_text())
    assert [f["status"] for f in on_disk["files"]] == ["done", "failed", "done"]  # 20^3 denoises here
    assert (on_disk["n_done"], on_disk["n_failed"]) == (2, 1)
    assert not (dst_dir / "d_good.nii").exists()
