"""Seam score: how visible the tile boundaries of a stitched volume are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from volscore.sampling.stitch import as_tuple, axis_segments


def seam_score(volume: Tensor, patch_size: int | Sequence[int], offset: int | Sequence[int] = 0) -> float:
    """Mean |finite difference| across tile boundaries / mean |finite difference| inside tiles.

    The boundaries are those the shift/fixed tiling uses for this offset (grid cuts at offset + k p, partial
    end pieces merged). About 1 for a volume without seams; above 1 when the tiles left visible edges.
    """
    patch = as_tuple(patch_size, volume.ndim, "patch_size")
    off = as_tuple(offset, volume.ndim, "offset")
    v = volume.detach().double()
    seam_sum = inner_sum = 0.0
    seam_n = inner_n = 0
    for axis, (n, p, o) in enumerate(zip(v.shape, patch, off, strict=True)):
        if n < 2:
            continue
        grad = v.diff(dim=axis).abs().movedim(axis, 0)  # grad[i - 1] = |v_i - v_{i-1}| along this axis
        is_seam = torch.zeros(n - 1, dtype=torch.bool)
        if n >= p:
            for a, _ in axis_segments(n, p, o)[1:]:
                is_seam[a - 1] = True
        seam_sum += float(grad[is_seam].sum())
        seam_n += grad[is_seam].numel()
        inner_sum += float(grad[~is_seam].sum())
        inner_n += grad[~is_seam].numel()
    if seam_n == 0 or inner_n == 0 or inner_sum == 0:
        raise ValueError(
            f"no tile boundary or no variation inside tiles: shape {tuple(v.shape)}, patch {patch}"
        )
    return (seam_sum / seam_n) / (inner_sum / inner_n)
