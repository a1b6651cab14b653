"""Smoke test for scripts/bench_sampling.py: main() runs end to end with ``--quick`` on the seconds-old
``tiny_run`` (a 20^3 volume, two tile batches, one round; the MNIST part is skipped in quick mode). Only the
plumbing is checked (every throughput row in both dtypes, the ratios, the bf16 and fp32 quality rows, the
JSON); the numbers are the benchmark's business."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_quick_bench_reports_every_row(tiny_run: Path, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "bench.json"
    out = load_script("bench_sampling").main(
        ["--volume-run", str(tiny_run), "--quick", "--threads", "1", "--json", str(raw)]
    )
    rows = {r["row"]: r for r in out["throughput"]}
    for dtype in ("fp32", "bf16"):
        expected = ["plain batched pass", "stitched, tile_batch 2", "stitched, tile_batch 8",
                    "stitched, 2 volumes per call, tile_batch 8"]  # fmt: skip
        assert {f"{dtype} {name}" for name in expected} <= set(rows)
    assert rows["fp32 plain batched pass"]["vs_fp32_plain"] == 1.0
    assert all(r["s_per_megavoxel_per_nfe"] > 0 for r in rows.values())
    volume = out["quality"]["volume"]
    assert [r["dtype"] for r in volume] == ["fp32", "fp32", "bf16"] and all(r["finite"] for r in volume)
    assert out["quality"]["mnist"] == []
    assert json.loads(raw.read_text())["shape"] == [20, 20, 20]
    assert "s / megavoxel / NFE" in capsys.readouterr().out
