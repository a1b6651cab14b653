"""Tests for volscore.cli: clear errors for bad arguments, fast --help, and small end-to-end runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from volscore.cli import main


def test_help_is_fast_and_lists_commands():
    # Heavy imports live inside the commands, so --help must not import torch.
    code = "import sys; from volscore.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


@pytest.mark.reliability
def test_unknown_data_source_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "--data", "mnistt", "--out", str(tmp_path / "r"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "mnistt" in err and "error" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.reliability
def test_missing_run_directory_is_a_clear_error(tmp_path, capsys):
    rc = main(["sample", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and "no run directory" in err


def test_train_needs_a_budget(tmp_path, capsys):
    rc = main(["train", "--data", "mnist", "--out", str(tmp_path / "r")])
    assert rc == 2 and "--steps or --minutes" in capsys.readouterr().err


def test_bad_choice_is_refused_by_argparse(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "mnist", "--out", str(tmp_path / "r"), "--steps", "1", "--objective", "ism"])
    assert e.value.code == 2


def test_dry_run_prints_config(tmp_path, capsys):
    assert main(["train", "--data", "mnist", "--out", str(tmp_path / "r"), "--steps", "3", "--dry-run"]) == 0
    assert '"objective": "dsm"' in capsys.readouterr().out


def test_train_then_sample_mnist_end_to_end(tmp_path):
    run = tmp_path / "run"
    args = ["--data", "mnist", "--out", str(run), "--steps", "3", "--preset", "tiny", "--batch-size", "4"]
    assert main(["train", *args, "--sigma-max", "5", "--num-sigmas", "4"]) == 0
    grid = tmp_path / "grid.png"
    assert main(["sample", "--run", str(run), "--n", "3", "--out", str(grid), "--n-steps-each", "1"]) == 0
    x = np.load(tmp_path / "grid.npy")
    assert x.shape == (3, 1, 28, 28) and np.isfinite(x).all()
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same seed gives the same samples.
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--n",
                "3",
                "--out",
                str(tmp_path / "g2.png"),
                "--n-steps-each",
                "1",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(x, np.load(tmp_path / "g2.npy"))


def test_train_then_sample_a_volume_larger_than_the_patch(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    vol = rng.random((20, 24, 18)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "v.nii.gz")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "v.nii.gz"),
                "--out",
                str(run),
                "--steps",
                "2",
                "--preset",
                "tiny",
                "--patch-size",
                "8",
                "--batch-size",
                "2",
                "--sigma-max",
                "3",
                "--num-sigmas",
                "3",
            ]
        )
        == 0
    )
    out = tmp_path / "s.nii.gz"
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--shape",
                "12",
                "10",
                "9",
                "--out",
                str(out),
                "--n-steps-each",
                "1",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    img = nib.load(out)
    assert img.shape == (12, 10, 9) and np.allclose(img.header.get_zooms(), 2.0)
    assert np.isfinite(np.asarray(img.dataobj)).all()
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    again = tmp_path / "s2.nii.gz"
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--shape",
                "12",
                "10",
                "9",
                "--out",
                str(again),
                "--n-steps-each",
                "1",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(nib.load(again).dataobj))


@pytest.mark.reliability
@pytest.mark.parametrize("case", ["2d", "nan", "empty-glob", "missing"])
def test_bad_training_volumes_are_clear_errors(tmp_path, capsys, case):
    import nibabel as nib

    path = tmp_path / "bad.nii.gz"
    if case == "2d":
        nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), path)
    elif case == "nan":
        vol = np.ones((8, 8, 8), np.float32)
        vol[1, 2, 3] = np.nan
        nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    spec = str(tmp_path / "*.nii.gz") if case == "empty-glob" else str(path)
    rc = main(["train", "--data", spec, "--out", str(tmp_path / "r"), "--steps", "1", "--patch-size", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and ("bad.nii.gz" in err or "*.nii.gz" in err), err
    assert not (tmp_path / "r").exists()


def test_info_describes_the_bundled_template(capsys):
    from volscore.data import data_dir

    assert main(["info", str(data_dir() / "mni152_2009a_sym_t1_1mm.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert "197" in out and "233" in out


def test_sample_shapes_writes_a_folder_of_nifti_and_a_sheet(tmp_path, capsys, tiny_shapes_run):
    import nibabel as nib

    run = tiny_shapes_run  # conftest: whole 16^3 shapes, two training steps
    out = tmp_path / "shapes"
    assert main(["sample", "--run", str(run), "--n", "3", "--out", str(out), "--n-steps-each", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["samples.npy", "shape_000.nii.gz", "shape_001.nii.gz", "shape_002.nii.gz", "shapes.png"]
    assert nib.load(out / "shape_001.nii.gz").shape == (16, 16, 16)
    samples = np.load(out / "samples.npy")
    assert samples.shape == (3, 1, 16, 16, 16) and samples.min() >= 0 and samples.max() <= 1
    assert main(["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "folder" in capsys.readouterr().err
    # --mesh without scikit-image: a clear error before any sampling, nothing written.
    with pytest.MonkeyPatch.context() as m:
        m.setitem(sys.modules, "skimage", None)
        m.setitem(sys.modules, "skimage.measure", None)
        assert main(["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "m"), "--mesh"]) == 2
    assert "pip install 'volscore[mesh]'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow  # trains on 1,000 shapes at 20^3 and samples them stitched twice: 15-45 s
def test_patch_trained_shapes_sample_stitched_whole_shapes(tmp_path, capsys):
    # shapes at 20^3 trained on 12^3 patches with coordinates (PatchDDM), sampled by stitching.
    run, out = tmp_path / "run", tmp_path / "shapes"
    args = ["train", "--data", "shapes:primitives@20", "--patch-size", "12", "--preset", "tiny"]
    args += ["--steps", "2", "--sigma-max", "2", "--num-sigmas", "4", "--amp", "off"]
    assert main([*args, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model_args"]["net"]["coord_channels"] is True
    assert config["data"]["patch_size"] == 12 and config["data"]["size"] == 20
    sample = ["sample", "--run", str(run), "--n", "2", "--out", str(out), "--n-steps-each", "1"]
    assert main(sample) == 0
    samples = np.load(out / "samples.npy")
    assert samples.shape == (2, 1, 20, 20, 20) and 0 <= samples.min() and samples.max() <= 1
    assert not np.array_equal(samples[0], samples[1])  # one seed per shape
    assert (out / "shape_001.nii.gz").exists() and (out / "shapes.png").exists()
    pytest.importorskip("skimage", reason="mesh export is the optional 'mesh' extra")
    meshed = tmp_path / "meshed"
    capsys.readouterr()
    assert main([*sample[:-3], str(meshed), "--n-steps-each", "1", "--mesh"]) == 0
    made = {p.stem for p in meshed.glob("*.obj")}
    # Two shapes from a 2-step model: a mesh each, or a note for a shape without a surface.
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("no surface")]
    noted = set(note[0].split(": ")[1].split(", ")) if note else set()
    assert made | noted == {"shape_000", "shape_001"} and not made & noted


@pytest.mark.reliability
def test_sample_refuses_an_existing_output_without_force(tmp_path, tiny_mnist_run, capsys):
    (tmp_path / "grid.npy").write_bytes(b"precious")
    argv = ["sample", "--run", str(tiny_mnist_run), "--out", str(tmp_path / "grid.png"), "--steps", "2"]
    assert main(argv) == 2
    assert "grid.npy: exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "grid.npy").read_bytes() == b"precious" and not (tmp_path / "grid.png").exists()
    assert main([*argv, "--n", "2", "--force"]) == 0
    assert np.load(tmp_path / "grid.npy").shape == (2, 1, 28, 28)
    assert "2 sample(s) (28, 28)" in capsys.readouterr().out
