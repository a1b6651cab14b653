"""Whole-volume score functions stitched from patch evaluations.

A patch score function ``patch_fn(x, sigma, coords)`` (a model trained on patches) becomes a score function
over volumes of any size with the one signature every sampler expects, ``score_fn(x, sigma)``:

- ``"shift"``: PaDIS-style random-shift tiling. Every call draws a new grid offset, so tile boundaries move
  between Langevin steps and no seam persists; the tiles do not overlap, so each voxel is evaluated once.
- ``"blend"``: overlapping tiles blended with a Gaussian window (MONAI ``sliding_window_inference``).
- ``"fixed"``: the shift tiling with offset 0 at every call; only the seam baseline for benchmarks.

The scores are stitched first; the sampler then takes one global Langevin step with one global noise draw
(stitching independent per-patch chains afterwards would leave seams). Everything is rank-agnostic: 2D images
(B, C, H, W) work like 3D volumes (B, C, D, H, W), with one coordinate channel per spatial axis.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from volscore.data.patches import coordinate_patch
from volscore.machine import HEAP_SLACK, malloc_trim, rss_bytes
from volscore.noise import as_sigma_batch
from volscore.sampling.settings import STITCH_MODES

# A lone tile with D * H at most this is evaluated as a batch of two (see _score_tiles).
LONE_TILE_SLOW_DH = 20480 // 16

# patch_fn(x (N, C, *p), sigma (N,), coords (N, d, *p) | None) -> score (N, C, *p)
PatchFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def as_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{name} must be an int or have {ndim} entries, got {value}")
    return out


def _tile_coords(
    shape: Sequence[int], start: Sequence[int], size: Sequence[int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Whole-volume coordinates of one tile (d, *size); tiles past the volume extrapolate linearly."""
    return coordinate_patch(shape, start, size).to(dtype=dtype, device=device)


