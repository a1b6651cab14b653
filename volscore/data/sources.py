"""Training data sources from a ``--data`` spec: MNIST images or patches of NIfTI volumes.

Every source has ``sample(batch_size, generator) -> (x, coords | None)``, ``sample_shape`` (C, *spatial),
``coord_channels`` and a JSON-able ``meta`` dict (what a run needs to write outputs back: voxel spacing,
intensity scalers, the training region), so the trainer treats 2D and 3D alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

SHAPE_PREFIX = "shapes:"


@dataclass
class Source:
    sampler: Any
    spatial_dims: int
    meta: dict[str, Any] = field(default_factory=dict)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        return self.sampler.sample(batch_size, generator)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.sampler.sample_shape)

    @property
    def coord_channels(self) -> int:
        return int(self.sampler.coord_channels)


def resample(
    data: np.ndarray, affine: np.ndarray, spacing: float | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a volume to ``spacing`` (mm; one number: isotropic) with MONAI's ``Spacing`` (trilinear); the
    axes keep their directions and the new grid covers the old field of view."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    pixdim = (float(spacing),) * 3 if isinstance(spacing, (int, float)) else tuple(float(s) for s in spacing)
    out = Spacing(pixdim=pixdim, mode="bilinear")(
        MetaTensor(torch.from_numpy(np.asarray(data, dtype=np.float32))[None], affine=affine)
    )
    return out[0].numpy().astype(np.float32), np.asarray(out.affine, dtype=np.float64)


def resample_to(
    data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape: Sequence[int]
) -> np.ndarray:
    """Resample a volume onto another grid (``target_affine``, ``target_shape``) with MONAI's
    ``SpatialResample`` (trilinear, border values outside): e.g. back onto a scan's own grid after
    ``resample``."""
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    out = SpatialResample(mode="bilinear", padding_mode="border")(
        MetaTensor(torch.from_numpy(np.asarray(data, dtype=np.float32))[None], affine=affine),
        dst_affine=torch.as_tensor(np.asarray(target_affine, dtype=np.float64)),
        spatial_size=[int(n) for n in target_shape],
    )
    return out[0].numpy().astype(np.float32)


def voxel_sizes(affine: np.ndarray) -> list[float]:
    """The voxel size (mm) along each array axis: the lengths of the affine's columns."""
    return [float(z) for z in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))]


def open_source(
    data: str | Sequence[str],
    patch_size: int = 32,
    coords: bool = True,
    spacing: float | None = None,
    full_volume: bool = False,
    volume_index: int | None = None,
    augment: Sequence[str] = (),
    multires: Sequence[float] | None = None,
) -> Source:
    """The source for ``data``: ``"mnist"``, ``"mnist:DIR"`` (IDX files), ``"shapes:primitives[@SIZE]"``,
    ``"shapes:digits[@SIZE]"``, NIfTI paths or ``"mni152"``. ``augment`` and ``multires`` (NIfTI only):
    ``TrainConfig``'s fields of those names."""
    spec = [data] if isinstance(data, str) else list(data)
    nifti = not (len(spec) == 1 and (spec[0] in ("mnist",) or spec[0].startswith(("mnist:", SHAPE_PREFIX))))
    if (augment or multires) and not nifti:
        raise ValueError(f"--augment and --multires are for NIfTI volumes, not {spec[0]}")
    if len(spec) == 1 and (spec[0] == "mnist" or spec[0].startswith("mnist:")):
        from volscore.data.mnist import MnistSource

        root = spec[0].split(":", 1)[1] if ":" in spec[0] else None
        return Source(MnistSource.from_split("train", root=root), 2, {"kind": "mnist", "root": root})
    if len(spec) == 1 and spec[0].startswith(SHAPE_PREFIX):
        from volscore.data.shapes import ShapeSource

        shapes = ShapeSource.from_spec(spec[0][len(SHAPE_PREFIX) :])  # primitives, digits, primitives@64
        if patch_size < shapes.size:  # e.g. shapes:primitives@64 with 32^3 patches and coordinates
            sampler = shapes.patches(patch_size, coords)
            return Source(sampler, 3, {**shapes.meta, "patch_size": patch_size, "coords": coords})
        return Source(shapes, 3, shapes.meta)
    return _nifti_source(spec, patch_size, coords, spacing, full_volume, volume_index, augment, multires)


def _nifti_source(
    spec: list[str],
    patch_size: int,
    coords: bool,
    spacing: float | None,
    full_volume: bool,
    volume_index: int | None,
    augment: Sequence[str] = (),
    multires: Sequence[float] | None = None,
) -> Source:
    """Patches of NIfTI volumes, each resampled to ``spacing`` if given and scaled by its own percentiles.

    ``multires``: every volume is also resampled (from its file) to each of these spacings and scaled like
    its first copy; patches are drawn from all copies alike (``PatchSampler`` draws volumes uniformly), each
    with its own coordinates. The meta's ``scalers``, ``zooms`` and ``shapes`` stay one per file (the first
    copies, which ``Run`` reads); ``multires`` lists the spacings and the extra copies' shapes.
    """
    from volscore.data.nifti import IntensityScaler, load_volume, resolve_paths
    from volscore.data.patches import MNI152_TRAIN_REGION, PatchSampler

    def cached(data: np.ndarray, scaler: IntensityScaler) -> Tensor:
        # In place (the array is ours, never a memory map of the input file), then cached as float16, one
        # volume at a time: see PatchSampler's memory note.
        data = np.ascontiguousarray(data, dtype=np.float32)
        return torch.from_numpy(scaler.forward_(data if data.flags.writeable else data.copy())).to(
            torch.float16
        )

    paths = resolve_paths(spec[0] if len(spec) == 1 else spec)
    volumes, scalers, zooms, extra = [], [], [], []
    for p in paths:
        vol = load_volume(p, volume_index)
        data, affine = vol.data, vol.affine
        if spacing is not None:
            data, affine = resample(data, affine, spacing)
        scaler = IntensityScaler.fit(data)
        volumes.append(cached(data, scaler))
        del data
        for s in multires or ():
            extra.append(cached(resample(vol.data, vol.affine, s)[0], scaler))
        del vol
        scalers.append(scaler.to_dict())
        zooms.append(voxel_sizes(affine))
    region = None
    stop = None
    if spec == ["mni152"] and not full_volume:
        # The template's hold-out (y >= 120 at 1 mm) stays out of training, at any resampled spacing.
        def stop_at(mm: float | None) -> int:
            y = MNI152_TRAIN_REGION[1].stop
            return y if mm is None else int(math.floor(y * 1.0 / mm))

        stop = stop_at(spacing)
        region = (slice(None), slice(0, stop), slice(None))
        if multires:
            region = [region] + [(slice(None), slice(0, stop_at(s)), slice(None)) for s in multires]
    shapes = [list(v.shape) for v in volumes]
    sampler = PatchSampler(
        volumes + extra, patch_size, coords=coords, region=region, dtype=torch.float16, augment=augment
    )
    meta = {
        "kind": "nifti",
        "paths": [str(p) for p in paths],
        "scalers": scalers,
        "zooms": zooms,
        "shapes": shapes,
        "spacing": spacing,
        "region_axis1_stop": stop,
    }
    if multires:
        meta["multires"] = {
            "spacings": [float(s) for s in multires],
            "shapes": [list(v.shape) for v in extra],
        }
    if augment:
        meta["augment"] = list(augment)
    return Source(sampler, 3, meta)
