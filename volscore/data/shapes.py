"""Shape data sets: soft occupancy volumes of 3D primitives and extruded MNIST digits, generated from a seed.

Two kinds, each at any cubic ``size`` (32 by default, 64 works), values in [0, 1]:

* ``primitives``: a sphere, ellipsoid, box, torus, cylinder or capsule (label = index in ``PRIMITIVES``,
  cycling so classes are balanced) with random size, position and a uniform random 3D rotation.
* ``digits``: an MNIST digit extruded along depth (axis 0) with a random thickness and a 45-degree bevel
  (the silhouette erodes towards the front and back faces), rotated by at most ``DIGIT_MAX_ANGLE`` so a 6
  stays a 6, labelled by its MNIST class. ``split="train"`` uses MNIST train, ``"reference"`` MNIST test.

Both are signed distance functions (SDFs) evaluated at voxel centres and anti-aliased over one voxel,
``clamp(0.5 - sdf / voxel, 0, 1)``, so the 0.5 level set is the surface. Every shape keeps a margin of
``MARGIN_VOXELS`` from the faces of the volume, so the outer faces are exactly zero.

Shape ``i`` of ``(kind, split, seed)`` comes from its own generator, so a set of ``n`` shapes is a prefix
of any larger set, and the ``train`` and ``reference`` splits use disjoint seed streams (and, for digits,
disjoint MNIST images). Default sizes (``default_count``): 1,000 train and 200 reference shapes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.ndimage
import torch
from torch import Tensor

if TYPE_CHECKING:
    from volscore.data.patches import PatchSampler

KINDS = ("primitives", "digits")
SPLITS = ("train", "reference")
PRIMITIVES = ("sphere", "ellipsoid", "box", "torus", "cylinder", "capsule")
DEFAULT_COUNTS = {"train": 1000, "reference": 200}
MARGIN_VOXELS = 2.0  # empty voxels between a shape's surface and the faces of the volume, at least
DIGIT_MAX_ANGLE = math.pi / 4  # larger turns make 6 and 9 (and a flat-on view) ambiguous
_MNIST_SPLIT = {"train": "train", "reference": "test"}
_DIGIT_PAD = 2  # zero pixels around each MNIST image, so outside distances near the border are right
_DIGIT_UPSAMPLE = 2  # the silhouette is thresholded on a 2x finer grid, for smoother edges at 64^3


def default_count(kind: str, split: str = "train") -> int:
    """The documented set size: 1,000 shapes for ``train``, 200 for ``reference`` (both kinds)."""
    _check(kind, split)
    return DEFAULT_COUNTS[split]


def _check(kind: str, split: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"shape kind must be one of {KINDS}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _shape_rng(kind: str, split: str, seed: int, i: int) -> np.random.Generator:
    # Entropy lists that differ only by trailing zeros collide in SeedSequence: the 1 keeps them apart.
    return np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split), 1, i])


def rotation_from_quaternion(q: np.ndarray) -> np.ndarray:
    """The 3x3 rotation matrix of a (not necessarily unit) quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_rotation(rng: np.random.Generator, max_angle: float = math.pi) -> np.ndarray:
    """A random rotation: uniform on SO(3) (a normalised Gaussian quaternion) when ``max_angle`` is pi,
    else about a uniform axis by an angle uniform in [0, max_angle]."""
    if max_angle >= math.pi:
        return rotation_from_quaternion(rng.standard_normal(4))
    axis = rng.standard_normal(3)
    half = 0.5 * max_angle * rng.random()
    axis = axis / np.linalg.norm(axis)
    return rotation_from_quaternion(np.array([math.cos(half), *(math.sin(half) * axis)]))


def _grid(size: int) -> np.ndarray:
    """Voxel centres (3, size^3) in the normalised frame where the volume spans [-1, 1] along each axis."""
    c = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
    return np.stack(np.meshgrid(c, c, c, indexing="ij")).reshape(3, -1)


def _soft_occupancy(sdf: np.ndarray, voxel: float, size: int) -> np.ndarray:
    return np.clip(0.5 - sdf / voxel, 0.0, 1.0).reshape(size, size, size).astype(np.float32)


