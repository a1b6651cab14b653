"""scripts/bench_samplers.py: the volume part end to end on the tiny 3D run (a smoke test)."""

from __future__ import annotations

import json

from script_loader import load_script


def test_volume_rows_for_each_sampler_and_seed(tmp_path, tiny_run):
    bench = load_script("bench_samplers")
    argv = ["--volume-run", str(tiny_run), "--samplers", "heun", "dpm", "--nfe-index", "0"]
    result = bench.main([*argv, "--volume-seeds", "0", "1", "--threads", "1", "--out", str(tmp_path)])
    rows = result["volume"]
    assert [(r["sampler"], r["seed"]) for r in rows] == [("heun", 0), ("heun", 1), ("dpm", 0), ("dpm", 1)]
    assert [r["nfe"] for r in rows] == [2 * 5 - 1] * 2 + [10] * 2  # Heun 2L - 1 at L = 5, DPM L = 10
    assert all(-1 <= r["ssim"] <= 1 and r["noise_ratio"] > 0 for r in rows)
    assert json.loads((tmp_path / "bench_samplers.json").read_text())["volume"] == rows
