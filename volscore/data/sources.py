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


def resample(data: np.ndarray, affine: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a volume to isotropic ``spacing`` (mm) with MONAI's ``Spacing`` (trilinear)."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    out = Spacing(pixdim=(spacing,) * 3, mode="bilinear")(
        MetaTensor(torch.from_numpy(data)[None], affine=affine)
    )
    return out[0].numpy().astype(np.float32), np.asarray(out.affine, dtype=np.float64)


def open_source(
    data: str | Sequence[str],
    patch_size: int = 32,
    coords: bool = True,
    spacing: float | None = None,
    full_volume: bool = False,
    volume_index: int | None = None,
) -> Source:
    """The source for ``data``: ``"mnist"``, ``"mnist:DIR"`` (IDX files), ``"shapes:primitives[@SIZE]"``,
    ``"shapes:digits[@SIZE]"``, NIfTI paths or ``"mni152"``."""
    spec = [data] if isinstance(data, str) else list(data)
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
    return _nifti_source(spec, patch_size, coords, spacing, full_volume, volume_index)


def _nifti_source(
    spec: list[str],
    patch_size: int,
    coords: bool,
    spacing: float | None,
    full_volume: bool,
    volume_index: int | None,
) -> Source:
    from volscore.data.nifti import IntensityScaler, load_volume, resolve_paths
    from volscore.data.patches import MNI152_TRAIN_REGION, PatchSampler

    paths = resolve_paths(spec[0] if len(spec) == 1 else spec)
    volumes, scalers, zooms = [], [], []
    for p in paths:
        vol = load_volume(p, volume_index)
        data, affine = vol.data, vol.affine
        if spacing is not None:
            data, affine = resample(data, affine, spacing)
        scaler = IntensityScaler.fit(data)
        data = np.ascontiguousarray(data, dtype=np.float32)
        # In place (the loaded array is ours, never a memory map of the input file), then cached as
        # float16, one volume at a time: see PatchSampler's memory note.
        data = scaler.forward_(data if data.flags.writeable else data.copy())
        volumes.append(torch.from_numpy(data).to(torch.float16))
        del vol, data
        scalers.append(scaler.to_dict())
        zooms.append([float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(0))])
    region = None
    if spec == ["mni152"] and not full_volume:
        # The template's hold-out (y >= 120 at 1 mm) stays out of training, at any resampled spacing.
        stop = MNI152_TRAIN_REGION[1].stop
        if spacing is not None:
            stop = int(math.floor(stop * 1.0 / spacing))
        region = (slice(None), slice(0, stop), slice(None))
    shapes = [list(v.shape) for v in volumes]
    sampler = PatchSampler(volumes, patch_size, coords=coords, region=region, dtype=torch.float16)
    meta = {
        "kind": "nifti",
        "paths": [str(p) for p in paths],
        "scalers": scalers,
        "zooms": zooms,
        "shapes": shapes,
        "spacing": spacing,
        "region_axis1_stop": None if region is None else region[1].stop,
    }
    return Source(sampler, 3, meta)
