"""The voxel-size rule: denoise a scan at a voxel size the model was trained at, then go back to its grid.

A patch model learns anatomy at its training voxel size: on a 2 mm scan a 1 mm model sees every structure
at half its size. ``DenoiseOptions.spacing`` "auto" resamples the scan to the training spacing nearest to
its own (``target_zooms``; a multi-resolution run offers several), denoises there, and resamples the result
back onto the scan's grid (``resample_to``): same shape, affine and header as before. "native" (the
default) denoises on the scan's own grid; a number resamples to that isotropic spacing.

The noise level changes with the grid. Trilinear resampling is linear, o = W y, so white noise of sd s
becomes noise of sd s sqrt(mean_o sum_k W_ok^2): ``noise_factor`` measures that factor by resampling a
seeded white-noise volume the same way (exact up to a relative 1 / sqrt(2 N) for N output voxels, about
0.1 % for a 64^3 grid; no assumption about MONAI's grid conventions). Going to a coarser grid, each output
voxel averages up to 8 input voxels that no other output shares much, so the noise stays nearly white with a
smaller sd. Going to a finer grid, neighbouring outputs share inputs: the noise is smooth (correlated), and
a model trained on white noise takes part of it for anatomy; the record says so ("correlated": true).
Both directions lose detail to the interpolation itself: a round trip of a smooth volume is close to the
identity, not of sharp edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from volscore.data.sources import resample, resample_to, voxel_sizes

SPACING_TOLERANCE = 0.1  # "auto" keeps the scan's grid when every axis is within 10 % of a trained spacing
NOISE_PROBE_SEED = 0


def trained_zooms(run: Any) -> list[tuple[float, float, float]]:
    """The voxel sizes a run was trained at: its (first) volume's, then its multi-resolution spacings; none
    for a run that does not record them (self-supervised fits: the scan's own grid)."""
    if run.kind != "nifti" or not run.data.get("zooms"):
        return []
    out = [tuple(float(z) for z in run.zooms)]
    out += [(float(s),) * 3 for s in (run.data.get("multires") or {}).get("spacings", [])]
    return out  # type: ignore[return-value]


def _close(a: Sequence[float], b: Sequence[float], tolerance: float) -> bool:
    return all(abs(math.log(x / y)) <= math.log1p(tolerance) for x, y in zip(a, b, strict=True))


def target_zooms(
    scan: Sequence[float], trained: Sequence[Sequence[float]], rule: str | float
) -> tuple[float, float, float] | None:
    """The voxel size to denoise at, or None for the scan's own grid.

    ``rule``: "native" (None); a number of mm (that isotropic size, None if the scan has it already); "auto":
    the trained voxel size nearest to the scan's (least squared log ratio over the axes), None when the scan
    is within ``SPACING_TOLERANCE`` of it on every axis or the run records none.
    """
    scan = tuple(float(z) for z in scan)
    if rule == "native":
        return None
    if rule != "auto":
        iso = (float(rule),) * 3
        return None if _close(scan, iso, 1e-3) else iso  # type: ignore[return-value]
    if not trained:
        return None
    nearest = min(trained, key=lambda z: sum(math.log(a / b) ** 2 for a, b in zip(scan, z, strict=True)))
    nearest = tuple(float(z) for z in nearest)
    return None if _close(scan, nearest, SPACING_TOLERANCE) else nearest  # type: ignore[return-value]


def noise_factor(shape: Sequence[int], affine: np.ndarray, zooms: Sequence[float]) -> float:
    """sd of white noise of sd 1 on the grid (``shape``, ``affine``) after ``resample`` to ``zooms``."""
    rng = np.random.default_rng(NOISE_PROBE_SEED)
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    out, _ = resample(noise, affine, zooms)
    # the ratio to the probe's own rms: exactly 1 for an identity resampling
    return float(np.sqrt(np.mean(out.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)))


class Regrid:
    """The scan's grid (``shape``, ``affine``) and the grid at ``zooms``: ``forward`` resamples a volume
    there, ``back`` onto the scan's grid; ``noise_factor`` and ``record`` describe the change."""

    def __init__(self, shape: Sequence[int], affine: np.ndarray, zooms: Sequence[float]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.zooms = tuple(float(z) for z in zooms)
        self.scan_zooms = tuple(voxel_sizes(self.affine))
        self.noise_factor = noise_factor(self.shape, self.affine, self.zooms)
        self.target_affine: np.ndarray | None = None
        self.target_shape: tuple[int, ...] | None = None

    def forward(self, volume: np.ndarray) -> np.ndarray:
        out, self.target_affine = resample(volume, self.affine, self.zooms)
        self.target_shape = out.shape
        return out

    def back(self, volume: np.ndarray) -> np.ndarray:
        if self.target_affine is None:
            raise RuntimeError("Regrid.back before forward")
        return resample_to(volume, self.target_affine, self.affine, self.shape)

    def record(self) -> dict[str, Any]:
        return {
            "scan_zooms": list(self.scan_zooms),
            "zooms": list(self.zooms),
            "shape": None if self.target_shape is None else list(self.target_shape),
            "noise_factor": self.noise_factor,
            # a finer grid on any axis: neighbouring voxels share the scan's noise
            "correlated": any(
                z < s / (1 + SPACING_TOLERANCE) for z, s in zip(self.zooms, self.scan_zooms, strict=True)
            ),
        }
