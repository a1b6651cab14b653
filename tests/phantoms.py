"""Test volumes shared by several test files: smooth phantoms, a "head" in air, NIfTI writing, smooth random
fields, and a ``Run`` whose model is a closed-form score function. Imported as ``phantoms`` (``tests/`` is
on ``sys.path`` through ``conftest.py``); every random draw is seeded.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import torch

AFFINE = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
ZOOMS = (1.5, 1.5, 2.0)  # the voxel size AFFINE gives
PATCH = 16


def grid(n: int | tuple[int, ...]) -> list[np.ndarray]:
    shape = (n,) * 3 if isinstance(n, int) else n
    return np.meshgrid(*[np.linspace(-1, 1, k) for k in shape], indexing="ij")


def smooth_phantom(n: int = 40) -> np.ndarray:
    """A gradient plus two Gaussian blobs: smooth everywhere, values about 0.1-1."""
    z, y, x = grid(n)
    blob1 = 0.4 * np.exp(-((x - 0.2) ** 2 + y**2 + (z + 0.1) ** 2) / 0.3)
    blob2 = 0.3 * np.exp(-((x + 0.4) ** 2 + (y - 0.3) ** 2 + z**2) / 0.1)
    return 0.3 + 0.2 * x + blob1 + blob2


def head_phantom(n: int | tuple[int, ...] = 24) -> np.ndarray:
    """An ellipsoidal "head" (smooth interior 0.5-0.8) in air (exactly 0)."""
    z, y, x = grid(n)
    inside = (x / 0.75) ** 2 + (y / 0.8) ** 2 + (z / 0.7) ** 2 < 1
    return inside * (0.5 + 0.3 * np.exp(-((x - 0.2) ** 2 + y**2) / 0.2))


def write_nifti(path: str | os.PathLike, data: np.ndarray, header=None, affine=AFFINE):
    nib.Nifti1Image(data, affine, header).to_filename(path)
    return path


def noisy_head(path: str | os.PathLike, sigma: float = 0.05, n: int = 24, seed: int = 0):
    """A float64 NIfTI of ``head_phantom(n)`` plus Gaussian noise of ``sigma``."""
    rng = np.random.default_rng(seed)
    return write_nifti(path, head_phantom(n) + sigma * rng.standard_normal((n, n, n)))


def smooth_field(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """White noise blurred by a separable Gaussian of 2 voxels: a smooth 3D field without seams."""
    noise = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(seed))
    kernel = torch.exp(-0.5 * (torch.arange(-6.0, 7.0) / 2.0) ** 2)
    kernel = kernel / kernel.sum()
    for axis in range(3):
        k = kernel.reshape([1, 1] + [13 if a == axis else 1 for a in range(3)])
        noise = torch.nn.functional.conv3d(noise, k, padding="same")
    return noise[0, 0]


def closed_form_run(patch_fn, patch_size: int = PATCH, coords: bool = False):
    """A ``Run`` whose model is a closed-form patch score function ``patch_fn(x, sigma, coords)``."""
    from volscore.config import TrainConfig
    from volscore.run import Run

    net = {"spatial_dims": 3, "in_channels": 1, "coord_channels": coords}
    cfg = TrainConfig(data=["closed form"], out="", patch_size=patch_size, sigma_min=0.01, sigma_max=1.0)
    return Run("closed form", patch_fn, cfg, {"net": net}, {"kind": "nifti"}, 0)
