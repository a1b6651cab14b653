"""CUDA-only paths: fp16 autocast with GradScaler, bf16 where supported, SSM's double backward under
autocast, checkpoints that move between devices, and device-independent seeds. Skipped with a reason on
machines without CUDA (this project's CI has none); on a GPU machine: ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from volscore.checkpoint import load_checkpoint
from volscore.config import TrainConfig
from volscore.train import Trainer, amp_dtype

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.reliability,
]


def _cfg(out, amp: str, objective: str = "dsm", **kw) -> TrainConfig:
    base = dict(data=["mnist"], out=str(out), preset="tiny", steps=6, batch_size=8, sigma_max=10.0,
                num_sigmas=20, warmup=2, lr=1e-3, amp=amp, objective=objective, device="cuda")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("objective", ["dsm", "ssm-vr"])
def test_fp16_with_grad_scaler_trains_and_checkpoints_the_scaler(tmp_path, objective):
    t = Trainer(_cfg(tmp_path / objective, "fp16", objective), progress=False)
    assert t.scaler.is_enabled()
    t.run()
    state = load_checkpoint(tmp_path / objective / "checkpoint.pt")
    assert state["step"] == 6 and state["scaler"]["scale"] > 0
    assert all(math.isfinite(float(v.float().abs().sum())) for v in state["model"].values())


def test_auto_amp_picks_bf16_where_supported():
    device = torch.device("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert amp_dtype("auto", device) == expected


def test_cuda_checkpoint_resumes_on_cpu(tmp_path):
    Trainer(_cfg(tmp_path / "r", "off", steps=3), progress=False).run()
    resumed = Trainer(_cfg(tmp_path / "r", "off", steps=5, device="cpu"), resume=True, progress=False)
    assert resumed.device.type == "cpu"
    resumed.run()
    assert resumed.step == 5
    # an fp16 run cannot continue on the CPU (no fp16 autocast there): a clear error, not a crash
    Trainer(_cfg(tmp_path / "h", "fp16", steps=2), progress=False).run()
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Trainer(_cfg(tmp_path / "h", "fp16", steps=3, device="cpu"), resume=True, progress=False)


def test_seeded_sampling_noise_is_the_same_on_cpu_and_cuda():
    from volscore.noise import randn

    g_cpu, g_gpu = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = randn((3, 4), g_cpu, torch.device("cpu"), torch.float32)
    b = randn((3, 4), g_gpu, torch.device("cuda"), torch.float32)
    assert b.device.type == "cuda" and torch.equal(a, b.cpu())
