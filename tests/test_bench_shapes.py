"""Smoke test for scripts/bench_shapes.py: main() trains, samples and scores both kinds end to end on a
seconds-long budget. Only the plumbing is checked (every metric, sheet and the JSON are there); the
numbers are the benchmark's business, not a test's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script


@pytest.mark.slow
def test_tiny_run_reports_every_metric(tmp_path: Path) -> None:
    bench = load_script("bench_shapes")
    results = tmp_path / "results"
    # Split in two invocations, as a reader reruns one kind: the JSON keeps the other kind's figures.
    common = ["--minutes", "0.05", "--preset", "tiny", "--n", "4", "--num-sigmas", "3", "--n-steps-each", "1"]
    common += ["--out", str(tmp_path / "runs"), "--results", str(results), "--classifier-steps", "3"]
    common += ["--threads", "1"]  # the children's threads without --parallel (with it: one each anyway)
    bench.main(["--kinds", "primitives", "--objectives", "dsm", *common])
    report = bench.main(["--kinds", "digits", "--objectives", "dsm", "ssm-vr", "--parallel", *common])
    assert set(report["kinds"]) == {"primitives", "digits"}
    saved = json.loads((results / "bench_shapes.json").read_text())
    assert saved["kinds"].keys() == report["kinds"].keys()
    for kind, objectives in (("primitives", ["dsm"]), ("digits", ["dsm", "ssm-vr"])):
        assert (results / f"shapes_{kind}_reference.png").exists()
        for obj in objectives:
            m = report["kinds"][kind][obj]
            assert m["n"] == 4 and m["steps"] >= 1
            for key in ("one_nna", "coverage", "mmd", "floor_one_nna", "floor_coverage", "floor_mmd"):
                assert 0.0 <= m[key] <= 1.0, key
            assert 0.0 <= m["connected_fraction"] <= 1.0
            assert (results / f"shapes_{kind}_{obj}.png").exists()
            assert (tmp_path / "runs" / f"{kind}_{obj}_samples" / "shape_003.nii.gz").exists()
    digits = report["kinds"]["digits"]
    assert 0.0 <= digits["classifier_reference_accuracy"] <= 1.0
    assert len(digits["dsm"]["class_histogram"]) == 10
