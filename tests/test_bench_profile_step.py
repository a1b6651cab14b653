"""Smoke test for scripts/profile_step.py: one profiled bf16 DSM step of the small 3D preset; the report
names the convolutions and their share, and the shares are fractions of the step."""

from __future__ import annotations

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_one_profiled_step_reports_the_convolutions(capsys) -> None:
    bench = load_script("profile_step")
    out = bench.main(["--steps", "1", "--threads", "1", "--top", "40", "--by-layer"])
    ops = {r["op"] for r in out["ops"]}
    assert "aten::convolution_backward" in ops and "aten::mkldnn_convolution" in ops
    assert 0 < out["share"]["convolutions"] < 1 and 0 <= out["share"]["conversions"] < 1
    layers = out["layers"]  # every convolution of the small preset, forward and backward, with its rate
    assert {r["op"] for r in layers} == {"forward", "backward"}
    assert all(r["ms_per_step"] >= 0 and len(r["weight"]) == 5 for r in layers)
    assert "convolutions" in capsys.readouterr().out
