"""CUDA-only: SSM by forward mode (``ssm_loss(method="forward")``, ``--ssm-method forward``) against reverse
over reverse on a GPU, in float64 and under bf16 and fp16 autocast (where CUDA runs GroupNorm in float32),
and fp16 training with a GradScaler. Skipped without CUDA; scripts/gpu_check.sh runs them.
"""

from __future__ import annotations

import math

import pytest
import torch

from volscore.config import TrainConfig
from volscore.objectives import ssm_loss
from volscore.train import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(dtype: torch.dtype):
    """The tiny 3D preset's network, every weight nonzero, as a score of (x, sigma) with coordinates."""
    from volscore.nets import build_model

    torch.manual_seed(0)
    net = build_model("tiny", 3, coord_channels=True).net.to("cuda", dtype)
    with torch.no_grad():  # conv_out starts at zero: without this no gradient reaches the rest
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    coords = torch.rand(2, 3, 12, 12, 12, generator=g).to("cuda", dtype)
    return net, lambda y, s: net(y, s.log() / 4, coords)


def _ssm_vr(method: str, dtype: torch.dtype, amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    net, score = _model(dtype)
    x = torch.rand(2, 1, 12, 12, 12, generator=torch.Generator().manual_seed(2)).to("cuda", dtype)
    sigma = torch.tensor([0.2, 1.5], device="cuda", dtype=dtype)
    with torch.autocast("cuda", dtype=amp or torch.float16, enabled=amp is not None):
        loss = ssm_loss(
            score,
            x,
            variance_reduced=True,
            sigma=sigma,
            method=method,
            generator=torch.Generator().manual_seed(3),
        )
    loss.sum().backward()
    return loss.detach().double(), torch.cat([p.grad.flatten() for p in net.parameters()]).double()


def test_forward_mode_equals_exact_in_float64_on_cuda():
    (loss_e, grad_e), (loss_f, grad_f) = (_ssm_vr(m, torch.float64, None) for m in ("exact", "forward"))
    assert torch.allclose(loss_f, loss_e, rtol=1e-10, atol=0)
    assert float((grad_f - grad_e).abs().max() / grad_e.abs().max()) < 1e-9


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_forward_mode_under_autocast_on_cuda_is_as_accurate_as_exact(amp):
    if amp == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    torch.backends.cudnn.allow_tf32 = False  # the float32 reference without TF32's 10-bit mantissa
    try:
        loss_ref, grad_ref = _ssm_vr("exact", torch.float32, None)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    errors = {}
    for method in ("exact", "forward"):
        loss, grad = _ssm_vr(method, torch.float32, amp)
        errors[method] = (
            float(((loss - loss_ref).abs() / loss_ref.abs()).max()),
            float((grad - grad_ref).norm() / grad_ref.norm()),
        )
    assert errors["forward"][0] <= 2 * errors["exact"][0] + 1e-2, errors
    assert errors["forward"][1] <= 1.5 * errors["exact"][1] + 1e-3, errors


def test_fp16_training_with_forward_mode_and_grad_scaler(tmp_path):
    cfg = TrainConfig(data=["mnist"], out=str(tmp_path / "r"), preset="tiny", steps=6, batch_size=8,
                      sigma_max=10.0, num_sigmas=20, warmup=2, lr=1e-3, amp="fp16", objective="ssm-vr",
                      ssm_method="forward", device="cuda")  # fmt: skip
    t = Trainer(cfg, progress=False)
    assert t.scaler.is_enabled()
    t.run()
    assert t.skipped < 6
    assert all(math.isfinite(float(v.float().abs().sum())) for v in t.model.state_dict().values())
