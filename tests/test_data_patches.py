"""Tests for volscore/data/patches.py on hand-made volumes.

Coordinate channels (closed-form values and corners; a crop computed analytically equals the crop of the
full grid, also outside the volume). PatchSampler: on a volume whose voxel values encode their own flat
index, every patch must equal the volume slice at its reported start; region restriction over many draws;
the foreground fraction against its exact expectation; seeding; padding of volumes smaller than the patch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from volscore.data.patches import (
    MNI152_HOLDOUT_REGION,
    MNI152_TRAIN_REGION,
    PatchSampler,
    coordinate_grid,
    coordinate_patch,
    default_region,
)


def _index_volume(shape):
    """Voxel value = its flat index (exact in float32 below 2**24)."""
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _formula(i, n):
    """-1 + 2 i / (n - 1) in float64, as numpy computes it, then float32."""
    i = np.asarray(i, dtype=np.float64)
    return (np.zeros_like(i) if n == 1 else -1.0 + 2.0 * i / (n - 1)).astype(np.float32)


def test_coordinate_grid_values_and_corners():
    shape = (5, 8, 1)
    grid = coordinate_grid(shape)
    assert grid.shape == (3, 5, 8, 1) and grid.dtype == torch.float32
    assert grid[0, 0, 0, 0] == -1 and grid[0, -1, 0, 0] == 1
    assert grid[1, 0, 0, 0] == -1 and grid[1, 0, -1, 0] == 1
    assert torch.all(grid[2] == 0)  # an axis of one voxel sits at 0
    np.testing.assert_array_equal(grid[0, :, 3, 0].numpy(), [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_array_equal(grid[1, 2, :, 0].numpy(), _formula(np.arange(8), 8))
    assert torch.all(grid[0, 2] == 0) and torch.all(grid[1, :, 5] == grid[1, 0, 5])
    assert coordinate_grid((7, 6)).shape == (2, 7, 6)  # any rank


@pytest.mark.parametrize("starts", [(0, 0, 0), (3, 1, 4), (6, 9, 3), (-4, 0, 2), (5, -7, 9), (-3, 12, -2)])
def test_coordinate_patch_equals_crop_of_grid(starts):
    shape, size = (10, 13, 7), (4, 5, 6)
    patch = coordinate_patch(shape, starts, size)
    assert patch.shape == (3, *size)
    # The grid extended on every side by a margin, computed by the same formula in numpy.
    for a in range(3):
        expected = _formula(np.arange(starts[a], starts[a] + size[a]), shape[a])
        line = patch[a].movedim(a, 0).reshape(size[a], -1)
        assert np.array_equal(line.numpy(), np.repeat(expected[:, None], line.shape[1], 1))
    inside = all(0 <= s and s + p <= n for s, p, n in zip(starts, size, shape, strict=True))
    if inside:
        grid = coordinate_grid(shape)
        crop = grid[:, starts[0] : starts[0] + 4, starts[1] : starts[1] + 5, starts[2] : starts[2] + 6]
        assert torch.equal(patch, crop)


def test_coordinate_patch_int_size():
    assert torch.equal(
        coordinate_patch((9, 9, 9), (1, 2, 3), 4), coordinate_patch((9, 9, 9), (1, 2, 3), (4, 4, 4))
    )


def test_patches_at_their_starts_with_matching_coordinates():
    shapes = [(20, 24, 28), (17, 30, 21)]
    volumes = [_index_volume(s) for s in shapes]
    sampler = PatchSampler(
        volumes, (6, 7, 8), coords=True, foreground_threshold=1000.0, foreground_fraction=0.5
    )
    batch = sampler.sample_with_starts(64, _gen())
    assert batch.x.shape == (64, 1, 6, 7, 8) and batch.coords.shape == (64, 3, 6, 7, 8)
    assert batch.x.dtype == batch.coords.dtype == torch.float32
    assert set(batch.volume_index.tolist()) == {0, 1}
    for i in range(64):
        v, (z, y, x) = int(batch.volume_index[i]), batch.starts[i].tolist()
        expected = volumes[v][z : z + 6, y : y + 7, x : x + 8]
        assert np.array_equal(batch.x[i, 0].numpy(), expected)
        assert torch.equal(batch.coords[i], coordinate_patch(shapes[v], (z, y, x), (6, 7, 8)))
    x, coords = sampler.sample(3, _gen())
    assert x.shape == (3, 1, 6, 7, 8) and coords.shape == (3, 3, 6, 7, 8)
    sampler.coords = False
    assert sampler.sample(2, _gen())[1] is None


def test_region_is_respected_and_coordinates_stay_global():
    shape = (16, 40, 12)
    volume = _index_volume(shape)
    region = (slice(None), slice(0, 20), slice(2, None))
    sampler = PatchSampler([volume], 8, foreground_threshold=100.0, foreground_fraction=0.7, region=region)
    batch = sampler.sample_with_starts(500, _gen(1))
    y, x = batch.starts[:, 1], batch.starts[:, 2]
    assert y.min() >= 0 and (y + 8).max() <= 20 and x.min() >= 2
    assert (y + 8).max() == 20 and x.min() == 2  # the box is reached, not just respected
    ys = (batch.x.long() // 12) % 40  # voxel value -> its y index
    assert ys.max() < 20
    i = int(torch.argmax(batch.starts[:, 1]))
    assert torch.equal(batch.coords[i], coordinate_patch(shape, batch.starts[i].tolist(), 8))

    with pytest.raises(ValueError, match="shorter than the patch"):
        PatchSampler([volume], 8, region=(slice(None), slice(0, 5), slice(None)))


def test_mni_regions():
    assert default_region("mni152") == MNI152_TRAIN_REGION == (slice(None), slice(0, 120), slice(None))
    assert default_region("my_scans") is None
    assert MNI152_HOLDOUT_REGION[1].start == MNI152_TRAIN_REGION[1].stop


def test_foreground_fraction_matches_expectation():
    # 64^3 of zeros with a 22^3 block of ones in a corner: about 4 % foreground.
    volume = np.zeros((64, 64, 64), np.float32)
    volume[:22, :22, :22] = 1.0
    assert (volume == 0).mean() > 0.95
    p, fraction = 8, 0.5
    sampler = PatchSampler([volume], p, coords=False, foreground_threshold=0.5, foreground_fraction=fraction)
    assert sampler._fg.dtype == torch.int32 and len(sampler._fg) == 6**3  # 4^3 blocks: ceil(22 / 4) = 6
    x, _ = sampler.sample(4000, _gen(2))
    hit = (x.flatten(1) > 0.5).any(1).float().mean().item()
    # A uniform patch (start 0..56 per axis) touches the block iff start < 22 on every axis.
    p_uniform = (22 / 57) ** 3
    expected = fraction + (1 - fraction) * p_uniform
    assert abs(hit - expected) < 0.03, (hit, expected)

    always = PatchSampler([volume], p, coords=False, foreground_threshold=0.5, foreground_fraction=1.0)
    assert (always.sample(500, _gen(3))[0].flatten(1) > 0.5).any(1).all()
    # No foreground at all: falls back to uniform patches instead of failing.
    empty = PatchSampler([np.zeros((20, 20, 20), np.float32)], p, foreground_fraction=1.0)
    assert empty.sample(10, _gen())[0].shape == (10, 1, p, p, p)


def test_same_seed_same_patches():
    volume = np.random.default_rng(0).random((30, 31, 32), dtype=np.float32)
    sampler = PatchSampler([volume], 10, foreground_threshold=0.9, foreground_fraction=0.5)
    a, b, c = (sampler.sample_with_starts(16, _gen(seed)) for seed in (7, 7, 8))
    assert torch.equal(a.x, b.x) and torch.equal(a.coords, b.coords) and torch.equal(a.starts, b.starts)
    assert not torch.equal(a.starts, c.starts)


def test_volume_smaller_than_patch_is_padded():
    shape = (5, 12, 3)
    volume = _index_volume(shape) + 1.0  # keep 0 for padding
    sampler = PatchSampler([torch.from_numpy(volume)], 8, foreground_fraction=0.5, foreground_threshold=0.0)
    batch = sampler.sample_with_starts(50, _gen(4))
    assert batch.x.shape == (50, 1, 8, 8, 8)
    # Centred padding: axis 0 gets 1 voxel before, axis 2 gets 2; axis 1 is long enough and not padded.
    assert torch.all(batch.starts[:, 0] == -1) and torch.all(batch.starts[:, 2] == -2)
    assert batch.starts[:, 1].min() >= 0 and batch.starts[:, 1].max() <= 4
    for i in range(50):
        y = int(batch.starts[i, 1])
        padded = np.zeros((8, 8, 8), np.float32)
        padded[1:6, :, 2:5] = volume[:, y : y + 8, :]
        assert np.array_equal(batch.x[i, 0].numpy(), padded)
        assert torch.equal(batch.coords[i], coordinate_patch(shape, batch.starts[i].tolist(), 8))


def test_input_validation():
    with pytest.raises(ValueError, match="3D"):
        PatchSampler([np.zeros((4, 4))], 2)
    with pytest.raises(ValueError, match="at least one"):
        PatchSampler([], 2)
    with pytest.raises(ValueError, match="foreground_fraction"):
        PatchSampler([np.zeros((4, 4, 4))], 2, foreground_fraction=1.5)


def test_float32_volume_is_shared_not_copied():
    volume = np.zeros((10, 10, 10), np.float32)
    sampler = PatchSampler([volume], 4)
    assert sampler.volumes[0].data_ptr() == volume.ctypes.data
    assert sampler.sample_shape == (1, 4, 4, 4) and sampler.coord_channels == 3


@pytest.mark.parametrize("patch", [2, 5, 8, 9])
def test_foreground_patch_contains_a_lone_voxel_at_the_border(patch):
    # foreground is indexed by blocks; a patch centred anywhere in a block must still hold its voxel,
    # also where the patch is pushed inward at the volume or region border
    volume = np.zeros((23, 30, 19), np.float32)
    volume[22, 1, 18] = 1.0
    volume[3, 20, 0] = 1.0
    region = (slice(None), slice(0, 25), slice(None))
    sampler = PatchSampler([volume], patch, coords=False, foreground_threshold=0.5, foreground_fraction=1.0,
                           region=region)  # fmt: skip
    batch = sampler.sample_with_starts(400, _gen(5))
    assert (batch.x.flatten(1) > 0.5).any(1).all()
    assert (batch.starts[:, 1] + patch).max() <= 25


def test_one_region_given_as_a_list_of_slices_is_one_region_for_every_volume():
    import numpy as np
    import torch

    from volscore.data.patches import PatchSampler

    volumes = [np.ones((12, 12, 12), np.float32), np.ones((12, 12, 12), np.float32)]
    region = [slice(None), slice(0, 8), slice(None)]
    sampler = PatchSampler(volumes, 4, coords=False, region=region)
    starts = sampler.sample_with_starts(64, torch.Generator().manual_seed(0)).starts
    assert int(starts[:, 1].max()) + 4 <= 8
