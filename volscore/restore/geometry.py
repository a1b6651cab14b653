"""The grids of restoration: which axis of a scan holds the thick slices, by what factor, the fine grid's
affine, and the classical estimates (interpolation between thick slices, filling a hole from its border)
that serve as baselines and as the posterior sampler's starting point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

FACTOR_TOLERANCE = 0.02  # a voxel-size ratio within 2 % of an integer is that integer (header rounding)


def thick_axis(zooms: Sequence[float]) -> int:
    """The axis with the largest voxel size; refused when no axis is clearly thicker (within 10 %)."""
    z = [float(v) for v in zooms[:3]]
    axis = int(np.argmax(z))
    others = [v for i, v in enumerate(z) if i != axis]
    if z[axis] < 1.1 * max(others):
        raise ValueError(
            f"voxel sizes {tuple(round(v, 3) for v in z)} mm: no axis is thicker than the others; give "
            "--slice-axis and --factor"
        )
    return axis


def slice_factor(zooms: Sequence[float], axis: int) -> int:
    """The integer ratio of the thick voxel size to the finest in-plane one; refused if not an integer."""
    z = [float(v) for v in zooms[:3]]
    in_plane = min(v for i, v in enumerate(z) if i != axis)
    ratio = z[axis] / in_plane
    factor = int(round(ratio))
    if factor < 2 or abs(ratio - factor) > FACTOR_TOLERANCE * factor:
        raise ValueError(
            f"slice thickness {z[axis]:g} mm over in-plane {in_plane:g} mm is {ratio:.3g}, not an integer "
            "factor >= 2; give --factor"
        )
    return factor


def fine_affine(affine: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """The affine of the grid with ``factor`` fine slices per thick slice along ``axis``.

    Thick slice k covers fine slices k f .. k f + f - 1 and is centred on fine index k f + (f - 1) / 2, so
    fine index j is thick index (j - (f - 1) / 2) / f: both grids map every point to the same world
    coordinates, and the volume covers the same extent.
    """
    s = np.eye(4)
    s[axis, axis] = 1.0 / factor
    s[axis, 3] = -(factor - 1) / (2.0 * factor)
    return np.asarray(affine, dtype=np.float64) @ s


def interpolate_slices(thick: np.ndarray, axis: int, factor: int, order: int = 3) -> np.ndarray:
    """Thick slices interpolated onto the fine grid along ``axis``: ``order`` 1 is linear, 3 cubic B-spline
    (scipy's ``zoom`` with ``grid_mode``, whose voxel-extent alignment is ``fine_affine``'s)."""
    zoom = [1.0] * thick.ndim
    zoom[axis] = float(factor)
    out = ndimage.zoom(np.asarray(thick, np.float32), zoom, order=order, mode="nearest", grid_mode=True)
    return np.asarray(out, dtype=np.float32)


def _laplacian_rows(shape: tuple[int, ...], rows: np.ndarray) -> Any:
    """The 7-point Laplacian (free edges: a voxel's own weight is minus its number of in-volume neighbours)
    evaluated at the flat voxel indices ``rows``, as a sparse (len(rows), prod(shape)) matrix."""
    from scipy.sparse import csr_matrix

    coords = np.stack(np.unravel_index(rows, shape), axis=1)
    r_idx, c_idx, vals = [], [], []
    degree = np.zeros(len(rows))
    for axis in range(len(shape)):
        for step in (-1, 1):
            nb = coords.copy()
            nb[:, axis] += step
            inside = (nb[:, axis] >= 0) & (nb[:, axis] < shape[axis])
            degree += inside
            r_idx.append(np.flatnonzero(inside))
            c_idx.append(np.ravel_multi_index(tuple(nb[inside].T), shape))
            vals.append(np.ones(int(inside.sum())))
    r_idx.append(np.arange(len(rows)))
    c_idx.append(rows)
    vals.append(-degree)
    return csr_matrix(
        (np.concatenate(vals), (np.concatenate(r_idx), np.concatenate(c_idx))),
        shape=(len(rows), int(np.prod(shape))),
    )


def fill_missing(volume: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Missing voxels filled by the biharmonic interpolant of the known ones: the values u in the hole that
    minimise the squared discrete Laplacian over the hole and a ring of known voxels around it, inside the
    volume's faces (Delta^2 u = 0 inside, the known voxels as boundary values, as scikit-image's
    ``inpaint_biharmonic``; linear fields are filled exactly), solved by conjugate gradients on the normal
    equations. Smooth, continues the gradients at the border; the classical
    baseline and the posterior sampler's starting estimate. Known voxels are returned as they were."""
    from scipy.sparse.linalg import cg

    data = np.asarray(volume, np.float32)
    known = np.asarray(known, dtype=bool)
    if known.shape != data.shape:
        raise ValueError(f"mask shape {known.shape} differs from the volume's {data.shape}")
    if known.all():
        return data.copy()
    if not known.any():
        raise ValueError("the mask leaves no voxel known")
    hole = ~known
    ring = ndimage.binary_dilation(hole, iterations=2)
    interior = np.zeros_like(hole)
    interior[(slice(1, -1),) * hole.ndim] = True  # the 7-point Laplacian of a linear field is 0 only there
    rows = np.flatnonzero(ring & interior) if (ring & interior).any() else np.flatnonzero(ring)
    lap = _laplacian_rows(data.shape, rows)
    unknown = np.flatnonzero(hole)
    flat = data.ravel().astype(np.float64)
    l_u = lap[:, unknown]
    rest = lap @ np.where(hole.ravel(), 0.0, flat)  # the known voxels' part of the Laplacian
    normal = (l_u.T @ l_u).tocsr()
    start = np.full(len(unknown), float(flat[known.ravel()].mean()))
    solution, _ = cg(normal, -(l_u.T @ rest), x0=start, rtol=1e-8, maxiter=5000)
    out = data.copy().ravel()
    out[unknown] = solution
    return out.reshape(data.shape)
