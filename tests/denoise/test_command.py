"""Tests for volscore/denoise/command.py (``denoise_paths``, what ``volscore denoise`` runs) and for the
``volscore denoise`` command line, with the shared ``tiny_run`` (conftest). Seeded; 24^3 voxels."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from phantoms import head_phantom, noisy_head, write_nifti

from volscore.cli import main
from volscore.denoise import RECORD_NAME
from volscore.denoise.command import denoise_paths
from volscore.options import DenoiseOptions
from volscore.outputs import OutputError


# -- denoise_paths -------------------------------------------------------------------------------------------
def test_denoise_paths_file_mode_writes_output_record_and_picture(tmp_path, tiny_run):
    src = noisy_head(tmp_path / "noisy.nii.gz", sigma=0.05, seed=4)
    dst, png = tmp_path / "clean.nii.gz", tmp_path / "ba.png"
    status, lines = denoise_paths(DenoiseOptions(run=str(tiny_run), sigma="0.05"), src, dst, png=png)
    assert status == 0 and str(src) in lines[0] and "sigma 0.05 (given" in lines[0]
    record = json.loads((tmp_path / "clean.denoise.json").read_text())
    assert record["output"] == str(dst) and record["sigma"]["input_units"] == 0.05
    assert lines[-1] == f"record: {tmp_path / 'clean.denoise.json'}" and f"before/after: {png}" in lines
    assert nib.load(dst).shape == (24, 24, 24) and png.read_bytes()[:4] == b"\x89PNG"


def test_denoise_paths_checks_every_output_before_any_work(tmp_path, tiny_run, monkeypatch):
    src = noisy_head(tmp_path / "noisy.nii.gz", seed=5)
    dst, record = tmp_path / "clean.nii.gz", tmp_path / "rec.json"
    record.write_text("precious")

    def fail(*args, **kwargs):
        raise AssertionError("denoised although an output was refused")

    monkeypatch.setattr("volscore.denoise.command.denoise_file", fail)
    options = DenoiseOptions(run=str(tiny_run))
    with pytest.raises(FileExistsError, match="--force"):
        denoise_paths(options, src, dst, record=record)  # the record exists
    with pytest.raises(OutputError, match="twice"):
        denoise_paths(options, src, dst, png=tmp_path / "x.png", record=tmp_path / "x.png")
    with pytest.raises(OutputError, match="overwrite the input"):
        denoise_paths(options, src, dst, png=src)  # the picture over the scan
    assert record.read_text() == "precious" and not dst.exists()


def test_denoise_paths_argument_forms(tmp_path, tiny_run):
    options = DenoiseOptions(run=str(tiny_run))
    for kwargs, message in (
        ({}, "INPUT OUTPUT"),
        ({"input": "a.nii.gz", "in_dir": "in", "out_dir": "out"}, "not both"),
        ({"in_dir": "in"}, "not both"),  # folder mode needs both folders
        ({"input": "a.nii.gz"}, "both INPUT and OUTPUT"),
        ({"in_dir": "in", "out_dir": "out", "png": "x.png"}, "--png and --record"),
    ):
        with pytest.raises(ValueError, match=message):
            denoise_paths(options, **kwargs)


def test_denoise_paths_folder_mode_reports_failures_in_its_status(tmp_path, tiny_run):
    src_dir, dst_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    noisy_head(src_dir / "a.nii.gz", seed=1)
    status, lines = denoise_paths(DenoiseOptions(run=str(tiny_run)), in_dir=src_dir, out_dir=dst_dir)
    assert status == 0 and lines[0].lstrip().startswith("done") and "1 done, 0 skipped, 0 failed" in lines[-1]
    bad = head_phantom(24).astype(np.float32)
    bad[1, 2, 3] = np.nan
    write_nifti(src_dir / "b.nii.gz", bad)
    status, lines = denoise_paths(DenoiseOptions(run=str(tiny_run)), in_dir=src_dir, out_dir=dst_dir)
    assert status == 1 and "0 done, 1 skipped, 1 failed" in lines[-1]
    assert any(line.lstrip().startswith("failed") and "NaN" in line for line in lines)


# -- the command line ----------------------------------------------------------------------------------------
def test_cli_denoise_file_writes_volume_record_and_picture(tmp_path, tiny_run, capsys):
    src = noisy_head(tmp_path / "noisy.nii.gz", sigma=0.05, seed=3)
    dst, png = tmp_path / "clean.nii.gz", tmp_path / "before_after.png"
    assert (
        main(["denoise", str(src), str(dst), "--run", str(tiny_run), "--sigma", "0.05", "--png", str(png)])
        == 0
    )
    out = capsys.readouterr().out
    assert "sigma 0.05" in out and "given" in out
    record = json.loads((tmp_path / "clean.denoise.json").read_text())
    assert record["sigma"]["input_units"] == 0.05 and record["output"] == str(dst)
    assert nib.load(dst).shape == nib.load(src).shape and png.stat().st_size > 0
    # auto sigma is printed; the same output again needs --force; input as output is refused
    assert main(["denoise", str(src), str(dst), "--run", str(tiny_run)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["denoise", str(src), str(dst), "--run", str(tiny_run), "--force"]) == 0
    assert "haar-hhh-mad" in capsys.readouterr().out
    assert main(["denoise", str(src), str(src), "--run", str(tiny_run), "--force"]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err


def test_cli_denoise_folder_and_argument_errors(tmp_path, tiny_run, capsys):
    src_dir, dst_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    noisy_head(src_dir / "a.nii.gz", seed=1)
    assert main(["denoise", "-i", str(src_dir), "-o", str(dst_dir), "--run", str(tiny_run)]) == 0
    assert (dst_dir / "a.nii.gz").exists() and (dst_dir / RECORD_NAME).exists()
    assert "done" in capsys.readouterr().out
    for argv, message in [
        (["denoise", "a.nii.gz", "b.nii.gz", "--run", str(tiny_run), "--self-supervised"], "not both"),
        (["denoise", "a.nii.gz", "--run", str(tiny_run)], "both INPUT and OUTPUT"),
        (["denoise", "a.nii.gz", "b.nii.gz", "-i", str(src_dir), "--run", str(tiny_run)], "not both"),
        (["denoise", "a.nii.gz", "b.nii.gz", "--run", str(tiny_run), "--sigma", "high"], "--sigma"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.slow  # a 3-second fit (--minutes 0.05) and its setup: about 5 s
def test_cli_noisy_then_denoise_self_supervised(tmp_path, capsys):
    clean = write_nifti(tmp_path / "clean.nii.gz", head_phantom(24).astype(np.float32))
    noisy, out = tmp_path / "noisy.nii.gz", tmp_path / "den.nii.gz"
    assert main(["noisy", str(clean), str(noisy), "--fraction", "0.05", "--seed", "1"]) == 0
    assert "sigma" in capsys.readouterr().out
    argv = ["denoise", str(noisy), str(out), "--self-supervised", "--minutes", "0.05", "--objective", "dsm"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "den.denoise.json").read_text())
    assert record["self_supervised"] and record["objective"] == "dsm"


# -- failures through the command line (#16) -----------------------------------------------------------------
def _series(path, volumes):
    """A 4D NIfTI of the given 3D volumes."""
    return write_nifti(path, np.stack(volumes, axis=-1).astype(np.float32))


@pytest.mark.reliability
def test_cli_denoise_folder_exit_status_and_summary_count_the_failures(
    tmp_path, tiny_run, capsys, monkeypatch
):
    from volscore.denoise import files

    src_dir, dst_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    noisy_head(src_dir / "a_good.nii.gz", seed=1)
    whole = noisy_head(tmp_path / "whole.nii.gz", seed=2).read_bytes()
    (src_dir / "b_corrupt.nii.gz").write_bytes(whole[: len(whole) // 2])
    noisy_head(src_dir / "c_crash.nii.gz", n=20, seed=3)
    noisy_head(src_dir / "d_good.nii", seed=4)
    real = files.tweedie_denoise

    def tweedie(model, x, *args, **kwargs):  # an exception type no caller expects, on the 20^3 scan
        if x.shape[-1] == 20:
            raise ZeroDivisionError("simulated crash inside the denoiser")
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(files, "tweedie_denoise", tweedie)
    argv = ["denoise", "-i", str(src_dir), "-o", str(dst_dir), "--run", str(tiny_run)]
    argv += ["--check", "off", "--threads", "1"]
    assert main(argv) == 1  # not 0: some files failed; not 2: the command itself did its work
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"record: {dst_dir / RECORD_NAME}  (2 done, 0 skipped, 2 failed)"
    status = {line.split()[1].rsplit("/", 1)[-1]: line.split()[0] for line in lines[:-1]}
    expected = {"a_good.nii.gz": "done", "b_corrupt.nii.gz": "failed", "c_crash.nii.gz": "failed"}
    assert status == expected | {"d_good.nii": "done"}
    failed = [line for line in lines if line.lstrip().startswith("failed")]
    assert "VolumeError: " in failed[0] and "b_corrupt.nii.gz: truncated or corrupt" in failed[0]
    assert "ZeroDivisionError: simulated crash inside the denoiser" in failed[1]
    assert sorted(p.name for p in dst_dir.iterdir()) == ["a_good.nii.gz", "d_good.nii", RECORD_NAME]
    # again: the done ones are skipped, the failed ones fail again, and the status still says so
    assert main(argv) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("(0 done, 2 skipped, 2 failed)")


@pytest.mark.reliability
def test_cli_denoise_with_an_absurd_sigma_writes_nothing(tmp_path, tiny_run, capsys):
    src = noisy_head(tmp_path / "noisy.nii.gz", seed=6)
    dst, png = tmp_path / "clean.nii.gz", tmp_path / "ba.png"
    argv = ["denoise", str(src), str(dst), "--run", str(tiny_run), "--check", "off", "--png", str(png)]
    assert main([*argv, "--sigma", "1e30"]) == 2
    err = capsys.readouterr().err
    assert f"volscore denoise: error: {src}: sigma 1e+30 (given;" in err and "trained at" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noisy.nii.gz"]  # no output, record or picture
    for bad in ("0", "-1", "nan", "inf"):  # refused by name before the scan is read
        assert main([*argv, "--sigma", bad]) == 2
        assert "--sigma must be a finite number > 0" in capsys.readouterr().err


@pytest.mark.reliability
@pytest.mark.parametrize(
    "case, problem",
    [("huge-dims", "but the file holds"), ("complex64", "complex64 data"), ("offset-zero", "vox_offset 0")],
)
def test_cli_denoise_refuses_a_damaged_header_naming_the_file(tmp_path, tiny_run, capsys, case, problem):
    import struct

    src = write_nifti(tmp_path / f"{case}.nii", head_phantom(24).astype(np.float32))
    block = bytearray(src.read_bytes())
    offset, fmt, values = {
        "huge-dims": (40, "4h", (3, 30000, 30000, 30000)),
        "complex64": (70, "2h", (32, 64)),
        "offset-zero": (108, "f", (0.0,)),
    }[case]
    struct.pack_into("<" + fmt, block, offset, *values)
    src.write_bytes(bytes(block))
    assert main(["denoise", str(src), str(tmp_path / "out.nii.gz"), "--run", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert f"volscore denoise: error: {src}: " in err and problem in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.reliability
def test_cli_denoise_picks_a_volume_of_a_4d_file(tmp_path, tiny_run, capsys):
    rng = np.random.default_rng(9)
    first, last = (head_phantom(24) + 0.05 * rng.standard_normal((24,) * 3) for _ in range(2))
    src = _series(tmp_path / "series.nii.gz", [first, 0 * first, last])
    dst, png = tmp_path / "den.nii.gz", tmp_path / "ba.png"
    base = ["denoise", str(src), str(dst), "--run", str(tiny_run), "--check", "off", "--threads", "1"]
    assert main(base) == 2
    assert (
        f"{src}: 4D image with 3 volumes; choose one with volume_index (--volume-index)"
        in capsys.readouterr().err
    )
    assert main([*base, "--volume-index", "3"]) == 2
    assert "volume_index 3 out of range for 3 volumes" in capsys.readouterr().err
    assert not dst.exists()
    assert main([*base, "--volume-index", "-1", "--png", str(png)]) == 0
    out = np.asarray(nib.load(dst).dataobj)
    assert out.shape == (24, 24, 24) and png.exists()
    assert np.abs(out - last).mean() < np.abs(out - first).mean()  # the last volume was denoised
    record = json.loads((tmp_path / "den.denoise.json").read_text())
    assert record["shape"] == [24, 24, 24]
