"""Tests for volscore/mesh.py: marching cubes of a ball against its closed-form area and volume;
OBJ files."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("skimage", reason="mesh export is the optional 'mesh' extra")

from volscore.mesh import marching_cubes, save_obj  # noqa: E402


def _mesh_area_and_volume(verts: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    a, b, c = (verts[faces[:, k]].astype(np.float64) for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
    volume = abs(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6  # divergence theorem, closed mesh
    return float(area), float(volume)


def test_ball_surface_matches_the_sphere():
    n, r = 40, 12.0
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij")) - (n - 1) / 2
    # Soft occupancy as volscore's shapes: clamp(0.5 - sdf, 0, 1), so the 0.5 level set is the sphere.
    occupancy = np.clip(0.5 - (np.sqrt((grid**2).sum(0)) - r), 0, 1)
    verts, faces = marching_cubes(occupancy, spacing=(2.0, 2.0, 2.0))
    area, volume = _mesh_area_and_volume(verts, faces)
    # Linear interpolation of a smooth SDF puts vertices within a small fraction of a voxel of the sphere.
    assert area == pytest.approx(4 * math.pi * (2 * r) ** 2, rel=0.02)
    assert volume == pytest.approx(4 / 3 * math.pi * (2 * r) ** 3, rel=0.02)
    centre = verts.mean(0) / 2
    assert np.allclose(centre, (n - 1) / 2, atol=0.05)  # the padding offset is undone


def test_shape_touching_the_border_is_closed_and_obj_is_written(tmp_path):
    box = np.zeros((8, 8, 8), np.float32)
    box[:4, 2:6, 2:6] = 1.0  # touches the face at index 0
    verts, faces = marching_cubes(box)
    # A closed triangle mesh has every edge in exactly two triangles.
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()
    path = save_obj(tmp_path / "box.obj", verts, faces)
    text = path.read_text().splitlines()
    assert sum(line.startswith("v ") for line in text) == len(verts)
    assert sum(line.startswith("f ") for line in text) == len(faces)
    assert min(int(i) for line in text if line.startswith("f ") for i in line.split()[1:]) == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary left


def test_empty_or_full_volume_is_a_clear_error():
    with pytest.raises(ValueError, match="never crosses"):
        marching_cubes(np.zeros((5, 5, 5)))
    with pytest.raises(ValueError, match="expected"):
        marching_cubes(np.zeros((5, 5)))
