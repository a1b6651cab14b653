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


# -- every number checked with the option's name; damaged files; interrupts (#16) -------------------------
def _status(argv) -> int:
    """The exit status of ``volscore argv``: main's return value, or argparse's exit."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.reliability
@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--steps", "0"], "--steps must be >= 1"),
        (["train", "--steps", "-2"], "--steps must be >= 1"),
        (["train", "--steps", "5", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["train", "--minutes", "nan"], "argument --minutes: must be a finite number, got nan"),
        (["train", "--minutes", "inf"], "argument --minutes: must be a finite number, got inf"),
        (["train", "--minutes", "-1"], "--minutes must be a finite number > 0"),
        (["train", "--steps", "5", "--sigma-min", "0"], "--sigma-min must be a finite number > 0"),
        (["train", "--steps", "5", "--seed", "-1"], "--seed must be an integer in [0, 2^63 - 1]"),
        (["sample", "--steps", "0"], "--steps must be >= 2"),
        (["sample", "--seed", "-1"], "--seed must be an integer"),
        (["sample", "--n", "0"], "--n, --tile-batch and --volume-batch must be >= 1"),
        (["sample", "--sigma-min", "nan"], "argument --sigma-min: must be a finite number"),
        (["noisy", "--fraction", "0"], "--fraction must be a finite number > 0"),
        (["noisy", "--fraction", "-0.1"], "--fraction must be a finite number > 0"),
        (["noisy", "--fraction", "nan"], "argument --fraction: must be a finite number"),
        (["noisy", "--seed", "-1"], "--seed must be an integer"),
        (["denoise", "--minutes", "inf", "--self-supervised"], "argument --minutes: must be a finite"),
        (["denoise", "--minutes", "0", "--self-supervised"], "--minutes must be a finite number > 0"),
        (["denoise", "--seed", "-1", "--self-supervised"], "--seed must be an integer"),
        (["denoise", "--sigma", "0", "--self-supervised"], "--sigma must be a finite number > 0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_cli_numbers_out_of_range_are_refused_naming_the_option(tmp_path, capsys, args, message):
    scan = tmp_path / "scan.nii.gz"  # never read: the numbers are checked first
    command, rest = args[0], args[1:]
    where = {
        "train": ["--data", "mnist", "--out", str(tmp_path / "run")],
        "sample": ["--run", str(tmp_path / "run"), "--out", str(tmp_path / "g.png")],
        "noisy": [str(scan), str(tmp_path / "noisy.nii.gz")],
        "denoise": [str(scan), str(tmp_path / "den.nii.gz")],
    }[command]
    assert _status([command, *where, *rest]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # no run folder, sample, noisy copy or denoised scan


def _damaged(tmp_path, name, offset, fmt, *values):
    import struct

    import nibabel as nib

    path = tmp_path / name
    data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    block = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, block, offset, *values)
    path.write_bytes(bytes(block))
    return path


@pytest.mark.reliability
def test_cli_info_and_noisy_name_a_damaged_file(tmp_path, capsys):
    huge = _damaged(tmp_path, "huge.nii", 40, "4h", 3, 30000, 30000, 30000)
    binary = _damaged(tmp_path, "binary.nii", 70, "2h", 1, 1)
    # info describes the header and says why the data are refused; a header it cannot open is an error
    assert main(["info", str(huge)]) == 0
    out = capsys.readouterr().out
    assert f"file:          {huge}" in out and "30000 x 30000 x 30000" in out, out
    assert "data:          refused: the header promises" in out and "truncated, or a damaged header" in out
    assert main(["info", str(binary)]) == 2
    assert f"volscore info: error: {binary}: 1-bit (binary) data" in capsys.readouterr().err
    for src in (huge, binary):
        assert main(["noisy", str(src), str(tmp_path / "noisy.nii.gz")]) == 2
        err = capsys.readouterr().err
        assert f"volscore noisy: error: {src}: " in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.nii", "huge.nii"]


@pytest.mark.reliability
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_cli_noisy_refuses_noise_beyond_float32_and_writes_nothing(tmp_path, capsys):
    import nibabel as nib

    src = tmp_path / "clean.nii.gz"
    clean = np.random.default_rng(2).random((8, 8, 8)).astype(np.float32) * 1000
    nib.Nifti1Image(clean, np.eye(4)).to_filename(src)
    assert main(["noisy", str(src), str(tmp_path / "noisy.nii.gz"), "--fraction", "1e36"]) == 2
    err = capsys.readouterr().err
    assert f"{src}: --fraction 1e+36 gives sigma" in err and "(nothing written)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.nii.gz"]


@pytest.mark.reliability
def test_cli_info_and_noisy_take_a_volume_of_a_4d_file(tmp_path, capsys):
    import nibabel as nib

    series = np.stack([np.full((6, 7, 8), 10.0 * (t + 1)) for t in range(3)], axis=-1).astype(np.float32)
    src = tmp_path / "series.nii.gz"
    nib.Nifti1Image(series, np.eye(4)).to_filename(src)
    assert main(["info", str(src), "--volume-index", "-1"]) == 0
    out = capsys.readouterr().out
    assert "6 x 7 x 8 x 3" in out and "volume:        -1" in out and "min 30, max 30" in out, out
    assert main(["info", str(src), "--volume-index", "3"]) == 0
    assert "refused: volume_index 3 out of range for 3 volumes" in capsys.readouterr().out
    dst = tmp_path / "noisy.nii.gz"
    assert main(["noisy", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert f"{src}: 4D image with 3 volumes; choose one with volume_index (--volume-index)" in err, err
    assert main(["noisy", str(src), str(dst), "--volume-index", "-3", "--fraction", "0.1"]) == 0
    assert "sigma 1 (0.1 x the 99.5th percentile)" in capsys.readouterr().out  # the first volume, at 10
    assert nib.load(dst).shape == (6, 7, 8)


@pytest.mark.reliability
def test_cli_train_exits_130_on_sigint_with_the_resume_command(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from volscore.checkpoint import load_checkpoint
    from volscore.train import Trainer

    real = Trainer.train_step

    def step_then_sigint(self):
        info = real(self)
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return info

    monkeypatch.setattr(Trainer, "train_step", step_then_sigint)
    run = tmp_path / "r"
    argv = [
        "train",
        "--data",
        "mnist",
        "--out",
        str(run),
        "--steps",
        "50",
        "--preset",
        "tiny",
        "--threads",
        "1",
    ]
    assert main([*argv, "--batch-size", "2", "--sigma-max", "5", "--num-sigmas", "4", "--amp", "off"]) == 130
    err = capsys.readouterr().err
    assert "volscore train: interrupted" in err and "SIGINT at step 1" in err, err
    assert f"--out {run} --resume --steps 50" in err and "Traceback" not in err
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 1
    assert not (run / "run.lock").exists()


@pytest.mark.reliability
def test_cli_sample_interrupted_exits_130_and_writes_nothing(tmp_path, tiny_mnist_run, capsys, monkeypatch):
    from volscore import generate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "sample_run_tensor", interrupted)
    assert main(["sample", "--run", str(tiny_mnist_run), "--out", str(tmp_path / "grid.png")]) == 130
    assert capsys.readouterr().err.strip() == "volscore sample: interrupted"
    assert list(tmp_path.iterdir()) == []
