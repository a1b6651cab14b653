"""scripts/bench_denoiser_nets.py: the variant syntax, and main() end to end on a few seconds of training per
variant (``--quick`` central 40^3 blocks, no BM4D). Only the plumbing is checked; the figures are the
benchmark's business."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from script_loader import load_script


def test_parse_variant() -> None:
    bench = load_script("bench_denoiser_nets")
    assert bench.parse_variant("deep-48:deep:48:2") == {
        "name": "deep-48", "preset": "deep", "patch_size": 48, "batch_size": 2,
    }  # fmt: skip
    for bad in ("deep:48:2", "a:deep:48:x", "a:b:c:d:e"):
        with pytest.raises(argparse.ArgumentTypeError, match="variant"):
            bench.parse_variant(bad)


@pytest.mark.slow
def test_trains_and_scores_every_variant(tiny_run: Path, tmp_path: Path, capsys) -> None:
    bench = load_script("bench_denoiser_nets")
    result = bench.main(
        ["--variants", "t16:tiny:16:1", "--minutes", "0.05", "--baseline", str(tiny_run), "--no-bm4d"]
        + ["--quick", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]
    )
    assert list(result["models"]) == ["baseline", "t16"]
    variant = result["models"]["t16"]
    assert (variant["preset"], variant["patch_size"], variant["batch_size"]) == ("tiny", 16, 1)
    assert variant["steps"] >= 1 and (tmp_path / "runs" / "t16" / "checkpoint.pt").exists()
    for model in result["models"].values():
        levels = model["figures"]["holdout"]["levels"]
        assert list(levels) == ["gaussian 0.05", "gaussian 0.10"]
        assert all(v["psnr_denoised"] == v["psnr_denoised"] for v in levels.values())  # finite, not NaN
    assert "bm4d" not in result and (tmp_path / "r.json").exists()
    printed = capsys.readouterr().out
    assert "| t16 | tiny | 16^3 x 1 |" in printed and "| noisy input |" in printed
