"""Random 3D training patches from in-memory volumes, with coordinate channels (PatchDDM).

Coordinates are normalised over the WHOLE volume, so a patch model knows where it is; they extend
linearly outside the volume, which padded patches and the stitching sampler's shifted tiles rely on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from volscore.data.augment import PatchAugmenter

Region = tuple[slice, slice, slice]

# The bundled MNI template is left-right symmetric, so hold out along anterior-posterior (axis 1):
# training patches lie entirely in y < 120; y >= 120 is kept for evaluation.
MNI152_TRAIN_REGION: Region = (slice(None), slice(0, 120), slice(None))
MNI152_HOLDOUT_REGION: Region = (slice(None), slice(120, None), slice(None))
# A 96^3 block of brain inside the hold-out (x 51:147, y 120:216, z 37:133 at 1 mm): the denoising benchmark's
# and the demo's clean reference, which no bundled denoiser was trained on.
MNI152_HOLDOUT_CROP: Region = (slice(51, 147), slice(120, 216), slice(37, 133))


def default_region(name: str) -> Region | None:
    """The training region to use for a named data set: the MNI hold-out split, else the whole volume."""
    return MNI152_TRAIN_REGION if name == "mni152" else None


def _normalise(index: Tensor, n: Tensor | int) -> Tensor:
    """Voxel index i of an axis of n voxels -> -1 + 2 i / (n - 1) (0 if n == 1), float64.

    Both coordinate_grid and coordinate_patch (and the batched sampler) go through here, so crops agree
    bit for bit.
    """
    n = torch.as_tensor(n, dtype=torch.float64)
    span = torch.clamp(n - 1.0, min=1.0)
    zero = torch.zeros((), dtype=torch.float64)
    return torch.where(n > 1, -1.0 + 2.0 * index.to(torch.float64) / span, zero)


def _as_size(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    out = (int(size),) * ndim if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(out) != ndim or min(out) < 1:
        raise ValueError(f"size {size} does not give {ndim} positive lengths")
    return out


def coordinate_patch(
    volume_shape: Sequence[int], starts: Sequence[int], patch_size: int | Sequence[int]
) -> Tensor:
    """Coordinates of the patch at `starts` of a volume of `volume_shape`: (ndim, *patch_size) float32.

    Computed per axis (no full grid in memory); `starts` may lie outside the volume (linear extrapolation).
    """
    ndim = len(volume_shape)
    size = _as_size(patch_size, ndim)
    if len(starts) != ndim:
        raise ValueError(f"starts {tuple(starts)} do not match volume shape {tuple(volume_shape)}")
    axes = [
        _normalise(torch.arange(int(s), int(s) + p), int(n)).float()
        for s, p, n in zip(starts, size, volume_shape, strict=True)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def coordinate_grid(shape: Sequence[int]) -> Tensor:
    """Coordinates of every voxel, each axis linear in [-1, 1]: (len(shape), *shape) float32."""
    return coordinate_patch(shape, [0] * len(shape), shape)


class PatchBatch(NamedTuple):
    x: Tensor  # (B, 1, pz, py, px) float32
    coords: Tensor | None  # (B, 3, pz, py, px) float32, or None
    starts: Tensor  # (B, 3) int64, in the original volume's voxels (negative where padded)
    volume_index: Tensor  # (B,) int64


class PatchSampler:
    """Random patches from a list of (already scaled) 3D volumes, held in memory.

    A fraction `foreground_fraction` of patches contains a voxel above `foreground_threshold` (it is the
    crop centre, shifted inward at borders, as in MONAI RandCropByPosNegLabel); the rest are uniform over
    all allowed positions. `region` (in voxels of each volume) bounds where patches may lie, e.g. to keep a
    hold-out out of training, while coordinates stay relative to the whole volume. Volumes smaller than the
    patch are zero-padded (centred) to the patch size. Each volume is drawn with equal probability.
    The threshold is in the volumes' (scaled) units: the default 0.1 suits data scaled to [0, 1].

    MONAI's own helpers (map_binary_to_indices + generate_pos_neg_label_crop_centers) are not used: they
    keep background indices too, as int64 (about 1.6x the float32 volume for a brain scan), and draw from
    a numpy RandomState rather than a torch.Generator.

    Memory: volumes are cached as ``dtype``; float32 C-contiguous arrays are then shared, not copied, and
    float16 halves the cache (the training data path uses it: in model units, [0, 1] for most voxels,
    float16's step is at most 2^-11 = 4.9e-4, far below the smallest training sigma); the foreground is stored
    as int32 indices of 4^3-voxel blocks (computed slab by slab); a foreground patch is centred on a
    uniform voxel of a uniform foreground block.

    ``region`` may also be a list with one region per volume (multi-resolution sources: the same hold-out at
    each volume's own spacing). ``augment``: names from ``config.AUGMENTATIONS`` (``data.augment``), drawn
    after the patch positions from the same generator; none (the default) draws and returns exactly what a
    sampler without augmentations does.
    """

    def __init__(
        self,
        volumes: Sequence[Any],
        patch_size: int | Sequence[int] = 32,
        *,
        coords: bool = True,
        foreground_threshold: float = 0.1,
        foreground_fraction: float = 0.9,
        region: Region | Sequence[Region] | None = None,
        dtype: torch.dtype = torch.float32,
        augment: Sequence[str] | None = None,
    ) -> None:
        if len(volumes) == 0:
            raise ValueError("PatchSampler needs at least one volume")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.patch_size = _as_size(patch_size, 3)
        self.coords = coords
        self.foreground_threshold = float(foreground_threshold)
        self.foreground_fraction = float(foreground_fraction)
        self.region = region
        self._regions = self._per_volume(region, len(volumes))
        self.augment = PatchAugmenter(augment or ())
        # A block fits within half a patch, so a patch centred on any voxel of a foreground block contains
        # the whole block, and so a foreground voxel (also where the patch is shifted inward at a border).
        self._block = max(1, min(4, min(self.patch_size) // 2))
        self.volumes: list[Tensor] = []  # padded where smaller than the patch
        shapes, pads, lows, highs, fg_parts = [], [], [], [], []
        for i, vol in enumerate(volumes):
            data = self._as_tensor(vol, i)
            shape = tuple(data.shape)
            lo, hi = self._allowed_box(shape, i)
            # Pad (centred) only axes shorter than the patch; the allowed box then spans the padded axis.
            pad = [max(0, p - n) // 2 if n < p else 0 for n, p in zip(shape, self.patch_size, strict=True)]
            if any(n < p for n, p in zip(shape, self.patch_size, strict=True)):
                widths = [(pad[a], max(0, self.patch_size[a] - shape[a]) - pad[a]) for a in range(3)]
                data = torch.from_numpy(np.pad(data.numpy(), widths, mode="constant"))
                for a in range(3):
                    if shape[a] < self.patch_size[a]:
                        lo[a], hi[a] = 0, self.patch_size[a]
                    else:
                        lo[a], hi[a] = lo[a] + pad[a], hi[a] + pad[a]
            fg_parts.append(self._foreground(data, lo, hi) if self.foreground_fraction > 0 else None)
            self.volumes.append(data if data.dtype == dtype else data.to(dtype))
            shapes.append(shape)
            pads.append(pad)
            lows.append(lo)
            highs.append(hi)
        self._shapes = torch.tensor(shapes, dtype=torch.int64)  # (V, 3) original shapes, for coordinates
        self._pads = torch.tensor(pads, dtype=torch.int64)  # (V, 3) padding before each axis
        self._padded = torch.tensor([v.shape for v in self.volumes], dtype=torch.int64)  # (V, 3)
        self._lo = torch.tensor(lows, dtype=torch.int64)  # (V, 3) allowed box, padded voxels
        self._ps = torch.tensor(self.patch_size, dtype=torch.int64)
        self._n_starts = torch.tensor(highs, dtype=torch.int64) - self._lo - self._ps + 1
        k = self._block
        self._fg_blocks = (-(-(torch.tensor(highs) - self._lo) // k)).to(torch.int64)  # (V, 3) block grid
        counts = [0 if f is None else len(f) for f in fg_parts]
        self._fg_count = torch.tensor(counts, dtype=torch.int64)  # (V,)
        self._fg_offset = torch.cumsum(self._fg_count, 0) - self._fg_count  # (V,) into self._fg
        parts = [f for f in fg_parts if f is not None and len(f)]
        # (sum of counts,) flat block indices in each volume's block grid
        self._fg = torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.int32)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, *spatial) of one sample; C = 1 image channel."""
        return (1, *self.patch_size)

    @property
    def coord_channels(self) -> int:
        return 3 if self.coords else 0

    @staticmethod
    def _as_tensor(vol: Any, i: int) -> Tensor:
        if isinstance(vol, Tensor):
            data = vol.detach().to("cpu", torch.float32).contiguous()
        else:
            array = np.ascontiguousarray(np.asarray(vol, dtype=np.float32))  # no copy if already so
            with warnings.catch_warnings():  # read-only arrays are fine: we never write to them
                warnings.simplefilter("ignore", UserWarning)
                data = torch.from_numpy(array)
        if data.ndim != 3 or 0 in data.shape:
            raise ValueError(f"volume {i}: expected a non-empty 3D array, got shape {tuple(data.shape)}")
        return data

    @staticmethod
    def _per_volume(region: Region | Sequence[Region] | None, n: int) -> list[Region | None]:
        # One region is a sequence of slices; per-volume regions are a list of such (or None).
        if isinstance(region, list) and not all(isinstance(r, slice) for r in region):
            if len(region) != n:
                raise ValueError(f"{len(region)} regions for {n} volumes")
            return list(region)
        return [region] * n  # type: ignore[list-item]

    def _allowed_box(self, shape: tuple[int, ...], i: int) -> tuple[list[int], list[int]]:
        """[lo, hi) per axis where patches may lie: the region clipped to the volume."""
        region = self._regions[i]
        if region is None:
            return [0, 0, 0], list(shape)
        if len(region) != 3:
            raise ValueError(f"region needs three slices, got {region}")
        lo, hi = [], []
        for a, (sl, n, p) in enumerate(zip(region, shape, self.patch_size, strict=True)):
            start, stop, step = sl.indices(n)
            if step != 1:
                raise ValueError(f"region slice {sl} on axis {a}: step must be 1")
            if stop - start < p and not (start == 0 and stop == n):
                raise ValueError(
                    f"volume {i}: region {start}:{stop} on axis {a} is shorter than the patch ({p})"
                )
            lo.append(start)
            hi.append(max(stop, start))
        return lo, hi

    def _foreground(self, data: Tensor, lo: list[int], hi: list[int]) -> np.ndarray:
        """Flat indices (int32) of the foreground blocks inside the allowed box.

        Blocks of ``self._block`` voxels per axis, aligned to ``lo``; a block is foreground if any voxel in it
        is above the threshold. One index per block, not per voxel: 1/64 of the memory for 4^3 blocks
        (a 256^3 scan's voxel index would be as large as the volume itself).
        """
        k = self._block
        array = data.numpy()
        nb = [-(-(h - lo_) // k) for lo_, h in zip(lo, hi, strict=True)]  # blocks per axis
        parts = []
        # Slab by slab along axis 0 (one block thick), so the boolean mask stays one slab big.
        for bz in range(nb[0]):
            z0 = lo[0] + bz * k
            mask = array[z0 : min(z0 + k, hi[0]), lo[1] : hi[1], lo[2] : hi[2]] > self.foreground_threshold
            pad = [(0, k - mask.shape[0]), (0, nb[1] * k - mask.shape[1]), (0, nb[2] * k - mask.shape[2])]
            blocks = np.pad(mask, pad).reshape(k, nb[1], k, nb[2], k).any(axis=(0, 2, 4))
            by, bx = np.nonzero(blocks)
            parts.append(((bz * nb[1] + by) * nb[2] + bx).astype(np.int32))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def sample_with_starts(self, batch_size: int, generator: torch.Generator) -> PatchBatch:
        """Draw `batch_size` patches; the same generator state gives the same patches."""
        b = int(batch_size)
        # A fixed number of draws per call, whatever the outcome, so streams stay aligned.
        vol = torch.randint(len(self.volumes), (b,), generator=generator)
        use_fg = torch.rand(b, generator=generator) < self.foreground_fraction
        u_fg = torch.rand(b, generator=generator, dtype=torch.float64)
        u_start = torch.rand(b, 3, generator=generator, dtype=torch.float64)

        n_starts = self._n_starts[vol]  # (B, 3)
        lo = self._lo[vol]
        uniform = lo + torch.minimum((u_start * n_starts).long(), n_starts - 1)
        count = self._fg_count[vol]
        use_fg &= count > 0
        starts = uniform
        if bool(use_fg.any()):
            k = torch.minimum((u_fg * count).long(), (count - 1).clamp(min=0))
            flat = self._fg[(self._fg_offset[vol] + k).clamp(max=max(len(self._fg) - 1, 0))].long()
            nb = self._fg_blocks[vol]
            block = torch.stack(
                [flat // (nb[:, 1] * nb[:, 2]), (flat // nb[:, 2]) % nb[:, 1], flat % nb[:, 2]], 1
            )
            # A uniform voxel of the block (u_start is free: these samples do not use the uniform start);
            # the last block on an axis may be cut short by the box.
            first = lo + block * self._block
            hi = lo + n_starts + self._ps - 1
            extent = torch.minimum(torch.full_like(first, self._block), hi - first)
            centre = first + torch.minimum((u_start * extent).long(), extent - 1)
            half = self._ps // 2
            # Shift the patch inward at borders: it still contains the chosen foreground voxel.
            centred = torch.minimum(torch.maximum(centre - half, lo), lo + n_starts - 1)
            starts = torch.where(use_fg[:, None], centred, uniform)

        if self.augment:
            return self._augmented(starts, vol, self.augment.draw(b, generator))
        pz, py, px = self.patch_size
        x = torch.empty((b, 1, pz, py, px), dtype=torch.float32)
        for i, (v, (z, y, xx)) in enumerate(zip(vol.tolist(), starts.tolist(), strict=True)):
            x[i, 0] = self.volumes[v][z : z + pz, y : y + py, xx : xx + px]
        starts = starts - self._pads[vol]  # back to the original volume's voxels
        coords = self._batch_coords(self._shapes[vol], starts) if self.coords else None
        return PatchBatch(x, coords, starts, vol)

    def _crop(self, v: int, start: Sequence[int], size: Sequence[int]) -> Tensor:
        """float32 crop of (padded) volume ``v`` at ``start``, zero outside it (as the padding of small
        volumes): an affine patch's margin may reach past the volume."""
        volume = self.volumes[v]
        out = torch.zeros(tuple(size), dtype=torch.float32)
        src, dst = [], []
        for s, n, m in zip(start, size, volume.shape, strict=True):
            a, b = max(s, 0), min(s + n, m)
            if b <= a:
                return out
            src.append(slice(a, b))
            dst.append(slice(a - s, b - s))
        out[tuple(dst)] = volume[tuple(src)]
        return out

    def _augmented(self, starts: Tensor, vol: Tensor, draw: Any) -> PatchBatch:
        """The batch at ``starts`` with the augmentations of ``draw``: affine patches are cut with a margin
        warped (image and coordinates together), then flips, gamma and bias (``PatchAugmenter.apply``).
        Coordinates are always made (the bias field lives in them) and dropped at the end if off."""
        from volscore.data.augment import affine_margin, warp

        b, patch = starts.shape[0], self.patch_size
        x = torch.empty((b, 1, *patch), dtype=torch.float32)
        original = starts - self._pads[vol]  # the original volume's voxels
        coords = self._batch_coords(self._shapes[vol], original)
        affine = draw.affine or [None] * b
        for i, (v, start) in enumerate(zip(vol.tolist(), starts.tolist(), strict=True)):
            if affine[i] is None:
                x[i, 0] = self._crop(v, start, patch)
                continue
            margin = affine_margin(affine[i], patch)
            size = [p + 2 * m for p, m in zip(patch, margin, strict=True)]
            low = [s - m for s, m in zip(start, margin, strict=True)]
            grid = coordinate_patch(
                self._shapes[v].tolist(),
                [o - m for o, m in zip(original[i].tolist(), margin, strict=True)],
                size,
            )
            out = warp(torch.cat([self._crop(v, low, size)[None], grid]), affine[i], patch)
            x[i, 0], coords[i] = out[0], out[1:]
        x, coords = self.augment.apply(x, coords, draw)
        return PatchBatch(x, coords if self.coords else None, original, vol)

    def _batch_coords(self, shapes: Tensor, starts: Tensor) -> Tensor:
        """coordinate_patch for every sample at once: (B, 3, pz, py, px)."""
        b = starts.shape[0]
        out = np.empty((b, 3, *self.patch_size), dtype=np.float32)
        for a, p in enumerate(self.patch_size):
            axis = _normalise(starts[:, a : a + 1] + torch.arange(p), shapes[:, a : a + 1]).float()  # (B, p)
            view = [b, 1, 1, 1]
            view[a + 1] = p
            # numpy's broadcast assignment: torch's broadcasting copy into this strided view took
            # 10-40 ms per batch on the 2-core CPU, numpy's takes about 0.1 ms.
            out[:, a] = axis.numpy().reshape(view)
        return torch.from_numpy(out)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """(x (B, 1, p, p, p), coords (B, 3, p, p, p) or None): the trainer's data interface."""
        batch = self.sample_with_starts(batch_size, generator)
        return batch.x, batch.coords
