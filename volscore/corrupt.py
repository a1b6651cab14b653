"""Noisy copies of scans with known noise, for trying and benchmarking the denoiser.

Gaussian: y = x + sigma n. Rician (magnitude MRI): y = |x + sigma (n1 + i n2)|, the magnitude of a complex
signal whose real and imaginary channels carry independent Gaussian noise. sigma is given as a fraction of
the clean scan's 99.5th percentile, the convention of the denoising benchmarks (BM4D's papers use a
fraction of the intensity range).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from volscore.data.nifti import VolumeError, check_volume_output, load_volume, resolve_paths, save_volume
from volscore.options import NOISE_MODELS, NoisyOptions


def reference_level(data: np.ndarray) -> float:
    """The 99.5th percentile: noise levels are fractions of it."""
    return float(np.percentile(data, 99.5))


def add_noise(data: np.ndarray, sigma: float, noise: str = "gaussian", seed: int = 0) -> np.ndarray:
    """A noisy float32 copy of ``data`` with noise ``sigma`` (the data's units); ``data`` is unchanged."""
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    rng = np.random.default_rng(seed)
    x = np.asarray(data, dtype=np.float32)
    real = x + np.float32(sigma) * rng.standard_normal(x.shape, dtype=np.float32)
    if noise == "gaussian":
        return real
    imag = np.float32(sigma) * rng.standard_normal(x.shape, dtype=np.float32)
    return np.hypot(real, imag)


def make_noisy_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    fraction: float,
    noise: str = "gaussian",
    seed: int = 0,
    force: bool = False,
    volume_index: int | None = None,
) -> dict[str, Any]:
    """Write a noisy copy of ``input`` ("mni152" for the bundled template; volume ``volume_index`` of a 4D
    file) with sigma = ``fraction`` x its 99.5th percentile; returns what was done (sigma in input units).
    The options and the output are checked before the scan is read; never over the input, and nothing is
    written when the noisy copy would not be finite."""
    NoisyOptions(fraction, noise, seed, volume_index, force).validate()
    (src,) = resolve_paths(str(input)) if str(input) == "mni152" else (Path(input).expanduser(),)
    dst = check_volume_output(output, inputs=[src], force=force)
    volume = load_volume(src, volume_index)
    level = reference_level(volume.data)
    sigma = fraction * level
    if not (math.isfinite(sigma) and sigma > 0):
        raise VolumeError(
            f"{src}: its 99.5th percentile is {level:g}, so --fraction {fraction} gives no noise level "
            f"(sigma {sigma:g}); noisy copies need a scan whose bright voxels are > 0"
        )
    noisy = add_noise(volume.data, sigma, noise, seed)
    if not np.isfinite(noisy).all():
        raise FloatingPointError(
            f"{src}: --fraction {fraction} gives sigma {sigma:.4g}, beyond float32's range: the noisy copy "
            f"would hold {int((~np.isfinite(noisy)).sum())} non-finite voxels (nothing written)"
        )
    save_volume(dst, noisy, reference=volume)
    return {"input": str(src), "output": str(dst), "noise": noise, "sigma": sigma, "fraction": fraction}
