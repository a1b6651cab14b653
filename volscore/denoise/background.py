"""The head mask (Otsu on a smoothed copy, dilated by a margin) and the background rule: outside the head,
no signal the scan does not show (no hallucinated structure in the air)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of a histogram."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)  # voxels at or below each cut
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


def foreground_mask(volume: np.ndarray, smooth: float = 2.0, margin: float = 3.0) -> np.ndarray:
    """The head: Otsu on a Gaussian-smoothed copy (``smooth`` voxels, so noise cannot punch holes), holes
    filled (ventricles, dark CSF), dilated by ``margin`` voxels so partial-volume edges are in."""
    smoothed = ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), smooth)
    # Every 8th voxel is plenty for a 256-bin histogram of a smoothed image.
    mask = ndimage.binary_fill_holes(smoothed > otsu_threshold(smoothed[::2, ::2, ::2]))
    # Alternating 6- and 26-neighbour steps: an octagonal ball, 10x faster than a Euclidean distance map.
    for i in range(int(round(margin))):
        mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1 if i % 2 == 0 else 3))
    return mask


def clamp_background(
    denoised: np.ndarray,
    noisy: np.ndarray,
    sigma: float,
    mask: np.ndarray,
    width: float = 2.0,
    k: float = 3.0,
) -> tuple[np.ndarray, float]:
    """Outside ``mask``, keep the model's output only where the data support it; return (out, clamped share).

    Rule: outside the head the output may differ from the local mean of the measured data, m = G_width * y,
    by at most ``k`` standard errors of that mean, se = sigma sqrt(sum g^2); it is clipped to [m - k se,
    m + k se]. A linear smoother cannot invent structure, and within k se of it the output is statistically
    indistinguishable from what the data say, so signal the model paints into the air (a "hallucinated"
    skull, tissue from its prior) is removed while the air is still denoised (to about m). Inside the
    mask the model's output is kept unchanged. ``sigma`` is in the units of ``noisy``.
    """
    noisy = np.asarray(noisy, dtype=np.float32)
    local_mean = ndimage.gaussian_filter(noisy, width)
    delta = np.zeros(2 * int(4 * width + 0.5) + 1)
    delta[len(delta) // 2] = 1
    g = ndimage.gaussian_filter1d(delta, width)  # scipy's own discrete kernel (truncate 4)
    band = k * sigma * float((g**2).sum()) ** 1.5  # separable: sum of g^2 over 3D = (sum over 1D)^3
    clipped = np.clip(denoised, local_mean - band, local_mean + band)
    outside = ~np.asarray(mask, dtype=bool)
    changed = outside & (clipped != denoised)
    out = np.where(outside, clipped, denoised).astype(np.float32)
    return out, float(changed.sum() / max(outside.sum(), 1))
