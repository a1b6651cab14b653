"""PSNR and SSIM of volumes against a reference, through MONAI's metrics (float64 PSNR, 3D SSIM)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _as_bcdhw(x: ArrayLike, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).detach()
    if t.ndim == 3:
        t = t[None, None]  # (1, 1, D, H, W)
    if t.ndim != 5:
        raise ValueError(
            f"expected a volume (D, H, W) or a batch (B, C, D, H, W), got shape {tuple(t.shape)}"
        )
    return t.to(dtype)


def psnr(x: ArrayLike, ref: ArrayLike, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(data_range^2 / MSE), of x against ref.

    Volumes (D, H, W) or batches (B, C, D, H, W) (mean over the batch); float64 via MONAI's PSNRMetric.
    """
    from monai.metrics import PSNRMetric

    metric = PSNRMetric(max_val=data_range)
    # The call returns the (B, 1) per-volume values; aggregate() would round the mean to float32.
    return float(metric(_as_bcdhw(x, torch.float64), _as_bcdhw(ref, torch.float64)).mean())


def ssim(x: ArrayLike, ref: ArrayLike, data_range: float, win_size: int = 11) -> float:
    """Structural similarity of x against ref (3D Gaussian window, sigma 1.5), via MONAI's SSIMMetric.

    Volumes (D, H, W) or batches (B, C, D, H, W) (mean over the batch); every spatial side must be
    at least ``win_size`` (the window is applied without padding).
    """
    from monai.metrics import SSIMMetric

    xt, rt = _as_bcdhw(x, torch.float32), _as_bcdhw(ref, torch.float32)
    if min(xt.shape[2:]) < win_size:
        raise ValueError(f"every side must be >= win_size={win_size}, got {tuple(xt.shape[2:])}")
    metric = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=win_size)
    return float(metric(xt, rt).double().mean())
