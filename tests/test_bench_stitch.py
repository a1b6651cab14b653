"""Smoke test for scripts/bench_stitch.py: its main() runs end to end with the --quick budget.

Only checks plumbing (one child per stitching, the call and voxel counts, the table and JSON); the numbers
themselves are the benchmark's business, not a test's.
"""

from __future__ import annotations

import json

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_quick_run_reports_each_stitching(tmp_path):
    bench = load_script("bench_stitch")
    lines: list[str] = []
    argv = [
        "--quick",
        "--sample-modes",
        "fixed",
        "blend",
        "--no-malloc-row",
        "--json",
        str(tmp_path / "b.json"),
    ]
    out = bench.main(argv, log=lines.append)

    sampling = out["sampling"]
    assert set(sampling) == {"fixed", "blend"}
    assert all(r["finite"] and r["ratio"] > 0 and r["peak_rss_mib"] > 0 for r in sampling.values())
    assert sampling["fixed"]["voxel_factor"] == 1.0  # a fixed grid evaluates each voxel once
    assert sampling["blend"]["voxel_factor"] > 1  # overlapping windows evaluate voxels more than once
    text = "\n".join(lines)
    assert "| stitching |" in text and "torch" in text
    assert set(json.loads((tmp_path / "b.json").read_text())) >= {"machine", "sampling"}
