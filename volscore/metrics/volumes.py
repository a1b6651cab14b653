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


def volume_sample_quality(
    sample: ArrayLike, reference: ArrayLike, data_range: float | None = None, mask: ArrayLike | None = None
) -> dict[str, float]:
    """How much a generated volume looks like the (training) volume it should resemble, on the same grid.

    - ``ssim``: SSIM against the reference (``data_range``: the reference's 0.5-99.5 percentile range);
    - ``noise_ratio``: the sample's Gaussian noise level over the reference's, both by the 3D wavelet MAD of
      the finest diagonal Haar band (``denoise.noise_level.estimate_sigma``) inside ``mask`` (default: the
      reference's foreground). About 1 for a clean sample of a clean reference; voxel noise makes it large;
    - ``histogram_distance``: the 1-Wasserstein distance between the foreground intensities of the two,
      over ``data_range`` (0 for equal intensity distributions);
    - ``sample_sigma`` and ``reference_sigma``: the two noise estimates themselves.
    """
    from scipy.stats import wasserstein_distance

    from volscore.denoise.background import foreground_mask
    from volscore.denoise.noise_level import estimate_sigma

    x = np.asarray(sample.detach().cpu() if isinstance(sample, Tensor) else sample, dtype=np.float32)
    ref = np.asarray(
        reference.detach().cpu() if isinstance(reference, Tensor) else reference, dtype=np.float32
    )
    if x.shape != ref.shape or x.ndim != 3:
        raise ValueError(f"need two volumes of one shape (D, H, W), got {x.shape} and {ref.shape}")
    if data_range is None:
        lo, hi = np.percentile(ref, [0.5, 99.5])
        data_range = float(hi - lo)
    if not data_range > 0:
        raise ValueError("the reference is constant: no data range to compare against")
    fg = foreground_mask(ref) if mask is None else np.asarray(mask, dtype=bool)
    sample_sigma, reference_sigma = estimate_sigma(x, mask=fg), estimate_sigma(ref, mask=fg)
    return {
        "ssim": ssim(x, ref, data_range=data_range),
        "noise_ratio": sample_sigma / max(reference_sigma, 1e-12),
        "sample_sigma": sample_sigma,
        "reference_sigma": reference_sigma,
        "histogram_distance": float(wasserstein_distance(x[fg], ref[fg])) / data_range,
    }
