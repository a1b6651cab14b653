"""Smoke test for scripts/bench_train_memory.py: its main() runs end to end with the --quick budget.

Only checks plumbing (every volume size trained in its own child, the sigma-estimate run, the table and
JSON); the numbers themselves are the benchmark's business, not a test's.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from script_loader import load_script


@pytest.mark.slow
def test_quick_run_reports_every_volume_size(tmp_path):
    bench = load_script("bench_train_memory")
    lines: list[str] = []
    threads = torch.get_num_threads()
    out = bench.main(["--quick", "--json", str(tmp_path / "bench.json")], log=lines.append)

    assert torch.get_num_threads() == threads  # main() restores the caller's thread count
    train = out["training"]
    assert set(train["summary"]) == {"dsm 40^3", "dsm 48^3"}
    assert all(r["peak_rss_mib"] > 0 and r["sec_per_step"] > 0 for r in train["summary"].values())
    assert all(r["finite_losses"] == 2 for runs in train["runs"].values() for r in runs)
    assert train["estimated"]["peak_rss_mib"] > 0 and math.isfinite(train["rss_ratio"])
    text = "\n".join(lines)
    assert "| volume |" in text and "sigma_max estimated" in text and "torch" in text and "at end" in text
    assert set(json.loads((tmp_path / "bench.json").read_text())) >= {"machine", "training", "seconds"}
