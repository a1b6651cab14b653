"""Tests for volscore/plots.py.

Each function writes a valid PNG (signature and IHDR size read back), atomically: no temp file is left
behind, also when writing fails, and an existing file is replaced whole.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from volscore import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def only_file(folder: Path) -> Path:
    files = list(folder.iterdir())
    assert len(files) == 1, files  # no temp file left next to the PNG
    return files[0]


def test_save_image_grid(tmp_path: Path) -> None:
    images = torch.rand(10, 1, 28, 28)
    out = plots.save_image_grid(images, tmp_path / "grid.png", nrow=4)
    assert only_file(tmp_path) == out == tmp_path / "grid.png"
    # 4 columns x 3 rows of 28 px with 2 px padding, pixels one to one.
    assert png_size(out) == (4 * 30 + 2, 3 * 30 + 2)
    plots.save_image_grid(np.random.rand(3, 5, 7) * 3 - 1, out)  # (N, H, W), out of range: clipped
    assert png_size(out) == (3 * (7 + 2) + 2, 5 + 4)
    with pytest.raises(ValueError):
        plots.save_image_grid(torch.rand(2, 3, 8, 8), tmp_path / "rgb.png")


def test_save_loss_curve(tmp_path: Path) -> None:
    steps = np.arange(1, 501)
    losses = np.exp(-steps / 100) + 0.1 * np.random.default_rng(0).normal(size=500) - 0.2
    losses[7] = np.nan  # a diverged step must not break the plot
    out = plots.save_loss_curve(steps, torch.from_numpy(losses), tmp_path / "sub" / "loss.png", log_x=True)
    width, height = png_size(out)
    assert 300 < width < 2000 and 200 < height < 2000
    assert only_file(out.parent) == out
    plots.save_loss_curve([0, 1, 2], [1.0, 0.5, 0.2], out, smooth=10, ylabel="DSM loss")  # short run
    assert png_size(out)[0] > 300


def test_save_curves(tmp_path: Path) -> None:
    series = {"K flips": ([10.0, 20.0, 40.0], [35.3, 35.4, 35.5]), "overlap": ([5.0, 10.0], [35.2, 35.3])}
    out = plots.save_curves(series, tmp_path / "c.png", "seconds", "PSNR (dB)", log_x=True,
                            references={"BM4D": 37.06}, title="hold-out")  # fmt: skip
    width, height = png_size(out)
    assert 300 < width < 2000 and 200 < height < 2000 and only_file(tmp_path) == out
    # the reference line is drawn: the same curves without it give another picture
    bare = plots.save_curves(series, tmp_path / "b.png", "seconds", "PSNR (dB)", log_x=True, title="hold-out")
    assert bare.read_bytes() != out.read_bytes()
    with pytest.raises(ValueError, match="'bad': x and y differ"):
        plots.save_curves({"bad": ([1.0, 2.0], [1.0])}, tmp_path / "bad.png", "x", "y")
    assert not (tmp_path / "bad.png").exists()


def test_save_montage(tmp_path: Path) -> None:
    vol = torch.rand(9, 12, 15)
    one = plots.save_montage(vol, tmp_path / "one.png")
    three = plots.save_montage(
        [vol, vol.numpy() * 2, vol + 1], tmp_path / "three.png", titles=["clean", "scaled", "shifted"]
    )
    (w1, h1), (_, h3) = png_size(one), png_size(three)
    assert w1 > 200 and h3 > 2 * h1  # one row per volume
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "three.png"]
    with pytest.raises(ValueError):
        plots.save_montage([vol, vol], tmp_path / "bad.png", titles=["only one"])


def test_save_slices(tmp_path: Path) -> None:
    clean = np.random.rand(10, 11, 12).astype(np.float32)
    named = {"noisy": clean + 0.1, "denoised": torch.from_numpy(clean), "clean": clean}
    out = plots.save_slices(named, tmp_path / "cmp.png", axis=2, index=3)
    width, height = png_size(out)
    assert width > 2 * height  # three panels side by side
    assert only_file(tmp_path) == out
    with pytest.raises(ValueError):
        plots.save_slices(named, tmp_path / "bad.png", axis=0, index=10)


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    out = plots.save_image_grid(torch.rand(2, 1, 8, 8), tmp_path / "grid.png")
    before = out.read_bytes()

    def broken_imsave(*args, **kwargs):
        raise OSError("disk full")

    import matplotlib.image

    monkeypatch.setattr(matplotlib.image, "imsave", broken_imsave)
    with pytest.raises(OSError, match="disk full"):
        plots.save_image_grid(torch.rand(4, 1, 8, 8), out)
    assert only_file(tmp_path) == out
    assert out.read_bytes() == before


def test_import_is_light() -> None:
    # volscore.plots must not pull matplotlib in at import time.
    import subprocess

    code = "import sys, volscore.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip() == "False"


def test_render_depth_sees_the_near_surface():
    occ = np.zeros((10, 6, 6), np.float32)
    occ[2:8, 1:3, 1:3] = 1.0  # a bar starting at depth 2
    occ[5:8, 4:5, 4:5] = 1.0  # a block starting deeper, at depth 5
    img = plots.render_depth(occ)
    assert img[0, 0] == 0.0 and img[1, 1] == pytest.approx(1 - 0.85 * 2 / 9)
    assert img[4, 4] == pytest.approx(1 - 0.85 * 5 / 9) and img[1, 1] > img[4, 4]
