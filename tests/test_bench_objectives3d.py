"""Smoke test for scripts/bench_objectives3d.py: its main() runs end to end with the --quick budget.

Only checks plumbing (every objective trained and timed in its own child, the table and JSON); the numbers
themselves are the benchmark's business, not a test's.
"""

from __future__ import annotations

import json

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_quick_run_reports_every_objective(tmp_path):
    bench = load_script("bench_objectives3d")
    lines: list[str] = []
    out = bench.main(["--quick", "--json", str(tmp_path / "bench.json")], log=lines.append)

    summary = out["objectives"]["summary"]
    assert set(summary) == {f"{obj} 40^3" for obj in bench.OBJECTIVES}
    assert all(r["peak_rss_mib"] > 0 and r["sec_per_step"] > 0 for r in summary.values())
    text = "\n".join(lines)
    assert "| objective |" in text and "| SSM-VR |" in text and "torch" in text
    assert set(json.loads((tmp_path / "bench.json").read_text())) >= {"machine", "objectives"}
