"""Random augmentations of clean 3D training patches (``TrainConfig.augment``), all drawn from the trainer's
generator, so a resumed run stays bit-identical.

Why: a model trained on one template learns that template's orientation, voxel size, contrast and shading;
other subjects' scans differ in all four. Each augmentation is applied to a share of the patches, in the
order of ``config.AUGMENTATIONS``:

- ``flip``: each axis flipped with probability 1/2. The coordinate channels are flipped with the voxels:
  every voxel keeps the coordinate of the place its content came from (the rule the flip ensemble of
  ``denoise.estimators.tweedie_denoise`` uses too), so the model sees mirrored content at its own place.
- ``affine``: rotations of up to ``ROTATE_DEGREES`` about each axis and per-axis scalings log-uniform in
  [1 / ``SCALE``, ``SCALE``] (voxel-size jitter) about the patch centre, with MONAI's ``Affine`` (bilinear).
  The patch is cut with a margin just large enough for the transformed grid (``affine_margin``) and the
  coordinate channels are resampled with the image: coordinates are linear, so trilinear interpolation
  keeps them exact, and they still say where each voxel's content lies in the volume.
- ``gamma``: x -> x^gamma for x > 0 (model units: 0 is the background, 1 the 99.5th percentile), gamma
  log-uniform in [1 / ``GAMMA``, ``GAMMA``]. One fixed intensity map per patch. (MONAI's
  ``RandAdjustContrast`` rescales each patch by its own minimum and maximum first, so the same tissue would
  change differently in a white-matter-only patch and in one that holds CSF.)
- ``bias``: multiplication by exp(sum_k c_k P_k) with the 10 Legendre products of degree <= 2 of the
  VOLUME's coordinates (c_k uniform in [-``BIAS_COEFFICIENT``, ``BIAS_COEFFICIENT``]): a field smooth over
  the whole head, as a receive field is, so one patch sees a gain and a gentle slope. (MONAI's
  ``RandBiasField`` spans its polynomials over the patch itself: a whole head's shading inside one patch.)

Memory is bounded by the patch: the affine's crop is at most SCALE * sqrt(3) (about 2) patch edges long.
Draws: a fixed number per call and enabled augmentation, whatever their outcome, after the sampler's own,
so the streams stay aligned and a sampler without augmentations draws exactly what it drew before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from volscore.config import AUGMENTATIONS

FLIP_PROBABILITY = 0.5  # per axis
AFFINE_PROBABILITY = 0.5  # the other half keeps the voxels as they are (no interpolation blur)
ROTATE_DEGREES = 10.0  # about each axis, uniform in [-10, 10]
SCALE = 1.15  # per axis, log-uniform in [1/1.15, 1.15]
GAMMA_PROBABILITY = 0.5
GAMMA = 1.4  # log-uniform in [1/1.4, 1.4]
BIAS_PROBABILITY = 0.5
BIAS_COEFFICIENT = 0.1  # each of the 10 coefficients of log(field), uniform in [-0.1, 0.1]
BIAS_TERMS = 10


@dataclass
class AugmentDraw:
    """One batch's random choices; None for an augmentation that is off."""

    flip: Tensor | None = None  # (B, 3) bool
    affine: list[np.ndarray | None] | None = None  # per sample: the 3x3 output -> input map, or None
    gamma: Tensor | None = None  # (B,) float64, 1 where not applied
    bias: Tensor | None = None  # (B, BIAS_TERMS) float64, 0 where not applied


def rotation_scaling(angles: Sequence[float], log_scales: Sequence[float]) -> np.ndarray:
    """The 3x3 map R_z R_y R_x diag(exp(log_scales)) from output voxel offsets to input voxel offsets (a scale
    above 1 takes in more of the volume per voxel: the content looks smaller)."""
    a, b, c = (float(v) for v in angles)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag(np.exp(np.asarray(log_scales, dtype=np.float64)))


def affine_margin(matrix: np.ndarray, patch: Sequence[int]) -> list[int]:
    """Voxels to add on each side of each axis so that ``matrix`` applied about the patch centre samples
    (bilinearly, one neighbour further) only inside the crop: output offsets u in [-(p-1)/2, (p-1)/2] reach
    input offsets up to h_a = sum_b |A_ab| (p_b - 1) / 2."""
    half = np.abs(matrix) @ ((np.asarray(patch, dtype=np.float64) - 1) / 2)
    return [max(0, math.ceil(h + 1 - (p - 1) / 2 - 1e-9)) for h, p in zip(half, patch, strict=True)]


