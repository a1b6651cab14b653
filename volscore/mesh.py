"""Surface export of occupancy volumes: marching cubes (scikit-image, the ``mesh`` extra) to Wavefront OBJ.

OBJ is plain text (``v x y z`` vertex lines, ``f i j k`` 1-based triangles) that every mesh viewer and
library reads (MeshLab, Blender, trimesh, Open3D), so no mesh package is needed to write it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from volscore.atomic import atomic_write_text


def require_mesh_support() -> None:
    """Raise a clear error, naming the extra to install, when scikit-image is missing: called before
    long work (sampling) so that it fails at once rather than at the end."""
    try:
        import skimage.measure  # noqa: F401
    except ImportError as exc:
        raise ValueError("mesh export needs scikit-image: pip install 'volscore[mesh]'") from exc


def marching_cubes(
    volume: np.ndarray, level: float = 0.5, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float32 in voxel units times ``spacing`` and triangles (F, 3) int64 of the ``level``
    iso-surface of a (D, H, W) volume. The volume is padded by one empty voxel so that shapes touching the
    border still give closed surfaces. Raises ValueError if the volume never crosses ``level``."""
    require_mesh_support()
    from skimage.measure import marching_cubes as _mc

    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {v.shape}")
    if not (v.min() < level < v.max()):
        raise ValueError(f"the volume never crosses level {level} (range {v.min():.3g} to {v.max():.3g})")
    padded = np.pad(v, 1, mode="constant", constant_values=min(float(v.min()), level - 1.0))
    verts, faces, _, _ = _mc(padded, level=level, spacing=tuple(float(s) for s in spacing))
    verts -= np.asarray(spacing, dtype=verts.dtype)  # undo the padding's one-voxel offset
    return verts.astype(np.float32), faces.astype(np.int64)


def save_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write a triangle mesh as Wavefront OBJ, atomically (temporary file, then rename)."""
    lines = [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in np.asarray(vertices, dtype=np.float64)]
    lines += [f"f {a} {b} {c}" for a, b, c in np.asarray(faces, dtype=np.int64) + 1]
    return atomic_write_text(path, "\n".join(lines) + "\n")
