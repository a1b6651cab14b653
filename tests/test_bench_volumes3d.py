"""Smoke test for scripts/bench_volumes3d.py, which runs the four 3D experiments (bench_train_memory,
bench_stitch, bench_seams, bench_objectives3d; each has its own smoke test): its main() runs end to end
with the --quick budget and keeps the combined report's keys, tables and pictures.

Only checks plumbing (child processes report, every measurement and table is there, pictures and JSON are
written); the numbers themselves are the benchmark's business, not a test's.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from script_loader import load_script


def test_smooth_volume_is_smooth_and_seeded():
    bench = load_script("bench_volumes3d")
    v = bench.smooth_volume(40, seed=3)
    assert v.shape == (40, 40, 40) and v.dtype.name == "float32"
    assert (v == bench.smooth_volume(40, seed=3)).all()
    # Neighbours differ by a small fraction of the spread: smooth at the patch scale.
    assert abs(v[1:] - v[:-1]).mean() < 0.2 * v.std()


@pytest.mark.slow
def test_quick_run_reports_every_measurement(tmp_path):
    bench = load_script("bench_volumes3d")
    lines: list[str] = []
    threads = torch.get_num_threads()
    out = bench.main(
        ["--quick", "--json", str(tmp_path / "bench.json"), "--results-dir", str(tmp_path)], log=lines.append
    )

    assert torch.get_num_threads() == threads  # main() restores the caller's thread count
    train = out["training"]
    assert set(train["summary"]) == {"dsm 40^3", "dsm 48^3", "ssm-vr 40^3", "ssm-fd 40^3"}
    assert all(r["peak_rss_mib"] > 0 and r["sec_per_step"] > 0 for r in train["summary"].values())
    assert train["estimated"]["peak_rss_mib"] > 0 and math.isfinite(train["rss_ratio"])
    assert set(out["sampling"]) == {*bench.MODES, bench.MALLOC_ROW}
    assert all(r["finite"] and r["ratio"] > 0 for r in out["sampling"].values())
    assert out["sampling"]["blend"]["voxel_factor"] > 1  # overlapping windows evaluate voxels more than once
    seams = out["seams"]
    assert set(seams["samples"]) == {*bench.MODES, bench.WHOLE}
    assert all(math.isfinite(r["seam"]) for r in seams["samples"].values())
    assert (tmp_path / "stitch_modes.png").stat().st_size > 0
    assert (tmp_path / "stitch_modes_tweedie.png").stat().st_size > 0

    text = "\n".join(lines)
    for head in ("| volume |", "| objective |", "| stitching |", "| one denoiser pass", "torch", "at end"):
        assert head in text
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved) >= {"machine", "training", "sampling", "seams"}
    assert saved["machine"]["loadavg_end"] is None or saved["machine"]["loadavg_end"] >= 0


def test_old_flags_still_parse():
    """The README's reproduce-commands: the flags of the single script before the split."""
    bench = load_script("bench_volumes3d")
    args = bench.parse_args(["--threads", "1", "--skip-training", "--skip-seams", "--sample-modes", "shift",
                             "--no-malloc-row", "--sample-rounds", "2"])  # fmt: skip
    assert args.skip_training and args.skip_seams and args.sample_modes == ["shift"] and not args.malloc_row
    args = bench.parse_args(["--quick", "--run", "runs/demo", "--tile-batch", "4", "--patch", "16"])
    assert (args.run, args.tile_batch, args.patch, args.volume_sizes) == ("runs/demo", 4, 16, [40, 48])