def axis_segments(n: int, p: int, offset: int) -> list[tuple[int, int]]:
    """(start, size) of the tiles along one axis of length n >= p, for a grid cut at offset + k p.

    The partial pieces at both ends are merged into their neighbours, so the tiles cover exactly n voxels and
    are at least p long (below 2p when n >= 3p): padding by the offset instead would cost
    ceil((n + offset) / p) tiles per axis, (9/8)^3 = 1.42x the work at n = 256, p = 32.
    """
    cuts = list(range(offset % p or p, n, p))
    if cuts and cuts[0] < p:  # leading piece shorter than a patch
        cuts.pop(0)
    if cuts and n - cuts[-1] < p:  # trailing piece shorter than a patch
        cuts.pop()
    bounds = [0, *cuts, n]
    return [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _pad_to_patch(x: Tensor, patch: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """Pad the spatial axes shorter than the patch up to the patch size, split evenly; return (x, low pads).

    Replicate, not reflect: reflection needs the pad to be shorter than the axis (fails for tiny volumes),
    and zeros would put an artificial edge into the model's view; replicate keeps intensities in range.
    """
    shape = x.shape[2:]
    lo = tuple(max(p - n, 0) // 2 for n, p in zip(shape, patch, strict=True))
    hi = tuple(max(p - n, 0) - low for n, p, low in zip(shape, patch, lo, strict=True))
    if not any(lo) and not any(hi):
        return x, lo
    # F.pad takes (low, high) pairs from the last axis backwards
    pads = [v for pair in reversed(list(zip(lo, hi, strict=True))) for v in pair]
    return F.pad(x, pads, mode="replicate"), lo


def _crop(out: Tensor, lo: tuple[int, ...], shape: Sequence[int]) -> Tensor:
    if out.shape[2:] == tuple(shape):
        return out
    return out[(..., *(slice(a, a + n) for a, n in zip(lo, shape, strict=True)))].contiguous()


def random_offset(patch_size: Sequence[int], generator: torch.Generator | None = None) -> tuple[int, ...]:
    """A grid offset uniform in [0, p) per axis, drawn from ``generator`` (the global RNG if None)."""
    device = generator.device if generator is not None else "cpu"
    return tuple(int(torch.randint(p, (), generator=generator, device=device)) for p in patch_size)


def stitch_score(
    patch_fn: PatchFn,
    x: Tensor,
    sigma: float | Tensor,
    patch_size: int | Sequence[int],
    offset: int | Sequence[int] = 0,
    tile_batch: int = 8,
    coords: bool = True,
) -> Tensor:
    """Score of a whole volume x (B, C, *spatial) from non-overlapping tiles of a grid cut at offset + k p.

    Tiles are grouped by shape (at most 3 sizes per axis) and evaluated in balanced batches of at most
    ``tile_batch`` tiles and at most ``tile_batch * prod(patch_size)`` voxels or two tiles (each below (2p)^d
    voxels for volumes of at least 3p per axis), written straight into a preallocated output: peak memory is
    one batch of tiles plus the output, never a stack of all tiles.
    Axes shorter than the patch are padded (replicate) and cropped back.
    """
    b, c, *shape = x.shape
    patch = as_tuple(patch_size, len(shape), "patch_size")
    off = as_tuple(offset, len(shape), "offset")
    sigma = as_sigma_batch(sigma, b, x.device)
    xp, lo = _pad_to_patch(x, patch)
    segments = [axis_segments(n, p, o) for n, p, o in zip(xp.shape[2:], patch, off, strict=True)]

    classes: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}  # tile size -> [(item, start)]
    for item in range(b):
        for tile in itertools.product(*segments):
            classes.setdefault(tuple(s for _, s in tile), []).append((item, tuple(a for a, _ in tile)))

    out = torch.empty_like(xp)
    trim = malloc_trim() if x.device.type == "cpu" else None
    start = rss_bytes() if trim is not None else None
    for size, tiles in classes.items():
        bounds = _batch_bounds(len(tiles), size, patch, tile_batch)
        for i, j in zip(bounds[:-1], bounds[1:], strict=True):
            _score_tiles(patch_fn, xp, sigma, tiles[i:j], size, shape, lo, coords, tile_batch, out)
            if trim is not None and start is not None and (rss_bytes() or 0) - start > HEAP_SLACK:
                trim(0)
    if trim is not None:
        trim(0)
    return _crop(out, lo, shape)


def _batch_bounds(n: int, size: tuple[int, ...], patch: tuple[int, ...], tile_batch: int) -> list[int]:
    """Bounds of balanced batches of n same-shape tiles: at most ``tile_batch`` tiles and, unless that leaves
    fewer than two tiles per batch, at most ``tile_batch * prod(patch)`` voxels (merged tiles are larger)."""
    per_call = min(tile_batch, max(2, tile_batch * math.prod(patch) // math.prod(size)))
    k = -(-n // per_call)
    return [n * i // k for i in range(k + 1)]


def _score_tiles(
    patch_fn: PatchFn,
    xp: Tensor,
    sigma: Tensor,
    tiles: list[tuple[int, tuple[int, ...]]],
    size: tuple[int, ...],
    shape: Sequence[int],
    lo: tuple[int, ...],
    coords: bool,
    tile_batch: int,
    out: Tensor,
) -> None:
    """Evaluate one batch of same-shape tiles and write their scores into ``out`` (in place)."""
    # PyTorch's CPU convolution takes its slow native kernel for a batch of one small input (ConvUtils.h,
    # use_mkldnn: N == 1 and N*C*D*H <= 20480): for the small preset (16 channels at the top) a lone tile
    # with D*H <= 20480 / 16 ran 2.8-4.3x slower than half a batch of two, so evaluating it twice is cheaper
    # (and gives the same score for any network that treats samples independently). A larger lone tile
    # runs at 1.05-1.5x half a pair in fp32 and 1.0-1.1x in bf16: evaluating it twice would double its
    # cost, and the shift grid's merged end tiles are mostly alone in their shape (README, sampling speed).
    n = len(tiles)
    if n == 1 and tile_batch >= 2 and xp.device.type == "cpu" and size[0] * size[1] <= LONE_TILE_SLOW_DH:
        tiles = tiles * 2
    items = [item for item, _ in tiles]
    slices = [tuple(slice(a, a + s) for a, s in zip(start, size, strict=True)) for _, start in tiles]
    # (N, C, *size): a copy, so the batch is all that tile extraction holds on to
    x_tiles = torch.stack([xp[(i, slice(None), *sl)] for i, sl in zip(items, slices, strict=True)])
    coords_t = None
    if coords:  # start - lo: position in the unpadded volume, so padded voxels get extrapolated coordinates
        starts = [[a - p for a, p in zip(start, lo, strict=True)] for _, start in tiles]
        coords_t = torch.stack([_tile_coords(shape, st, size, xp.dtype, xp.device) for st in starts])
    score = patch_fn(x_tiles, sigma[items], coords_t)
    if score.shape != x_tiles.shape:
        raise ValueError(
            f"patch_fn returned shape {tuple(score.shape)} for tiles of shape {tuple(x_tiles.shape)}"
        )
    for k in range(n):
        out[(items[k], slice(None), *slices[k])] = score[k]


def _predict_window(window: Tensor, patch_fn: PatchFn, channels: int, sigma: Tensor, coords: bool) -> Tensor:
    # MONAI predictor: the coordinates travel as extra input channels; split them off again here.
    sigma_n = sigma.expand(window.shape[0])
    return patch_fn(window[:, :channels], sigma_n, window[:, channels:] if coords else None)


def blend_score(
    patch_fn: PatchFn,
    x: Tensor,
    sigma: float | Tensor,
    patch_size: int | Sequence[int],
    overlap: float = 0.5,
    tile_batch: int = 8,
    coords: bool = True,
    offset: int | Sequence[int] = 0,
) -> Tensor:
    """Score of a whole volume x (B, C, *spatial): overlapping tiles blended with a Gaussian window (MONAI).

    One ``sliding_window_inference`` per batch item, so each window sees its own item's sigma. Axes shorter
    than the patch are padded here (replicate, extrapolated coordinates) rather than by MONAI (zeros).
    ``offset`` shifts the window grid: the volume is first padded by ``offset`` voxels at its low end
    (replicate), so the windows start ``offset`` voxels before it; a random offset per call keeps the
    blending weights' small errors from accumulating at the same planes over a sampling chain.
    """
    from monai.inferers import sliding_window_inference  # lazy: importing monai is slow

    b, c, *shape = x.shape
    patch = as_tuple(patch_size, len(shape), "patch_size")
    off = as_tuple(offset, len(shape), "offset")
    sigma = as_sigma_batch(sigma, b, x.device)
    xp, lo = _pad_to_patch(x, patch)
    if any(off):
        # F.pad takes (low, high) pairs from the last axis backwards
        xp = F.pad(xp, [v for o in reversed(off) for v in (o, 0)], mode="replicate")
        lo = tuple(a + o for a, o in zip(lo, off, strict=True))
    grid = None
    if coords:
        # (1, d, *padded): the padded margins get extrapolated coordinates, as in stitch_score
        grid = _tile_coords(shape, [-a for a in lo], xp.shape[2:], xp.dtype, xp.device)[None]
    out = torch.empty_like(xp)
    for item in range(b):
        inputs = xp[item : item + 1] if grid is None else torch.cat([xp[item : item + 1], grid], dim=1)
        predictor = functools.partial(
            _predict_window, patch_fn=patch_fn, channels=c, sigma=sigma[item], coords=coords
        )
        out[item] = sliding_window_inference(
            inputs, patch, tile_batch, predictor, overlap=overlap, mode="gaussian"
        )[0]
    return _crop(out, lo, shape)


class StitchedScore:
    """A score function over whole volumes, ``score_fn(x, sigma)``, stitched from a patch score function.

    Args:
        patch_fn: ``patch_fn(x (N, C, *p), sigma (N,), coords (N, d, *p) | None) -> (N, C, *p)``, e.g.
            ``Preconditioner.score``; must accept any tile size (fully convolutional).
        patch_size: the training patch size, an int or one entry per spatial axis.
        stitch: ``"shift"`` (random grid offset per call), ``"blend"`` (Gaussian-weighted overlap) or
            ``"fixed"`` (offset 0, the seam baseline).
        tile_batch: at most this many tiles per ``patch_fn`` call (shift/fixed: and this many patches' worth
            of voxels, or two tiles, since the merged end tiles are larger than a patch).
        coords: pass whole-volume coordinates in [-1, 1] to ``patch_fn`` (else None).
        overlap: window overlap for ``"blend"``.
        generator: source of the shift offsets, for reproducible sampling.
        blend_offset: ``"blend"`` only: draw a random window offset (below the window stride) at every call,
            as shift does for its grid; for sampling chains. Off: the deterministic blend of one pass.

    After a call, ``self.offset`` holds the grid offset that call used.
    """

    def __init__(
        self,
        patch_fn: PatchFn,
        patch_size: int | tuple[int, ...],
        stitch: str = "shift",
        tile_batch: int = 8,
        coords: bool = True,
        overlap: float = 0.5,
        generator: torch.Generator | None = None,
        blend_offset: bool = False,
    ) -> None:
        if stitch not in STITCH_MODES:
            raise ValueError(f"stitch must be one of {STITCH_MODES}, got {stitch!r}")
        if tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        sizes = (patch_size,) if isinstance(patch_size, int) else tuple(patch_size)
        if any(p < 1 for p in sizes):
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        self.patch_fn = patch_fn
        self.patch_size = patch_size
        self.stitch = stitch
        self.tile_batch = tile_batch
        self.coords = coords
        self.overlap = overlap
        self.generator = generator
        self.blend_offset = blend_offset
        self.offset: tuple[int, ...] | None = None

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        patch = as_tuple(self.patch_size, x.ndim - 2, "patch_size")
        if self.stitch == "blend":
            stride = [max(1, int(p * (1 - self.overlap))) for p in patch]
            self.offset = random_offset(stride, self.generator) if self.blend_offset else (0,) * len(patch)
            return blend_score(
                self.patch_fn, x, sigma, patch, self.overlap, self.tile_batch, self.coords, self.offset
            )
        self.offset = random_offset(patch, self.generator) if self.stitch == "shift" else (0,) * len(patch)
        return stitch_score(self.patch_fn, x, sigma, patch, self.offset, self.tile_batch, self.coords)

    def __repr__(self) -> str:
        return (
            f"StitchedScore(patch_size={self.patch_size}, stitch={self.stitch!r}, "
            f"tile_batch={self.tile_batch}, coords={self.coords}, overlap={self.overlap})"
        )
