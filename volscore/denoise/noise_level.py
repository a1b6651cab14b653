"""Noise-level estimators: the MAD of the finest diagonal Haar band (Gaussian noise, Donoho and Johnstone
1994, extended to 3D) and the median of the background magnitude (Rician noise in magnitude MRI)."""

from __future__ import annotations

import math

import numpy as np

from volscore.denoise.background import foreground_mask

MAD_TO_SIGMA = 0.6745  # median |N(0, 1)| = Phi^{-1}(3/4)
RAYLEIGH_MEDIAN = math.sqrt(2 * math.log(2))  # median of Rayleigh(sigma) / sigma


def _haar_hhh(volume: np.ndarray) -> np.ndarray:
    """Finest diagonal (HHH) band of a one-level orthonormal 3D Haar transform, (X//2, Y//2, Z//2).

    Each coefficient is sum over a 2x2x2 block of (-1)^(i+j+k) v / (2 sqrt 2): unit gain for white noise,
    zero for any signal that is linear, or constant along one axis, inside the block.
    """
    v = np.asarray(volume, dtype=np.float64)
    if min(v.shape) < 2:
        raise ValueError(f"need at least 2 voxels per axis to estimate noise, got shape {v.shape}")
    v = v[: v.shape[0] // 2 * 2, : v.shape[1] // 2 * 2, : v.shape[2] // 2 * 2]
    d = v[0::2] - v[1::2]
    d = d[:, 0::2] - d[:, 1::2]
    d = d[:, :, 0::2] - d[:, :, 1::2]
    return d / (2 * math.sqrt(2))


def estimate_sigma(volume: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Gaussian noise std in the volume's own units: Donoho's wavelet MAD generalised to 3D.

    sigma = median |HHH| / 0.6745 over the diagonal band of a one-level Haar transform (``_haar_hhh``).
    Smooth anatomy barely reaches that band and edges are few, so the median ignores them. With ``mask``,
    only 2x2x2 blocks entirely inside it count: pass one when the volume holds large noise-free regions
    (e.g. zero-filled background), which would pull the median down.
    Not for Rician magnitude backgrounds (Rayleigh noise is not Gaussian): see ``estimate_sigma_rician``.
    """
    band = _haar_hhh(volume)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != np.shape(volume):
            raise ValueError(f"mask shape {m.shape} differs from volume shape {np.shape(volume)}")
        m = m[: m.shape[0] // 2 * 2, : m.shape[1] // 2 * 2, : m.shape[2] // 2 * 2]
        inside = m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2, m.shape[2] // 2, 2).all(axis=(1, 3, 5))
        band = band[inside]
    if band.size < 64:
        raise ValueError(f"only {band.size} 2x2x2 blocks to estimate the noise from (need >= 64)")
    return float(np.median(np.abs(band)) / MAD_TO_SIGMA)


def estimate_sigma_rician(magnitude: np.ndarray, background: np.ndarray | None = None) -> float:
    """Rician sigma of a magnitude MRI from its air background, where the magnitude is Rayleigh(sigma).

    sigma = median(background) / sqrt(2 ln 2), the Rayleigh median. The median rather than the mean
    (mean / sqrt(pi/2)) or the mode: a few tissue or ghosting voxels in the "air" shift a median least,
    and unlike the mode it needs no histogram binning. ``background`` defaults to everything outside
    ``foreground_mask`` (Otsu on a smoothed copy, dilated by 3 voxels so edge voxels stay out).
    Raises ValueError when there is too little background or it is noise-free (e.g. zero-filled).
    """
    m = np.asarray(magnitude, dtype=np.float32)
    bg = ~foreground_mask(m) if background is None else np.asarray(background, dtype=bool)
    values = m[bg]
    if values.size < 1000:
        raise ValueError(f"only {values.size} background voxels (need >= 1000) to estimate Rician noise")
    if (values < 0).any():
        raise ValueError("negative values in the background: not a magnitude image")
    sigma = float(np.median(values)) / RAYLEIGH_MEDIAN
    if not sigma > 0:
        raise ValueError("the background is noise-free (median 0, e.g. zero-filled): give sigma explicitly")
    return sigma
