"""Smoke test for scripts/bench_denoise.py: main() runs end to end on a seconds-old tiny model, without the
slow competitors. Only the plumbing is checked (every setting and method row, the pictures, the JSON);
the numbers are the benchmark's business, not a test's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from volscore.config import TrainConfig
from volscore.recipes import train_or_resume

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_denoise.py"


@pytest.mark.slow
def test_tiny_run_reports_every_setting(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(data=["mni152"], out=str(run), preset="tiny", patch_size=16, steps=2, sigma_min=0.02,
                      sigma_max=0.2)  # fmt: skip
    train_or_resume(cfg)
    spec = importlib.util.spec_from_file_location("bench_denoise", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "results"
    report = bench.main(
        ["--run", str(run), "--out", str(tmp_path / "out"), "--results", str(results), "--steps", "2"]
        + ["--skip", "bm4d", "nlmeans", "selfsup", "--threads", "1"]
    )
    assert list(report["settings"]) == ["gaussian 0.05", "gaussian 0.10", "rician 0.05"]
    for setting in report["settings"].values():
        methods = setting["methods"]
        assert set(methods) == {"noisy", "gaussian filter (best)", "volscore Tweedie", "volscore refined (2)"}
        # The oracle Gaussian filter beats the noisy input by construction (width picked on the clean crop).
        assert methods["gaussian filter (best)"]["psnr"] > methods["noisy"]["psnr"]
        assert setting["sigma_estimate"] == pytest.approx(setting["sigma"], rel=0.15)
    assert json.loads((results / "bench_denoise.json").read_text())["train_steps"] == 2
    assert sorted(p.name for p in results.glob("*.png")) == [
        "denoise_gaussian_05.png",
        "denoise_gaussian_10.png",
        "denoise_rician_05.png",
    ]
