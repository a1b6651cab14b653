"""Smoke test for scripts/bench_objectives.py: its main() runs end to end with the --quick budget.

Only checks plumbing (every objective trained and timed, finite numbers, tables and JSON written);
the numbers themselves are the benchmark's business, not a test's.
"""

from __future__ import annotations

import json
import math

import torch
from script_loader import load_script


def test_quick_run_reports_every_objective(tmp_path):
    bench = load_script("bench_objectives")
    lines: list[str] = []
    threads = torch.get_num_threads()
    out = bench.main(["--quick", "--json", str(tmp_path / "bench.json")], log=lines.append)

    assert torch.get_num_threads() == threads  # main() restores the caller's thread count
    for per_density in out["quality"].values():
        assert set(per_density) == set(bench.QUALITY_OBJECTIVES)
        assert all(math.isfinite(r["rel_fisher"]) and r["rel_fisher"] >= 0 for r in per_density.values())
    for row in out["cost"].values():
        assert set(row) == set(bench.COST_OBJECTIVES)
        assert all(r["ms"] > 0 for r in row.values())

    text = "\n".join(lines)
    assert "| objective | target density |" in text and "| ISM / SSM |" in text and "torch" in text
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved) >= {"machine", "quality", "cost"}
