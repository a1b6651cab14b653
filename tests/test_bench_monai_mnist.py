"""Smoke test for scripts/bench_monai_mnist.py: both pipelines train for seconds, each sampler row is drawn
and scored, the table prints. The numbers are the benchmark's business, not a test's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_quick_bench_reports_every_row(tmp_path: Path, capsys) -> None:
    pytest.importorskip("einops")  # MONAI's DiffusionModelUNet needs it: the bench extra
    bench = load_script("bench_monai_mnist")
    out = bench.main(["--minutes", "0.03", "--n", "8", "--out", str(tmp_path), "--threads", "1"])
    assert [r["nfe"] for r in out["rows"]] == [79, 49, 50, 1000]
    assert all(math.isfinite(r["fd"]) and 0 <= r["confident_fraction"] <= 1 for r in out["rows"])
    assert out["trained"][0]["step"] >= 1 and out["trained"][1]["steps"] >= 1
    assert "DDIM 50 steps" in capsys.readouterr().out
