"""Smoke test for scripts/bench_denoise.py: main() and ``denoiser_figures`` run end to end on a seconds-old
tiny model (``tiny_run``), with ``--quick`` (central 40^3 blocks, K = 2, 2 refined levels) and without the
slow competitors. Only the plumbing is checked (every case, setting and method row, the self-check record, the
tables, the pictures, the JSON); the numbers are the benchmark's business, not a test's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from script_loader import load_script


def _cases() -> list[str]:
    try:
        import dipy  # noqa: F401
    except ImportError:  # the bench skips dipy's scan with a note
        return ["holdout", "anatomical"]
    return ["holdout", "anatomical", "aniso"]


@pytest.mark.slow
def test_quick_bench_reports_every_case(tiny_run: Path, tmp_path: Path, capsys) -> None:
    bench = load_script("bench_denoise")
    results = tmp_path / "results"
    report = bench.main(
        ["--run", str(tiny_run), "--out", str(tmp_path / "out"), "--results", str(results), "--quick"]
        + ["--skip", "bm4d", "nlmeans", "--threads", "1"]
    )
    assert report["run"] == str(tiny_run) and report["run_steps"] == 2
    assert list(report["cases"]) == _cases()
    volscore = {
        "volscore Tweedie",
        "volscore ensemble K=2",
        "volscore Tweedie, check shrink",
        "volscore refined (2)",
    }
    for name, case in report["cases"].items():
        expected = ["gaussian 0.05", "gaussian 0.10"] + (["rician 0.05"] if name == "holdout" else [])
        assert list(case["settings"]) == expected
        assert len(case["shape"]) == 3 and case["reference_level"] > 0
        for setting in case["settings"].values():
            methods = setting["methods"]
            assert {"noisy input", "gaussian filter (best)"} | volscore <= set(methods)
            # tiny_run was trained at 1.5 x 1.5 x 2 mm: "spacing auto" resamples every case (one extra row)
            extra = set(methods) - volscore - {"noisy input", "gaussian filter (best)"}
            assert len(extra) == 1 and extra.pop().startswith("volscore Tweedie, spacing auto")
            for method, row in methods.items():
                assert row["psnr"] == row["psnr"] and 0 <= row["ssim"] <= 1 and row["seconds"] >= 0
                if method.startswith("volscore"):
                    assert isinstance(row["check"]["flagged"], bool)
            if name == "holdout":  # the oracle filter beats the input on the smooth 1 mm template
                assert methods["gaussian filter (best)"]["psnr"] > methods["noisy input"]["psnr"]
            # check shrink = Tweedie unless the self-check fired, then the output is mixed with the input
            tweedie, shrunk = methods["volscore Tweedie"], methods["volscore Tweedie, check shrink"]
            assert tweedie["check"]["flagged"] == shrunk["check"]["flagged"]
            if shrunk["check"]["flagged"]:
                assert shrunk["check"]["action"] == "shrink"
            else:
                assert shrunk["psnr"] == pytest.approx(tweedie["psnr"], abs=1e-6)
    written = json.loads((results / "bench_denoise.json").read_text())
    assert written["run_steps"] == 2 and sorted(written["cases"]) == sorted(_cases())  # keys sorted
    assert sorted(p.name for p in results.glob("*.png")) == sorted(
        f"denoise_{case}_{setting}.png"
        for case in _cases()
        for setting in ["gaussian_05", "gaussian_10"] + (["rician_05"] if case == "holdout" else [])
    )
    printed = capsys.readouterr().out
    assert printed.count("vs BM4D (dB)") == sum(len(c["settings"]) for c in report["cases"].values())
    assert "| volscore Tweedie |" in printed


@pytest.mark.slow
def test_denoiser_figures_per_case_and_level(tiny_run: Path) -> None:
    figures = load_script("bench_denoise").denoiser_figures(str(tiny_run), seed=0, quick=True)
    assert list(figures) == _cases()
    for case in figures.values():
        assert list(case["levels"]) == ["gaussian 0.05", "gaussian 0.10"]
        for level, row in case["levels"].items():
            fraction = float(level.split()[1])
            # the noisy input's PSNR with data range R is 20 log10(1 / fraction), up to the noise's draw
            assert row["psnr_noisy"] == pytest.approx(-20 * math.log10(fraction), abs=0.3)
            assert isinstance(row["check_flagged"], bool)
            assert row["seconds"] >= 0 and 0 <= row["ssim"] <= 1 and row["psnr_denoised"] > 0
    json.dumps(figures)  # the model card stores them as they are
