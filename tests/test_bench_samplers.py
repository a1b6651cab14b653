"""scripts/bench_samplers.py: the volume part end to end on the tiny 3D run (a smoke test)."""

from __future__ import annotations

import json

import pytest
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
    # one PNG curve per volume metric (no MNIST part was measured, so none of its curves)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["volume_noise.png", "volume_ssim.png"]


def test_sigma_min_sets_every_settings_last_level(tmp_path, tiny_run, monkeypatch):
    bench = load_script("bench_samplers")
    seen = []

    def quality(run, settings, seed):
        seen.append(settings)
        return {"sampler": settings.sampler, "levels": settings.steps, "nfe": 1, "seed": seed, "seconds": 0.0,
                "ssim": 0.0, "noise_ratio": 1.0, "histogram_distance": 0.0}  # fmt: skip

    monkeypatch.setattr(bench, "volume_quality", quality)
    argv = ["--volume-run", str(tiny_run), "--samplers", "dpm", "heun", "--nfe-index", "0", "--threads", "1"]
    bench.main([*argv, "--sigma-min", "0.06", "--out", str(tmp_path)])
    assert [s.sigma_min for s in seen] == [0.06, 0.06]


def test_curves_average_seeds_per_sampler_in_nfe_order():
    bench = load_script("bench_samplers")
    rows = [
        {"sampler": "dpm", "nfe": 35, "ssim": 0.5},
        {"sampler": "dpm", "nfe": 18, "ssim": 0.3},
        {"sampler": "dpm", "nfe": 35, "ssim": 0.6},
        {"sampler": "heun", "nfe": 35, "ssim": 0.4},
    ]
    curves = bench.curves(rows, "ssim", scale=10.0)
    assert list(curves) == ["dpm", "heun"]
    assert curves["dpm"][0] == [18, 35]
    assert curves["dpm"][1] == pytest.approx([3.0, 5.5])  # the mean of the two seeds at 35
    assert curves["heun"][0] == [35] and curves["heun"][1] == pytest.approx([4.0])


def test_shapes_rows_scored_against_held_out_shapes(tmp_path, tiny_shapes_run):
    bench = load_script("bench_samplers")
    argv = ["--shapes-run", str(tiny_shapes_run), "--shapes-n", "4", "--samplers", "dpm", "edm"]
    argv += ["--nfe-index", "0", "--threads", "1", "--amp", "bf16"]
    result = bench.main([*argv, "--out", str(tmp_path)])
    rows = result["shapes"]
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("dpm", 10), ("edm", 2 * 5 - 1)]
    for r in rows:
        assert 0 <= r["one_nna"] <= 1 and 0 <= r["coverage"] <= 1
        assert 0 <= r["connected_fraction"] <= 1 and 0 <= r["empty_fraction"] <= 1
    assert json.loads((tmp_path / "bench_samplers.json").read_text())["shapes"] == rows
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["shapes_1nna.png", "shapes_connected.png", "shapes_dpm_10nfe.png", "shapes_edm_9nfe.png"]


def test_shapes_run_must_be_a_shapes_run(tmp_path, tiny_mnist_run):
    bench = load_script("bench_samplers")
    with pytest.raises(ValueError, match="not a run of whole shapes"):
        bench.main(["--shapes-run", str(tiny_mnist_run), "--samplers", "dpm", "--nfe-index", "0",
                    "--threads", "1", "--out", str(tmp_path)])  # fmt: skip