def _place(extent: np.ndarray, voxel: float, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """(scale, centre): shrink a shape of half-extents ``extent`` to fit the margin, then a random centre."""
    limit = 1.0 - MARGIN_VOXELS * voxel
    scale = min(1.0, limit / float(extent.max()))
    slack = np.maximum(limit - scale * extent, 0.0)
    return scale, rng.uniform(-slack, slack)


# ---------------------------------------------------------------------------------------------------
# Primitives: parameters are lengths in the normalised frame; the local axis of symmetry is axis 0
# ---------------------------------------------------------------------------------------------------


def _primitive_params(name: str, rng: np.random.Generator) -> np.ndarray:
    u = rng.uniform
    if name == "sphere":
        return np.array([u(0.25, 0.7)])
    if name == "ellipsoid":
        return u(0.18, 0.75, size=3)  # semi-axes
    if name == "box":
        return u(0.15, 0.6, size=3)  # half-extents
    if name == "torus":
        major = u(0.3, 0.65)
        return np.array([major, u(0.1, 0.6 * major)])  # (ring radius, tube radius): a hole of 0.12 or more
    if name == "cylinder":
        return np.array([u(0.15, 0.45), u(0.2, 0.7)])  # (radius, half-height)
    return np.array([u(0.15, 0.4), u(0.1, 0.6)])  # capsule: (radius, half-length of the segment)


def _primitive_extent(name: str, params: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Exact half-extents (3,) along the world axes of the shape rotated by ``rot`` (local -> world)."""
    axis = np.abs(rot[:, 0])  # the symmetry axis in world coordinates
    across = np.sqrt(np.clip(1.0 - axis**2, 0.0, None))
    if name == "sphere":
        return np.full(3, params[0])
    if name == "ellipsoid":
        return np.sqrt(((rot * params) ** 2).sum(1))
    if name == "box":
        return (np.abs(rot) * params).sum(1)
    if name == "torus":
        return params[0] * across + params[1]
    if name == "cylinder":
        return params[1] * axis + params[0] * across
    return params[1] * axis + params[0]  # capsule


def _primitive_sdf(name: str, params: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Signed distance at local points ``p`` (3, V); exact except for the ellipsoid (Quilez' bound)."""
    if name == "sphere":
        return np.linalg.norm(p, axis=0) - params[0]
    if name == "ellipsoid":
        k0 = np.linalg.norm(p / params[:, None], axis=0)
        k1 = np.linalg.norm(p / params[:, None] ** 2, axis=0)
        return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -params.min())
    if name == "box":
        q = np.abs(p) - params[:, None]
        return np.linalg.norm(np.maximum(q, 0.0), axis=0) + np.minimum(q.max(0), 0.0)
    radial = np.hypot(p[1], p[2])
    if name == "torus":
        return np.hypot(radial - params[0], p[0]) - params[1]
    if name == "cylinder":
        d = np.stack([radial - params[0], np.abs(p[0]) - params[1]])
        return np.minimum(d.max(0), 0.0) + np.linalg.norm(np.maximum(d, 0.0), axis=0)
    along = p[0] - np.clip(p[0], -params[1], params[1])  # capsule: distance to the segment, minus radius
    return np.hypot(along, radial) - params[0]


def _primitive(label: int, rng: np.random.Generator, grid: np.ndarray, size: int) -> np.ndarray:
    name, voxel = PRIMITIVES[label], 2.0 / size
    rot = random_rotation(rng)
    params = _primitive_params(name, rng)
    scale, centre = _place(_primitive_extent(name, params, rot), voxel, rng)
    p = rot.T @ (grid - centre[:, None])  # (3, V) local coordinates
    # Edges rounded by one voxel: a sharp vertex can leave a stray voxel touching the rest only diagonally.
    rounding = voxel if name in ("box", "cylinder") else 0.0
    return _soft_occupancy(_primitive_sdf(name, scale * params - rounding, p) - rounding, voxel, size)


# ---------------------------------------------------------------------------------------------------
# Digits: the 2D SDF of a thresholded MNIST image, extruded with a bevel, evaluated in a rotated frame
# ---------------------------------------------------------------------------------------------------


def _digit_sdf2d(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sdf, centre, half) for a (28, 28) image in [0, 1]: the signed distance in pixels on the fine grid,
    and the centre and half-size of the silhouette's bounding box in padded pixel coordinates."""
    padded = np.pad(image, _DIGIT_PAD)
    n, f = padded.shape[0], _DIGIT_UPSAMPLE
    fine = (np.arange(n * f) + 0.5) / f - 0.5  # fine sample j sits at pixel coordinate fine[j]
    rows, cols = np.meshgrid(fine, fine, indexing="ij")
    mask = scipy.ndimage.map_coordinates(padded, [rows, cols], order=1, mode="nearest") > 0.5
    if not mask.any():
        raise ValueError("an MNIST image has no pixel above 0.5")
    inside = scipy.ndimage.distance_transform_edt(mask, sampling=1.0 / f)
    outside = scipy.ndimage.distance_transform_edt(~mask, sampling=1.0 / f)
    sdf = np.where(mask, 0.5 / f - inside, outside - 0.5 / f)  # zero half-way between fine samples
    r, c = np.nonzero(mask)
    lo = np.array([fine[r.min()], fine[c.min()]]) - 0.5 / f
    hi = np.array([fine[r.max()], fine[c.max()]]) + 0.5 / f
    return sdf, (lo + hi) / 2, (hi - lo) / 2


def _digit(image: np.ndarray, rng: np.random.Generator, grid: np.ndarray, size: int) -> np.ndarray:
    voxel = 2.0 / size
    sdf2d, centre_px, half_px = _digit_sdf2d(image)
    thickness = rng.uniform(2.5, 6.0)  # half-depth in pixels, against a digit about 20 pixels tall
    bevel = min(rng.uniform(0.5, 1.25), thickness)  # erosion at the faces, in pixels
    rot = random_rotation(rng, DIGIT_MAX_ANGLE)
    pixel = rng.uniform(0.6, 0.85) / half_px.max()  # normalised units per pixel: the digit fills 60-85%
    half = np.array([thickness, *half_px])  # (depth, row, col) half-sizes of the solid's bounding box
    scale, centre = _place(pixel * (np.abs(rot) * half).sum(1), voxel, rng)
    pixel *= scale
    p = rot.T @ (grid - centre[:, None]) / pixel  # (3, V) digit frame in pixels: depth, row, col
    fine = [(p[k] + centre_px[k - 1] + 0.5) * _DIGIT_UPSAMPLE - 0.5 for k in (1, 2)]
    d2 = scipy.ndimage.map_coordinates(sdf2d, fine, order=1, mode="constant", cval=1e3)
    depth = np.abs(p[0])
    sdf = np.maximum(d2 + np.maximum(depth - thickness + bevel, 0.0), depth - thickness)
    return _soft_occupancy(sdf * pixel, voxel, size)


def digit_image_indices(n: int, seed: int = 0, split: str = "train", num_images: int = 4000) -> np.ndarray:
    """Indices into ``load_mnist(...)`` of the images behind digit shapes 0..n-1: a seeded permutation,
    so no image repeats until all ``num_images`` have been used."""
    _check("digits", split)
    rng = np.random.default_rng([seed, KINDS.index("digits"), SPLITS.index(split), 2])
    perm = rng.permutation(num_images)
    return perm[np.arange(n) % num_images]


class _ShapeMaker:
    """Shape i of (kind, split, seed) at ``size``: holds the voxel grid and, for digits, the MNIST split."""

    def __init__(self, kind: str, size: int, seed: int, split: str) -> None:
        _check(kind, split)
        if size < 16:
            raise ValueError(f"size must be at least 16, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.kind, self.size, self.seed, self.split = kind, int(size), int(seed), split
        self.grid = _grid(self.size)
        if kind == "digits":
            from volscore.data.mnist import load_mnist

            images, labels = load_mnist(_MNIST_SPLIT[split])
            self.images, self.labels = images[:, 0].numpy().astype(np.float64), labels.numpy()
            self.image_index = digit_image_indices(len(labels), seed, split, len(labels))

    def __call__(self, i: int) -> tuple[np.ndarray, int]:
        rng = _shape_rng(self.kind, self.split, self.seed, i)
        if self.kind == "primitives":
            label = i % len(PRIMITIVES)
            return _primitive(label, rng, self.grid, self.size), label
        j = int(self.image_index[i % len(self.image_index)])
        return _digit(self.images[j], rng, self.grid, self.size), int(self.labels[j])


def make_shapes(
    kind: str, n: int | None = None, size: int = 32, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Occupancies (n, size, size, size) float32 in [0, 1] and labels (n,) int64.

    Labels are the index in ``PRIMITIVES`` or the digit class. ``n`` defaults to
    ``default_count(kind, split)``. Shape i depends only on (kind, split, seed, i, size).
    """
    gen = _ShapeMaker(kind, size, seed, split)
    n = default_count(kind, split) if n is None else int(n)
    volumes = np.empty((n, gen.size, gen.size, gen.size), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        volumes[i], labels[i] = gen(i)
    return volumes, labels


class ShapeSource:
    """Random training shapes of one kind, the train split held in memory; same ``sample`` interface as
    ``MnistSource`` and ``PatchSampler``.

    Occupancies are stored as uint8 (k / 255: 256 MB for 1,000 shapes at 64^3 rather than 1 GB), so samples
    are within 1/510 of ``make_shapes``; the 0.5 surface is unchanged.
    """

    def __init__(self, kind: str, size: int = 32, n: int | None = None, seed: int = 0) -> None:
        gen = _ShapeMaker(kind, size, seed, "train")
        n = default_count(kind, "train") if n is None else int(n)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        volumes = np.empty((n, 1, gen.size, gen.size, gen.size), dtype=np.uint8)  # (N, 1, D, H, W)
        labels = np.empty(n, dtype=np.int64)
        for i in range(n):
            occupancy, labels[i] = gen(i)
            volumes[i, 0] = np.rint(occupancy * 255.0)
        self.kind, self.size, self.seed = kind, gen.size, gen.seed
        self.volumes, self.labels = torch.from_numpy(volumes), torch.from_numpy(labels)

    @classmethod
    def from_spec(cls, spec: str, n: int | None = None, seed: int = 0) -> ShapeSource:
        """``"primitives"``, ``"digits"``, ``"primitives@64"`` (the part after ``shapes:`` in ``--data``)."""
        kind, _, size = spec.partition("@")
        if kind not in KINDS or (size and not size.isdigit()):
            raise ValueError(f"shape spec must be KIND or KIND@SIZE with KIND in {KINDS}, got {spec!r}")
        return cls(kind, int(size) if size else 32, n=n, seed=seed)

    @property
    def meta(self) -> dict[str, object]:
        n = len(self.labels)
        return {"kind": "shapes", "shape_kind": self.kind, "size": self.size, "n": n, "seed": self.seed}

    def patches(self, patch_size: int, coords: bool = True) -> PatchSampler:
        """A ``PatchSampler`` over the shapes (float16 cache, half the patches anywhere): training a
        ``patch_size`` model with coordinate channels on larger shapes (PatchDDM), which the stitched
        sampler turns back into whole shapes."""
        from volscore.data.patches import PatchSampler

        volumes = [(v[0].to(torch.float32) / 255.0).to(torch.float16) for v in self.volumes]
        return PatchSampler(volumes, patch_size, coords=coords, foreground_fraction=0.5, dtype=torch.float16)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (1, self.size, self.size, self.size)

    @property
    def coord_channels(self) -> int:
        return 0

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, None]:
        """(x (B, 1, size, size, size) float32 in [0, 1], None)."""
        idx = torch.randint(len(self.volumes), (int(batch_size),), generator=generator)
        return self.volumes[idx].to(torch.float32) / 255.0, None
