"""Smoke test for scripts/bench_objectives3d.py: its main() runs end to end with the --quick budget.

Only checks plumbing (every objective trained and timed in its own child, the table and JSON); the numbers
themselves are the benchmark's business, not a test's.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_objectives3d.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_objectives3d", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_reports_every_objective(tmp_path):
    bench = _load()
    lines: list[str] = []
    out = bench.main(["--quick", "--json", str(tmp_path / "bench.json")], log=lines.append)

    summary = out["objectives"]["summary"]
    assert set(summary) == {f"{obj} 40^3" for obj in bench.OBJECTIVES}
    assert all(r["peak_rss_mib"] > 0 and r["sec_per_step"] > 0 for r in summary.values())
    text = "\n".join(lines)
    assert "| objective |" in text and "| SSM-VR |" in text and "torch" in text
    assert set(json.loads((tmp_path / "bench.json").read_text())) >= {"machine", "objectives"}
