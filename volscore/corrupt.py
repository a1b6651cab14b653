"""Noisy copies of scans with known noise, for trying and benchmarking the denoiser.

Gaussian: y = x + sigma n. Rician (magnitude MRI): y = |x + sigma (n1 + i n2)|, the magnitude of a complex
signal whose real and imaginary channels carry independent Gaussian noise. sigma is given as a fraction of
the clean scan's 99.5th percentile, the convention of the denoising benchmarks (BM4D's papers use a
fraction of the intensity range).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from volscore.data.nifti import load_volume, resolve_paths, save_volume
from volscore.options import NOISE_MODELS


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
) -> dict[str, Any]:
    """Write a noisy copy of ``input`` ("mni152" for the bundled template) with sigma = ``fraction`` x its
    99.5th percentile; returns what was done (sigma in input units). Never over the input."""
    (src,) = resolve_paths(str(input)) if str(input) == "mni152" else (Path(input).expanduser(),)
    dst = Path(output).expanduser()
    if dst.exists() and not force:
        raise FileExistsError(f"{dst}: output exists; pass --force to replace it")
    volume = load_volume(src)
    sigma = fraction * reference_level(volume.data)
    save_volume(dst, add_noise(volume.data, sigma, noise, seed), reference=volume)
    return {"input": str(src), "output": str(dst), "noise": noise, "sigma": sigma, "fraction": fraction}
