"""Smoke test for scripts/bench_restore.py: main() runs end to end on the seconds-old ``tiny_run`` with
``--quick`` (central 40^3 blocks, 2 levels) and 2 draws. Only the plumbing is checked (every case, factor,
mask and method row, the calibration rows, the pictures, the JSON, the tables); the numbers are the
benchmark's business."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_quick_bench_reports_every_row(tiny_run: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("skimage")
    bench = load_script("bench_restore")
    results, raw = tmp_path / "results", tmp_path / "bench.json"
    report = bench.main(
        ["--run", str(tiny_run), "--quick", "--draws", "2", "--threads", "1", "--results", str(results)]
        + ["--json", str(raw)]
    )
    holdout = report["cases"]["holdout"]
    assert set(holdout["superres"]) == {"2", "4", "5"}
    assert set(holdout["superres"]["4"]) == {
        "trilinear",
        "cubic B-spline",
        "volscore",
        "volscore, mean of 2 draws",
    }
    assert set(holdout["inpaint"]) >= {"boxes8", "blobs"}
    for rows in [*holdout["superres"].values(), *(i["rows"] for i in holdout["inpaint"].values())]:
        for row in rows.values():
            assert math.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1 and row["seconds"] >= 0
    calibration = holdout["superres"]["4"]["volscore, mean of 2 draws"]["calibration"]
    assert 0 <= calibration["within_2_predicted"] <= 1
    assert "anatomical" in report["cases"]
    assert (results / "restore_superres.png").stat().st_size > 1000
    assert json.loads(raw.read_text())["cases"]["holdout"]["shape"] == [40, 40, 40]
    out = capsys.readouterr().out
    assert "vs B-spline" in out and "vs biharmonic" in out and "rms error / predicted" in out