def warp(stack: Tensor, matrix: np.ndarray, patch: Sequence[int]) -> Tensor:
    """(C, *crop) -> (C, *patch): MONAI's ``Affine`` with ``matrix`` about the centre, bilinear; the crop must
    be centred on the patch and large enough (``affine_margin``)."""
    from monai.transforms import Affine

    full = np.eye(4)
    full[:3, :3] = matrix
    transform = Affine(affine=full, spatial_size=tuple(patch), mode="bilinear", padding_mode="border")
    out = transform(stack, spatial_size=tuple(patch))
    out = out[0] if isinstance(out, tuple) else out
    return torch.as_tensor(out).float()


def legendre_terms(coords: Tensor) -> Tensor:
    """(3, *s) coordinates -> (BIAS_TERMS, *s): 1, c_i, P2(c_i), c_i c_j (i < j), P2(t) = (3 t^2 - 1) / 2."""
    c = coords.to(torch.float64)
    p2 = (3 * c**2 - 1) / 2
    return torch.stack(
        [torch.ones_like(c[0]), c[0], c[1], c[2], p2[0], p2[1], p2[2], c[0] * c[1], c[0] * c[2], c[1] * c[2]]
    )


class PatchAugmenter:
    """The augmentations ``names`` (a subset of ``config.AUGMENTATIONS``) for ``PatchSampler``: ``draw`` the
    batch's choices from the generator; the sampler cuts affine patches with ``affine_margin`` and ``warp``;
    ``apply`` does the rest (flips, gamma, bias) on the batch."""

    def __init__(self, names: Sequence[str]) -> None:
        names = list(names)
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"augmentations must be distinct names from {AUGMENTATIONS}, got {names}")
        self.names = tuple(n for n in AUGMENTATIONS if n in names)

    def __bool__(self) -> bool:
        return bool(self.names)

    def __repr__(self) -> str:
        return f"PatchAugmenter({list(self.names)})"

    def draw(self, b: int, generator: torch.Generator) -> AugmentDraw:
        def uniform(*shape: int) -> Tensor:  # in [-1, 1)
            return 2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1

        def chosen(p: float) -> Tensor:
            return torch.rand(b, generator=generator, dtype=torch.float64) < p

        out = AugmentDraw()
        if "flip" in self.names:
            out.flip = torch.rand(b, 3, generator=generator, dtype=torch.float64) < FLIP_PROBABILITY
        if "affine" in self.names:
            use = chosen(AFFINE_PROBABILITY)
            angles = uniform(b, 3) * math.radians(ROTATE_DEGREES)
            log_scales = uniform(b, 3) * math.log(SCALE)
            out.affine = [
                rotation_scaling(angles[i].tolist(), log_scales[i].tolist()) if use[i] else None
                for i in range(b)
            ]
        if "gamma" in self.names:
            use = chosen(GAMMA_PROBABILITY)
            out.gamma = torch.where(
                use, torch.exp(uniform(b) * math.log(GAMMA)), torch.ones(b, dtype=torch.float64)
            )
        if "bias" in self.names:
            use = chosen(BIAS_PROBABILITY)
            out.bias = uniform(b, BIAS_TERMS) * BIAS_COEFFICIENT * use[:, None]
        return out

    @staticmethod
    def apply(x: Tensor, coords: Tensor, draw: AugmentDraw) -> tuple[Tensor, Tensor]:
        """Flips (image and coordinates together), then gamma, then the bias field (in the coordinates the
        voxels carry after the flips), on (B, 1, *p) and (B, 3, *p); returns new tensors."""
        x, coords = x.clone(), coords.clone()
        for i in range(x.shape[0]):
            if draw.flip is not None and bool(draw.flip[i].any()):
                dims = [1 + a for a in range(3) if draw.flip[i, a]]
                x[i] = x[i].flip(dims)
                coords[i] = coords[i].flip(dims)
            if draw.gamma is not None and float(draw.gamma[i]) != 1.0:
                xi = x[i]
                x[i] = torch.where(xi > 0, xi.clamp(min=0) ** float(draw.gamma[i]), xi)
            if draw.bias is not None and bool((draw.bias[i] != 0).any()):
                log_field = torch.einsum("k,k...->...", draw.bias[i], legendre_terms(coords[i]))
                x[i] = (x[i] * torch.exp(log_field)).float()
        return x, coords
