"""Tests for volscore/amp.py: the autocast wrapper runs the network in the asked dtype and answers float32;
None leaves the model untouched; the --amp names map to dtypes and a wrong one is refused."""

from __future__ import annotations

import pytest
import torch

from volscore.amp import autocast, inference_dtype
from volscore.nets import build_model


def test_inference_dtype_maps_the_choices_and_refuses_others():
    assert inference_dtype("off") is None
    assert inference_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="amp must be one of"):
        inference_dtype("fp16")


def test_autocast_runs_the_network_in_bf16_and_returns_float32():
    torch.manual_seed(0)
    model = build_model("tiny", 2)
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.1)  # a nonzero output, so rounding shows
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 1.0])
    seen: list[torch.dtype] = []
    model.net.conv_in.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    assert autocast(model, None) is model
    with torch.no_grad():
        ref = model(x, sigma)
        out = autocast(model, torch.bfloat16)(x, sigma)
    assert seen == [torch.float32, torch.bfloat16]
    assert out.dtype == torch.float32
    err = float((out - ref).abs().max() / ref.abs().max())
    assert 0 < err < 0.03  # bf16 keeps 8 bits: a few 2^-8 relative through the network
