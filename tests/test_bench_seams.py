"""Smoke test for scripts/bench_seams.py: its main() runs end to end with the --quick budget.

Only checks plumbing (a model trained with the demo's settings, every stitching sampled and scored, montages
and JSON); the numbers themselves are the benchmark's business, not a test's.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from script_loader import load_script


def test_trains_with_the_prior_recipe(tmp_path):
    from volscore.recipes import prior_config

    bench = load_script("bench_seams")
    args = bench.parse_args(["--quick"])
    cfg = bench.seam_config(args, tmp_path / "run")
    recipe = prior_config(str(tmp_path / "run"), spacing=6.0, patch_size=16, steps=2)
    assert (cfg.steps, cfg.minutes) == (2, None)  # the --quick budget
    assert cfg.to_dict() == recipe.to_dict()  # all else the bundled prior's recipe
    assert cfg.coord_frequencies == 5 and cfg.warmup == 50 and cfg.lr == 1e-3


@pytest.mark.slow
def test_quick_run_reports_every_stitching(tmp_path):
    bench = load_script("bench_seams")
    lines: list[str] = []
    threads = torch.get_num_threads()
    out = bench.main(
        ["--quick", "--json", str(tmp_path / "bench.json"), "--results-dir", str(tmp_path)], log=lines.append
    )

    assert torch.get_num_threads() == threads
    seams = out["seams"]
    assert seams["trained_here"] and seams["train_steps"] == 2
    assert set(seams["samples"]) == {*bench.MODES, bench.WHOLE}
    assert all(math.isfinite(r["seam"]) for r in seams["samples"].values())
    assert set(seams["tweedie"]["0.3"]) == {"noisy", *bench.MODES, bench.WHOLE}
    assert (tmp_path / "stitch_modes.png").stat().st_size > 0
    assert (tmp_path / "stitch_modes_tweedie.png").stat().st_size > 0
    text = "\n".join(lines)
    assert "| stitching |" in text and "| one denoiser pass" in text and "torch" in text
    assert set(json.loads((tmp_path / "bench.json").read_text())) >= {"machine", "seams"}


@pytest.mark.slow
def test_seeds_compare_shift_with_the_whole_volume_per_seed(tiny_run, tmp_path):
    """--seeds: one shift sample and one whole-volume sample per seed, their seam scores and ratio, and the
    mean with its spread; refused without --run."""
    bench = load_script("bench_seams")
    argv = ["--run", str(tiny_run), "--seeds", "0", "1", "--shape", "40", "40", "40", "--threads", "1"]
    out = bench.main(argv, log=lambda *a: None)  # 40 = 16 + 24: one grid boundary per axis
    seeds = out["seeds"]
    assert [r["seed"] for r in seeds["rows"]] == [0, 1]
    assert all(r["ratio"] == pytest.approx(r["shift"] / r["whole"]) for r in seeds["rows"])
    assert seeds["ratio_mean"] == pytest.approx(sum(r["ratio"] for r in seeds["rows"]) / 2)
    assert math.isfinite(seeds["ratio_sd"]) and seeds["ratio_se"] <= seeds["ratio_sd"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--seeds", "0"])
