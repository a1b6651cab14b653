"""scripts/bench_denoise_curves.py end to end on ``tiny_run`` (``--quick``: the hold-out's central 40^3 block,
no BM4D). Plumbing, plus the one figure that must hold whatever the model: an ensemble of one is the plain
Tweedie pass, so K = 1 (at the default overlap) and the default overlap at K = 1 give the same PSNR."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_curves_of_k_and_overlap(tiny_run: Path, tmp_path: Path, capsys) -> None:
    bench = load_script("bench_denoise_curves")
    png = tmp_path / "curves.png"
    result = bench.main(
        ["--run", str(tiny_run), "--ensemble", "1", "2", "--overlaps", "0.25", "0.5", "--no-bm4d", "--quick"]
        + ["--threads", "1", "--png", str(png), "--json", str(tmp_path / "r.json")]
    )
    assert [e["ensemble"] for e in result["ensemble"]] == [1, 2]
    assert [e["overlap"] for e in result["overlap"]] == [0.25, 0.5] and result["ensemble_overlap"] == 0.5
    assert result["ensemble"][0]["psnr"] == pytest.approx(result["overlap"][1]["psnr"], abs=1e-3)
    assert all(e["seconds"] > 0 for e in result["ensemble"] + result["overlap"])
    assert png.stat().st_size > 1000 and "bm4d" not in result
    assert "| K = 2 | 0.5 |" in capsys.readouterr().out
