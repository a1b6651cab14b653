"""scripts/gpu_check.sh without a GPU: the clear no-device answer, the two checks that also run on the CPU
(stitched step, one-rank DDP over gloo), and the report's plumbing with the GPU checks stubbed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["status"] == "no CUDA device"
    assert "no CUDA device" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_stitched_step_runs_on_the_cpu():
    result = load_script("gpu_check").stitch_check(size=40, tile_batches=[4], device="cpu")
    assert result["size"] == 40 and result["tile_batch"]["4"]["seconds"] > 0


@pytest.mark.slow
def test_one_rank_ddp_gives_the_plain_gradients_on_gloo():
    result = load_script("gpu_check").ddp_one_rank_check("gloo", "cpu")
    assert result["ok"], result
    assert set(result["objectives"]) == {"dsm auto", "ssm-vr exact", "ssm-vr forward"}


def test_report_plumbing_with_the_gpu_checks_stubbed(tmp_path, monkeypatch):
    gc = load_script("gpu_check")
    monkeypatch.setattr(gc, "_device_info", lambda: {"gpu": "stub", "gpus": 1})
    rows = {
        f"volscore {name} {dtype}": {"sec_per_step": sec}
        for dtype in ("fp32", "bf16", "fp16")
        for name, sec in (("DSM", 1.0), ("SSM-VR", 2.5), ("SSM-VR forward", 2.0))
    }
    calls = []

    def fake_run(cmd, timeout, env=None):
        calls.append(cmd)
        if "--json" in cmd:
            path = Path(cmd[cmd.index("--json") + 1])
            path.write_text(
                json.dumps({"results": rows} if "bench_perf.py" in " ".join(cmd) else {"ok": True})
            )
        return {"rc": 0, "ok": True, "seconds": 0.0, "tail": ""}

    monkeypatch.setattr(gc, "_run", fake_run)
    report = gc.run_all(tmp_path, budget=100.0)
    assert report["status"] == "ok", report
    assert set(report["checks"]) == {"tests", "ddp", "stitch", "bench"}
    assert report["checks"]["bench"]["ssm_vr_over_dsm"]["fp16"] == {"exact": 2.5, "forward": 2.0}
    assert any("--device" in c and "cuda" in c for c in calls)
    # a failing check names itself in the status
    monkeypatch.setattr(
        gc, "_run", lambda cmd, timeout, env=None: {**fake_run(cmd, timeout), "ok": "pytest" not in cmd}
    )
    assert gc.run_all(tmp_path, budget=100.0)["status"] == "failed: tests"
