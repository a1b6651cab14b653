"""Tests for volscore.sampling.stitch: whole-volume scores stitched from patch evaluations.

A pointwise patch function (1x1x1 receptive field, coordinate dependent) has a closed-form whole-volume score,
so every mode must reproduce it exactly, whatever the tiling; coverage and batching are checked by recording
the tiles patch_fn sees (their coordinates name their voxels). Small odd volumes, seeded generators.
"""

from __future__ import annotations

import pytest
import torch
from phantoms import smooth_field

from volscore.data.patches import coordinate_grid
from volscore.metrics.seams import seam_score
from volscore.noise import append_dims
from volscore.sampling.stitch import (
    LONE_TILE_SLOW_DH,
    StitchedScore,
    _tile_coords,
    axis_segments,
    blend_score,
    stitch_score,
)

SIGMAS = torch.tensor([0.3, 2.0])


def pointwise(x, sigma, coords):
    """A score with a 1x1x1 receptive field whose value depends on where the voxel is in the whole volume."""
    out = -x / (1 + append_dims(sigma, x.ndim) ** 2)
    return out if coords is None else out + 0.1 * coords.sum(1, keepdim=True)


def whole_grid(shape):
    """Reference coordinates (1, d, *shape), built independently of the tiler: linspace(-1, 1, n) per axis."""
    axes = [torch.linspace(-1, 1, n) if n > 1 else torch.zeros(1) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def direct(x, sigma):
    return pointwise(x, sigma, whole_grid(x.shape[2:]).expand(x.shape[0], -1, *x.shape[2:]))


CASES = [  # (volume shape, patch size)
    ((20, 23, 17), 8),  # no axis a multiple of the patch
    ((5, 6, 7), 8),  # smaller than the patch on every axis
    ((4, 20, 9), 8),  # smaller on one axis only
    ((20, 23, 17), (8, 5, 11)),  # anisotropic patch
    ((1, 16, 9), (4, 4, 4)),  # a singleton axis
]


@pytest.mark.parametrize("mode", ["shift", "blend", "fixed"])
@pytest.mark.parametrize("shape,patch", CASES)
@pytest.mark.parametrize("channels", [1, 2])
def test_pointwise_score_matches_whole_volume(mode, shape, patch, channels):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, *shape, generator=g)
    score_fn = StitchedScore(
        pointwise, patch, stitch=mode, tile_batch=4, generator=torch.Generator().manual_seed(1)
    )
    expected = direct(x, SIGMAS)
    for _ in range(3 if mode == "shift" else 1):  # each shift call uses a new offset
        torch.testing.assert_close(score_fn(x, SIGMAS), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("offset", [(0, 0, 0), (1, 7, 3), (7, 2, 5), (4, 4, 4)])
def test_stitch_score_explicit_offsets(offset):
    x = torch.randn(2, 1, 20, 23, 17, generator=torch.Generator().manual_seed(0))
    out = stitch_score(pointwise, x, SIGMAS, 8, offset=offset, tile_batch=3)
    torch.testing.assert_close(out, direct(x, SIGMAS), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["shift", "blend"])
def test_no_coords_and_scalar_sigma(mode):
    def fn(x, sigma, coords):
        assert coords is None
        return pointwise(x, sigma, None)

    x = torch.randn(1, 1, 9, 10, 11, generator=torch.Generator().manual_seed(0))
    out = StitchedScore(fn, 4, stitch=mode, coords=False)(x, 0.5)
    torch.testing.assert_close(out, -x / 1.25)


def test_two_dimensional_images():
    x = torch.randn(2, 1, 19, 13, generator=torch.Generator().manual_seed(0))
    for mode in ("shift", "blend"):
        out = StitchedScore(pointwise, 8, stitch=mode)(x, SIGMAS)
        torch.testing.assert_close(out, direct(x, SIGMAS), atol=1e-6, rtol=1e-5)


def test_shift_offsets_move_and_are_reproducible():
    x = torch.zeros(1, 1, 20, 23, 17)

    def offsets(seed):
        score_fn = StitchedScore(pointwise, 8, generator=torch.Generator().manual_seed(seed))
        seen = []
        for _ in range(6):
            score_fn(x, 1.0)
            seen.append(score_fn.offset)
        return seen

    first = offsets(3)
    assert first == offsets(3)
    assert first != offsets(4)
    assert len(set(first)) > 1
    assert all(0 <= o < 8 for offset in first for o in offset)
    fixed = StitchedScore(pointwise, 8, stitch="fixed")
    fixed(x, 1.0)
    assert fixed.offset == (0, 0, 0)


def test_shift_covers_every_voxel_exactly_once():
    shape = (20, 23, 17)
    counts = torch.zeros(shape)
    n_evaluated = 0

    def ones(x, sigma, coords):
        nonlocal n_evaluated
        if x.shape[0] == 2 and torch.equal(coords[0], coords[1]):  # a lone tile, evaluated twice on purpose
            coords = coords[:1]
        n_evaluated += coords[:, 0].numel()
        # coordinates -> voxel indices: each tile names the voxels it scores
        idx = [((coords[:, a] + 1) * (n - 1) / 2).round().long().flatten() for a, n in enumerate(shape)]
        counts.index_put_(tuple(idx), torch.ones(idx[0].numel()), accumulate=True)
        return torch.ones_like(x)

    score_fn = StitchedScore(ones, 8, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(1, 1, *shape)
    for _ in range(4):
        counts.zero_()
        n_evaluated = 0
        out = score_fn(x, 1.0)
        assert torch.equal(out, torch.ones_like(x))
        assert torch.equal(counts, torch.ones(shape))
        assert n_evaluated == counts.numel()


@pytest.mark.parametrize(
    "size, batch", [(32, 2), (36, 1)], ids=["small-lone-tile-paired", "large-lone-tile-alone"]
)
def test_a_lone_tile_is_doubled_only_where_the_slow_kernel_would_take_it(size, batch):
    """A lone tile with D * H <= LONE_TILE_SLOW_DH goes as a batch of two (PyTorch's slow N = 1 kernel); a
    larger one goes alone (twice would double its cost). Either way the score is the tile's own."""
    assert (32 * 32 <= LONE_TILE_SLOW_DH) and (36 * 36 > LONE_TILE_SLOW_DH)
    batches = []

    def pointwise(x, sigma, coords):
        batches.append(x.shape[0])
        return -x

    x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    out = StitchedScore(pointwise, size, stitch="fixed")(x, 1.0)
    assert batches == [batch]
    torch.testing.assert_close(out, -x)


@pytest.mark.parametrize("mode", ["shift", "blend", "fixed"])
def test_tile_batch_bounds_tiles_per_call(mode):
    sizes = []

    def recording(x, sigma, coords):
        sizes.append(x.shape[0])
        assert sigma.shape == (x.shape[0],) and coords.shape[0] == x.shape[0]
        return pointwise(x, sigma, coords)

    x = torch.randn(2, 1, 20, 23, 17, generator=torch.Generator().manual_seed(0))
    StitchedScore(recording, 8, stitch=mode, tile_batch=3)(x, SIGMAS)
    assert sizes and max(sizes) <= 3


def test_shift_never_calls_with_a_single_tile_on_cpu():
    # a batch of one small volume sends PyTorch's CPU conv to its slow native kernel: the tiler avoids it
    sizes = []

    def recording(x, sigma, coords):
        sizes.append(x.shape[0])
        return x

    for offset in [(0, 0, 0), (3, 5, 7), (7, 1, 2)]:
        stitch_score(recording, torch.zeros(1, 1, 20, 23, 17), 1.0, 8, offset=offset, tile_batch=3)
    assert min(sizes) == 2
    sizes.clear()
    stitch_score(recording, torch.zeros(1, 1, 20, 23, 17), 1.0, 8, offset=(3, 5, 7), tile_batch=1)
    assert set(sizes) == {1}


def test_tile_batch_bounds_voxels_per_call():
    # merged end tiles are larger than a patch: fewer of them per call, so memory stays that of tile_batch
    # patches, or of two tiles where a single larger tile already exceeds it
    calls = []

    def recording(x, sigma, coords):
        calls.append((x.shape[0], x[0, 0].numel()))
        return x

    stitch_score(recording, torch.zeros(1, 1, 40, 40, 40), 1.0, 8, offset=(3, 5, 7), tile_batch=4)
    assert all(n * voxels <= 4 * 8**3 or n <= 2 for n, voxels in calls)
    assert all(voxels < 16**3 for _, voxels in calls)  # merged tiles stay below 2p per axis


@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("shape", [(20, 23, 17), (5, 9, 7)])
def test_blend_weights_sum_to_one(overlap, shape):
    const = lambda x, sigma, coords: torch.full_like(x, 0.7)  # noqa: E731
    out = blend_score(const, torch.randn(2, 2, *shape), SIGMAS, 8, overlap=overlap)
    torch.testing.assert_close(out, torch.full_like(out, 0.7))


def test_gradients_flow_only_when_caller_allows():
    x = torch.randn(2, 1, 9, 10, 11, requires_grad=True)
    score_fn = StitchedScore(pointwise, 4)
    with torch.no_grad():
        assert not score_fn(x, SIGMAS).requires_grad
    score_fn(x, SIGMAS).sum().backward()
    expected = -1 / (1 + append_dims(SIGMAS, 5) ** 2) * torch.ones_like(x)
    torch.testing.assert_close(x.grad, expected)


def test_axis_segments_tile_each_axis():
    for n in range(8, 50):
        for offset in range(8):
            segments = axis_segments(n, 8, offset)
            starts = [a for a, _ in segments]
            assert starts[0] == 0 and sum(s for _, s in segments) == n
            assert [a + s for a, s in segments[:-1]] == starts[1:]  # contiguous, no overlap
            assert all(s >= 8 for _, s in segments)
            assert n < 24 or all(s < 16 for _, s in segments)
            assert all((a - offset) % 8 == 0 for a in starts[1:])  # cuts lie on the shifted grid
    assert [s for _, s in axis_segments(256, 32, 5)] == [37, 32, 32, 32, 32, 32, 59]


def test_tile_coords_extrapolate_past_the_volume():
    c = _tile_coords((5, 1), (-2, 0), (8, 3), torch.float32, torch.device("cpu"))
    torch.testing.assert_close(c[0, :, 0], -1 + 2 * torch.arange(-2.0, 6.0) / 4)
    assert torch.equal(c[1], torch.zeros(8, 3))


def box_blur(x, sigma, coords):
    """A 3x3x3 mean with zero padding: a model that is wrong at its tile edges (separable, no conv)."""
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        pad = [0, 0] * (x.ndim - 1 - axis) + [1, 1]
        xp = torch.nn.functional.pad(x, pad)
        x = (xp.narrow(axis, 0, n) + xp.narrow(axis, 1, n) + xp.narrow(axis, 2, n)) / 3
    return x


def test_shift_moves_the_seams_of_a_boundary_sensitive_model():
    # fixed tiling puts the blur's edge error on one grid at every call; random shifts spread it, so the
    # average over calls (what a Langevin chain accumulates) has no seams on that grid
    x = smooth_field((32, 32, 32))[None, None]
    fixed = StitchedScore(box_blur, 8, stitch="fixed")(x, 1.0)[0, 0]
    shift_fn = StitchedScore(box_blur, 8, generator=torch.Generator().manual_seed(0))
    shifted = torch.stack([shift_fn(x, 1.0)[0, 0] for _ in range(8)]).mean(0)
    assert seam_score(fixed, 8) > 1.3
    assert seam_score(shifted, 8) < 1.15
    direct_blur = box_blur(x, None, None)[0, 0]  # and the blur itself is right away from the tile edges
    torch.testing.assert_close(fixed[1:7, 1:7, 1:7], direct_blur[1:7, 1:7, 1:7])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="stitch must be one of"):
        StitchedScore(pointwise, 8, stitch="sliding")
    with pytest.raises(ValueError, match="patch_size"):
        StitchedScore(pointwise, (8, 8))(torch.zeros(1, 1, 8, 8, 8), 1.0)
    with pytest.raises(ValueError, match="patch_fn returned"):
        stitch_score(lambda x, s, c: x[:, :1], torch.zeros(1, 2, 8, 8, 8), 1.0, 8)


def test_blend_with_a_window_offset_still_reproduces_a_pointwise_score():
    x = torch.randn(2, 1, 13, 11, 9, generator=torch.Generator().manual_seed(11))
    expected = pointwise(x, SIGMAS, None)
    for offset in [(0, 0, 0), (3, 1, 2), (1, 2, 0)]:
        out = blend_score(lambda t, s, c: pointwise(t, s, None), x, SIGMAS, 8, coords=False, offset=offset)
        torch.testing.assert_close(out, expected)
    # with coordinates too: the padded margin gets extrapolated coordinates, the volume its own
    stitched = StitchedScore(
        pointwise, 8, stitch="blend", blend_offset=True, generator=torch.Generator().manual_seed(0)
    )
    whole = pointwise(x, SIGMAS, coordinate_grid(x.shape[2:])[None].expand(2, -1, -1, -1, -1))
    offsets = set()
    for _ in range(4):
        torch.testing.assert_close(stitched(x, SIGMAS), whole)
        offsets.add(stitched.offset)
    assert len(offsets) > 1 and all(0 <= o < 4 for off in offsets for o in off)  # stride 4 at overlap 0.5
