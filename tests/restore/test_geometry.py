"""Tests for volscore.restore.geometry: the thick axis and factor from voxel sizes, the fine grid's affine
(same world coordinates and extent), interpolation between slices and the biharmonic fill."""

from __future__ import annotations

import numpy as np
import pytest

from volscore.restore.geometry import fill_missing, fine_affine, interpolate_slices, slice_factor, thick_axis

THICK = np.array([[-1.0, 0, 0.1, 90], [0, 1.0, 0, -126], [0, 0, 5.0, -72], [0, 0, 0, 1]])


def _world(affine: np.ndarray, ijk) -> np.ndarray:
    return (affine @ np.array([*ijk, 1.0]))[:3]


def test_thick_axis_and_factor_from_voxel_sizes() -> None:
    assert thick_axis((1.0, 1.0, 5.0)) == 2 and thick_axis((4.0, 0.9, 0.9)) == 0
    assert slice_factor((1.0, 1.0, 5.0), 2) == 5 and slice_factor((0.5, 0.5, 1.98), 2) == 4
    with pytest.raises(ValueError, match="no axis is thicker"):
        thick_axis((1.0, 1.0, 1.05))
    with pytest.raises(ValueError, match="not an integer"):
        slice_factor((1.0, 1.0, 2.5), 2)


@pytest.mark.parametrize("factor", [2, 4, 5])
def test_fine_affine_keeps_world_coordinates_and_extent(factor: int) -> None:
    fine = fine_affine(THICK, 2, factor)
    for k in (0, 3, 7):  # a thick slice's centre is the centre of its fine slices
        centre = k * factor + (factor - 1) / 2
        np.testing.assert_allclose(_world(THICK, (2, 3, k)), _world(fine, (2, 3, centre)), atol=1e-9)
    # the volume's first face (thick index -0.5) is the fine grid's first face (fine index -0.5)
    np.testing.assert_allclose(_world(THICK, (0, 0, -0.5)), _world(fine, (0, 0, -0.5)), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(fine[:3, 2]), np.linalg.norm(THICK[:3, 2]) / factor)


def test_interpolation_reproduces_a_linear_ramp_between_slices() -> None:
    factor, n = 4, 12
    fine_coord = np.arange(n * factor, dtype=np.float64)
    thick = np.broadcast_to(np.arange(n) * factor + (factor - 1) / 2, (3, 3, n)).astype(np.float32)
    # away from the ends, where the ramp is clamped (and the spline's prefilter sees a constant beyond)
    for order, inner, atol in ((1, slice(factor, -factor), 1e-3), (3, slice(3 * factor, -3 * factor), 0.02)):
        out = interpolate_slices(thick, 2, factor, order)
        assert out.shape == (3, 3, n * factor)
        np.testing.assert_allclose(out[1, 1, inner], fine_coord[inner], atol=atol)


def test_biharmonic_fill_is_exact_on_linear_fields_and_keeps_known_voxels() -> None:
    z, y, x = np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij")
    field = (0.3 * x - 0.2 * y + 0.1 * z + 5).astype(np.float32)
    known = np.ones(field.shape, bool)
    known[5:12, 6:14, 4:10] = False
    known[14:18, 2:5, 12:19] = False
    noisy = np.where(known, field, 1e3).astype(np.float32)
    out = fill_missing(noisy, known)
    np.testing.assert_allclose(out[~known], field[~known], atol=1e-3)
    assert np.array_equal(out[known], noisy[known])


def test_fill_refuses_a_mask_without_known_voxels_or_of_another_shape() -> None:
    with pytest.raises(ValueError, match="no voxel known"):
        fill_missing(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool))
    with pytest.raises(ValueError, match="mask shape"):
        fill_missing(np.zeros((4, 4, 4)), np.ones((4, 4, 5), bool))
