"""Tests for volscore/data/shapes.py: seeded shape sets at 32^3 (a few at 64^3), one thread, about a second.

The maths against closed forms (each primitive's SDF encloses its analytic volume; its computed half-extents
match the voxelised bounding box; rotations are orthonormal with the angle bound), then the data-set
contract on small sets: determinism per seed and prefix stability, values in [0, 1] with soft edges, empty
outer faces, one connected component per primitive, digit labels equal to the MNIST labels of the images
used, disjoint train and reference splits, and ShapeSource's sampling interface.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from volscore.data import shapes
from volscore.data.mnist import load_mnist
from volscore.data.shapes import (
    KINDS,
    PRIMITIVES,
    ShapeSource,
    default_count,
    digit_image_indices,
    make_shapes,
    random_rotation,
)
from volscore.metrics import connected_fraction, iou_distance_matrix

# (params, analytic volume) in the normalised frame where the volume spans [-1, 1]^3.
CLOSED_FORMS = {
    "sphere": ([0.5], 4 / 3 * math.pi * 0.5**3),
    "ellipsoid": ([0.3, 0.5, 0.7], 4 / 3 * math.pi * 0.3 * 0.5 * 0.7),
    "box": ([0.3, 0.4, 0.5], 8 * 0.3 * 0.4 * 0.5),
    "torus": ([0.5, 0.2], 2 * math.pi**2 * 0.5 * 0.2**2),
    "cylinder": ([0.3, 0.5], 2 * math.pi * 0.3**2 * 0.5),
    "capsule": ([0.25, 0.4], math.pi * 0.25**2 * (2 * 0.4 + 4 / 3 * 0.25)),
}


def _faces_max(v: np.ndarray) -> float:
    """The largest value on the six outer faces of (N, D, H, W) volumes."""
    return max(float(np.abs(v.swapaxes(1, k)[:, [0, -1]]).max()) for k in (1, 2, 3))


def test_random_rotation_orthonormal_and_angle_bound():
    rng = np.random.default_rng(0)
    for max_angle in (math.pi, shapes.DIGIT_MAX_ANGLE):
        for _ in range(20):
            r = random_rotation(rng, max_angle)
            np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
            assert np.linalg.det(r) == pytest.approx(1.0)
            angle = math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1))
            assert angle <= max_angle + 1e-9


@pytest.mark.parametrize("name", PRIMITIVES)
def test_primitive_sdf_volume_and_extent_closed_form(name):
    size = 48
    voxel = 2.0 / size
    rot = random_rotation(np.random.default_rng(PRIMITIVES.index(name)))
    params = np.array(CLOSED_FORMS[name][0])
    occ = shapes._soft_occupancy(shapes._primitive_sdf(name, params, rot.T @ shapes._grid(size)), voxel, size)
    # Anti-aliasing over one voxel makes the summed occupancy a close estimate of the enclosed volume.
    assert occ.sum() * voxel**3 == pytest.approx(CLOSED_FORMS[name][1], rel=0.01)
    # The support (occupancy > 0) reaches at most half a voxel past the half-extents (what the margin
    # relies on) and, on a grid of voxel spacing, within one voxel of them.
    extent = shapes._primitive_extent(name, params, rot)
    centres = (np.arange(size) + 0.5) * voxel - 1.0
    for axis in range(3):
        support = centres[occ.max(axis=tuple(k for k in range(3) if k != axis)) > 0]
        assert extent[axis] - voxel <= np.abs(support).max() <= extent[axis] + 0.5 * voxel + 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed_and_prefix_stable(kind):
    v, y = make_shapes(kind, 6, seed=3)
    v2, y2 = make_shapes(kind, 6, seed=3)
    np.testing.assert_array_equal(v, v2)
    np.testing.assert_array_equal(y, y2)
    v_other, _ = make_shapes(kind, 6, seed=4)
    assert all(not np.array_equal(a, b) for a, b in zip(v, v_other, strict=True))
    # Shape i has its own generator: a smaller set is a prefix of a larger one.
    v3, y3 = make_shapes(kind, 3, seed=3)
    np.testing.assert_array_equal(v3, v[:3])
    np.testing.assert_array_equal(y3, y[:3])


@pytest.mark.parametrize("kind", KINDS)
def test_range_soft_edges_and_empty_faces(kind):
    v, y = make_shapes(kind, 24)
    assert v.shape == (24, 32, 32, 32) and v.dtype == np.float32 and y.dtype == np.int64
    assert v.min() >= 0.0 and v.max() <= 1.0
    flat = v.reshape(len(v), -1)
    assert ((flat > 0) & (flat < 1)).any(1).all()  # anti-aliased edges in every volume
    assert (flat > 0.5).any(1).all() and (flat == 1).any(1).all()  # a solid core in every volume
    assert _faces_max(v) == 0.0


def test_primitives_one_component_and_balanced_labels():
    v, y = make_shapes("primitives", 60, seed=1)
    assert connected_fraction(v) == 1.0
    assert np.bincount(y, minlength=len(PRIMITIVES)).tolist() == [10] * len(PRIMITIVES)


@pytest.mark.parametrize(("split", "mnist_split"), [("train", "train"), ("reference", "test")])
def test_digit_labels_are_the_mnist_labels(split, mnist_split):
    _, y = make_shapes("digits", 60, seed=2, split=split)
    mnist_labels = load_mnist(mnist_split)[1].numpy()
    idx = digit_image_indices(60, seed=2, split=split, num_images=len(mnist_labels))
    assert len(set(idx.tolist())) == 60  # no image repeats within a pass over the split
    np.testing.assert_array_equal(y, mnist_labels[idx])
    assert set(y.tolist()) == set(range(10))


@pytest.mark.parametrize("kind", KINDS)
def test_train_and_reference_disjoint(kind):
    train, _ = make_shapes(kind, 20, split="train")
    ref, _ = make_shapes(kind, 20, split="reference")
    assert float(iou_distance_matrix(train, ref).min()) > 0.0  # no thresholded volume in both


def test_size_64():
    for kind in KINDS:
        v, _ = make_shapes(kind, 3, size=64)
        assert v.shape == (3, 64, 64, 64)
        assert _faces_max(v) == 0.0 and ((v > 0) & (v < 1)).any()
    assert connected_fraction(make_shapes("primitives", 6, size=64)[0]) == 1.0


def test_default_counts_and_errors():
    assert default_count("primitives") == 1000 and default_count("digits", "reference") == 200
    with pytest.raises(ValueError, match="kind"):
        make_shapes("teapots", 1)
    with pytest.raises(ValueError, match="split"):
        make_shapes("primitives", 1, split="test")
    with pytest.raises(ValueError, match="size"):
        make_shapes("primitives", 1, size=8)
    with pytest.raises(ValueError, match="KIND@SIZE"):
        ShapeSource.from_spec("primitives@big")


def test_shape_source_sample_interface_and_reproducible():
    source = ShapeSource("digits", n=12, seed=5)
    assert source.sample_shape == (1, 32, 32, 32) and source.coord_channels == 0
    assert source.meta == {"kind": "shapes", "shape_kind": "digits", "size": 32, "n": 12, "seed": 5}
    x, coords = source.sample(4, torch.Generator().manual_seed(0))
    assert coords is None and x.shape == (4, 1, 32, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    x_again, _ = source.sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x_again)
    # The stored set is the train split, quantised to 8 bits.
    v, y = make_shapes("digits", 12, seed=5)
    np.testing.assert_allclose(source.volumes[:, 0].numpy() / 255.0, v, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(source.labels.numpy(), y)


def test_shape_source_from_spec_size_suffix():
    source = ShapeSource.from_spec("primitives@64", n=2)
    assert source.sample_shape == (1, 64, 64, 64)
    x, _ = source.sample(3, torch.Generator().manual_seed(1))
    assert x.shape == (3, 1, 64, 64, 64)
