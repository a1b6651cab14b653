"""scripts/bench_selfsup_minutes.py end to end on seconds-long fits (``--quick``: the hold-out's central
40^3 block), fine-tuned from ``tiny_run``. Only the plumbing is checked; the figures are the benchmark's."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_one_row_per_fit_budget(tiny_run: Path, tmp_path: Path, capsys) -> None:
    bench = load_script("bench_selfsup_minutes")
    result = bench.main(
        ["--minutes", "0.02", "0.04", "--init", str(tiny_run), "--quick", "--threads", "1", "--no-bm4d"]
        + ["--json", str(tmp_path / "r.json")]
    )
    rows = result["cases"]["holdout"]["rows"]
    assert [r["fit"] for r in rows] == [
        "none (noisy input)", f"none ({tiny_run}, Tweedie)", "fine-tuned", "fine-tuned",
    ]  # fmt: skip
    assert [r.get("minutes") for r in rows[1:]] == [0.0, 0.02, 0.04]
    assert all(r["psnr"] == r["psnr"] for r in rows)  # finite
    assert all(r["fit_steps"] >= 1 and isinstance(r["flagged"], bool) for r in rows[2:])
    assert (tmp_path / "r.json").exists() and "| fine-tuned | 0.04 |" in capsys.readouterr().out
