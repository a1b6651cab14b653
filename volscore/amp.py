"""Inference under autocast: a score function whose network runs in bf16 (or fp16) and answers in float32.

Used by sampling (``volscore sample --amp``), denoising and restoration. Training has its own autocast and
GradScaler in ``volscore.train``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from volscore.options import INFERENCE_AMP

ScoreFn = Callable[..., Tensor]


def inference_dtype(mode: str) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` choice of ``INFERENCE_AMP`` (None: full precision)."""
    if mode not in INFERENCE_AMP:
        raise ValueError(f"amp must be one of {INFERENCE_AMP}, got {mode!r}")
    return torch.bfloat16 if mode == "bf16" else None


def autocast(model: ScoreFn, dtype: torch.dtype | None) -> ScoreFn:
    """``model(x, sigma, coords=None)`` under ``torch.autocast`` to ``dtype`` (None: ``model`` itself), its
    output float32. The preconditioner keeps its coefficients and skip sum in float32, so only the network's
    input c_in x and output F are rounded (bf16: a relative 2^-8; in the denoiser D = c_skip x + c_out F the
    error is c_out ~ sigma times that)."""
    if dtype is None:
        return model

    def score_fn(x: Tensor, sigma: Tensor, coords: Tensor | None = None) -> Tensor:
        with torch.autocast(x.device.type, dtype=dtype):
            return model(x, sigma, coords).float()

    return score_fn
