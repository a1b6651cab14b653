"""Tests for volscore/data/augment.py and the augmented path of ``PatchSampler`` (``augment=``).

- Seeding: the same generator seed gives bit-identical augmented batches; the patch positions are drawn
  before the augmentations, so they are the plain sampler's; ``augment=None`` / ``()`` is the plain sampler.
- Flips: an augmented batch is the plain batch (same seed) flipped along the drawn axes, image and
  coordinates alike, also for a volume smaller than the patch (padding).
- Coordinates name where a voxel's content came from: on a volume that is a linear ramp of the voxel index,
  every augmented voxel (flips, rotations, scalings) still equals the ramp at the index its coordinates give.
- ``affine_margin`` is large enough (and ``warp`` follows the output -> input convention): warping a crop of
  a linear ramp reproduces the ramp at the transformed grid; a crop without the margin does not.
- Gamma and bias: zeros stay zero, signs are kept, values stay finite and within the closed-form bounds
  (gamma: [0, 1] -> [0, 1], monotone; bias: the log-ratio is the drawn Legendre polynomial, |log| <= 1).
- ``TrainConfig`` refuses unknown or repeated augmentation names and bad ``multires`` spacings;
  ``open_source`` refuses them for non-NIfTI data and makes one extra copy per multires spacing.
All seeded; volumes of at most 30^3 voxels, patches of 8.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from phantoms import noisy_head

from volscore.config import AUGMENTATIONS, TrainConfig
from volscore.data.augment import (
    BIAS_COEFFICIENT,
    BIAS_TERMS,
    GAMMA,
    AugmentDraw,
    PatchAugmenter,
    affine_margin,
    legendre_terms,
    rotation_scaling,
    warp,
)
from volscore.data.patches import PatchSampler, coordinate_patch
from volscore.data.sources import open_source

SHAPE = (30, 28, 26)
RAMP_W = np.array([0.03, -0.02, 0.011])  # value = w . index + c: exact in float32 at these sizes
RAMP_C = 0.5
# Patches (8^3) lie in 8:22 x 8:20 x 8:18, so an affine crop (margin <= 5 at 8^3) stays inside the volume.
INNER = (slice(8, 22), slice(8, 20), slice(8, 18))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _ramp(shape=SHAPE):
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return (np.tensordot(RAMP_W, index, 1) + RAMP_C).astype(np.float32)


def _index_from_coords(coords, shape):
    """Coordinates (B, 3, ...) -> fractional voxel indices (B, 3, ...), float64: i = (c + 1) (n - 1) / 2."""
    c = coords.double().numpy()
    return np.stack([(c[:, a] + 1) * (shape[a] - 1) / 2 for a in range(3)], 1)


def _volumes():
    rng = np.random.default_rng(0)
    return [rng.random((20, 18, 16)).astype(np.float32), rng.random((6, 12, 10)).astype(np.float32)]


@pytest.mark.parametrize("names", [["flip"], ["affine"], ["gamma", "bias"], list(AUGMENTATIONS)])
def test_same_seed_same_augmented_batch(names):
    sampler = PatchSampler(_volumes(), 8, augment=names)
    a, b = sampler.sample_with_starts(6, _gen(3)), sampler.sample_with_starts(6, _gen(3))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    c = sampler.sample_with_starts(6, _gen(4))
    assert not torch.equal(a.x, c.x)


def test_without_augmentations_the_sampler_draws_as_before():
    plain = PatchSampler(_volumes(), 8)
    g0 = _gen(5)
    reference = plain.sample_with_starts(7, g0)
    for augment in (None, (), []):
        sampler = PatchSampler(_volumes(), 8, augment=augment)
        assert not sampler.augment
        g = _gen(5)
        batch = sampler.sample_with_starts(7, g)
        for u, v in zip(batch, reference, strict=True):
            assert torch.equal(u, v)
        assert torch.equal(g.get_state(), g0.get_state())  # no extra draws either
    # With augmentations: the same positions (drawn first), then more draws from the generator.
    g = _gen(5)
    augmented = PatchSampler(_volumes(), 8, augment=["gamma"]).sample_with_starts(7, g)
    assert torch.equal(augmented.starts, reference.starts)
    assert torch.equal(augmented.volume_index, reference.volume_index)
    assert not torch.equal(g.get_state(), g0.get_state())


def test_flips_move_image_and_coordinates_together():
    """The flip-augmented batch is the plain batch (same seed) flipped along the drawn axes, both tensors."""
    volumes, b = _volumes(), 16
    g = _gen(7)
    plain = PatchSampler(volumes, 8).sample_with_starts(b, g)
    flips = PatchAugmenter(["flip"]).draw(b, g).flip  # the draws the augmented sampler makes next
    batch = PatchSampler(volumes, 8, augment=["flip"]).sample_with_starts(b, _gen(7))
    assert 0 < int(flips.sum()) < 3 * b  # some axes flipped, some not
    assert torch.equal(batch.starts, plain.starts) and torch.equal(batch.volume_index, plain.volume_index)
    for i in range(b):
        dims = [1 + a for a in range(3) if flips[i, a]]
        assert torch.equal(batch.x[i], plain.x[i].flip(dims) if dims else plain.x[i])
        assert torch.equal(batch.coords[i], plain.coords[i].flip(dims) if dims else plain.coords[i])
    # Coordinates off: still flipped images, no coordinates returned.
    no_coords = PatchSampler(volumes, 8, coords=False, augment=["flip"]).sample_with_starts(b, _gen(7))
    assert no_coords.coords is None and torch.equal(no_coords.x, batch.x)


@pytest.mark.parametrize("names", [["flip"], ["affine"], ["flip", "affine"]])
def test_coordinates_name_where_the_content_came_from(names):
    """On a linear ramp of the voxel index, each augmented voxel equals the ramp at its coordinates' index
    (rotations and scalings interpolate image and coordinates alike; trilinear is exact on linear data)."""
    sampler = PatchSampler([_ramp()], 8, region=INNER, foreground_fraction=0.0, augment=names)
    draw_gen = _gen(11)
    batch = sampler.sample_with_starts(16, _gen(11))
    PatchSampler([_ramp()], 8, region=INNER, foreground_fraction=0.0).sample_with_starts(16, draw_gen)
    draw = sampler.augment.draw(16, draw_gen)
    if "affine" in names:  # the test means something only if some patches were warped
        assert 0 < sum(m is not None for m in draw.affine) < 16
    index = _index_from_coords(batch.coords, SHAPE)
    expected = np.einsum("a,ba...->b...", RAMP_W, index) + RAMP_C
    np.testing.assert_allclose(batch.x[:, 0].numpy(), expected, atol=2e-6)


def _crop_of_ramp(matrix, patch, margin):
    size = [p + 2 * m for p, m in zip(patch, margin, strict=True)]
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in size], indexing="ij"))
    ramp = np.tensordot(RAMP_W * 10, index, 1) + RAMP_C
    # The ramp at output offsets u from the patch centre, mapped to input offsets A u from the crop's centre.
    u = np.stack(np.meshgrid(*[np.arange(p) - (p - 1) / 2 for p in patch], indexing="ij"))
    where = np.einsum("ab,b...->a...", matrix, u) + ((np.asarray(size) - 1) / 2)[:, None, None, None]
    expected = np.tensordot(RAMP_W * 10, where, 1) + RAMP_C
    out = warp(torch.from_numpy(ramp).float()[None], matrix, patch)
    return np.asarray(out[0]), expected


def test_affine_margin_is_large_enough_for_warp():
    rng = np.random.default_rng(2)
    patch = (8, 9, 10)
    for extreme in (False, True):
        for _ in range(3):
            # random draws of the augmentation's range, and its corners (largest rotations and scalings)
            signs = rng.choice([-1.0, 1.0], size=6) if extreme else rng.uniform(-1, 1, size=6)
            matrix = rotation_scaling(signs[:3] * math.radians(10), signs[3:] * math.log(1.15))
            margin = affine_margin(matrix, patch)
            # every output corner, moved by the matrix, lies at least one voxel inside the crop
            corners = np.array(np.meshgrid(*[[-(p - 1) / 2, (p - 1) / 2] for p in patch])).reshape(3, -1)
            reach = np.abs(matrix @ corners).max(1)
            half = (np.asarray(patch) + 2 * np.asarray(margin) - 1) / 2
            assert (reach + 1 <= half + 1e-9).all()
            out, expected = _crop_of_ramp(matrix, patch, margin)
            np.testing.assert_allclose(out, expected, atol=2e-5)
    # Without the margin a scaling-up warp reads past the crop (border padding): the ramp is lost.
    matrix = rotation_scaling([0.0, 0.0, 0.0], [math.log(1.15)] * 3)
    assert min(affine_margin(matrix, patch)) >= 1
    out, expected = _crop_of_ramp(matrix, patch, [0, 0, 0])
    assert np.abs(out - expected).max() > 0.1


def test_rotation_scaling_is_rotation_times_scaling():
    matrix = rotation_scaling([0.1, -0.2, 0.15], [0.1, 0.0, -0.1])
    rotation = matrix @ np.diag(np.exp([-0.1, 0.0, 0.1]))
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(rotation_scaling([0, 0, 0], [0, 0, 0]), np.eye(3))
    assert affine_margin(np.eye(3), (8, 8, 8)) == [1, 1, 1]  # one neighbour for the bilinear read


def test_gamma_keeps_zeros_signs_and_the_unit_range():
    rng = np.random.default_rng(3)
    b = 4
    x = torch.from_numpy(rng.uniform(-0.3, 1.0, size=(b, 1, 6, 6, 6)).astype(np.float32))
    x[:, :, :2] = 0.0
    coords = coordinate_patch((6, 6, 6), (0, 0, 0), 6).expand(b, 3, 6, 6, 6).clone()
    gammas = torch.tensor([GAMMA, 1 / GAMMA, 1.0, 1.2], dtype=torch.float64)
    out, out_coords = PatchAugmenter.apply(x, coords, AugmentDraw(gamma=gammas))
    assert torch.equal(out_coords, coords) and torch.isfinite(out).all()
    assert torch.equal(out[:, :, :2], x[:, :, :2])  # zeros stay zero
    assert torch.equal(out[x < 0], x[x < 0])  # the background's negative noise is left alone
    positive = x > 0
    assert ((out[positive] > 0) & (out[positive] <= 1)).all()
    for i, g in enumerate(gammas.tolist()):
        torch.testing.assert_close(out[i][positive[i]], x[i][positive[i]] ** g)
    assert torch.equal(out[2], x[2])  # gamma 1: untouched
    assert not torch.equal(x, out)  # apply returns new tensors, the input is kept


def test_bias_field_is_the_drawn_smooth_polynomial():
    rng = np.random.default_rng(4)
    b, shape = 3, (30, 28, 26)
    x = torch.from_numpy(rng.uniform(0.1, 1.0, size=(b, 1, 8, 8, 8)).astype(np.float32))
    x[:, :, 0] = 0.0
    x[:, :, 1] = -x[:, :, 1]
    starts = [(0, 0, 0), (22, 20, 18), (11, 5, 9)]  # corners and an inner patch of the volume
    coords = torch.stack([coordinate_patch(shape, s, 8) for s in starts])
    bias = torch.full((b, BIAS_TERMS), BIAS_COEFFICIENT, dtype=torch.float64)  # the largest field
    bias[1] = -BIAS_COEFFICIENT
    bias[2] = torch.from_numpy(rng.uniform(-1, 1, size=BIAS_TERMS)) * BIAS_COEFFICIENT
    out, _ = PatchAugmenter.apply(x, coords, AugmentDraw(bias=bias))
    assert torch.isfinite(out).all() and torch.equal(out[:, :, 0], x[:, :, 0])
    assert (torch.sign(out) == torch.sign(x)).all()
    nonzero = x != 0
    ratio = (out[nonzero].double() / x[nonzero].double()).log()
    assert ratio.abs().max() <= BIAS_COEFFICIENT * BIAS_TERMS + 1e-6  # |P_k| <= 1 inside the volume
    for i in range(b):
        log_field = torch.einsum("k,k...->...", bias[i], legendre_terms(coords[i]))
        m = nonzero[i, 0]
        torch.testing.assert_close((out[i, 0][m].double() / x[i, 0][m].double()).log(), log_field[m])
    # legendre_terms: 1, the coordinates, P2 = (3 c^2 - 1) / 2 and the products, each within [-1, 1]
    terms = legendre_terms(coordinate_patch((5, 5, 5), (0, 0, 0), 5))
    assert terms.shape == (BIAS_TERMS, 5, 5, 5) and terms.abs().max() <= 1
    assert terms[4, 0, 0, 0] == 1 and terms[4, 2, 0, 0] == -0.5


def test_augmented_values_stay_finite_and_bounded():
    """All four augmentations on a [0, 1] volume: finite, non-negative, at most e (the largest bias field)
    times 1 (gamma keeps [0, 1]); background zeros are still there."""
    rng = np.random.default_rng(5)
    volume = np.zeros((24, 24, 24), dtype=np.float32)
    volume[6:18, 6:18, 6:18] = rng.uniform(0.2, 1.0, size=(12, 12, 12))
    batch = PatchSampler([volume], 8, augment=list(AUGMENTATIONS)).sample_with_starts(32, _gen(6))
    assert torch.isfinite(batch.x).all() and torch.isfinite(batch.coords).all()
    assert batch.x.min() >= 0 and batch.x.max() <= math.e * 1.0 + 1e-6
    assert (batch.x == 0).any()


def test_unknown_or_repeated_names_are_refused():
    for names in (["rotate"], ["flip", "flip"]):
        with pytest.raises(ValueError, match="augment"):
            PatchAugmenter(names)
        with pytest.raises(ValueError, match="--augment"):
            TrainConfig(data=["mni152"], out="r", steps=1, augment=names).validate()
    # the order of config.AUGMENTATIONS, whatever the order given
    assert PatchAugmenter(["bias", "flip"]).names == ("flip", "bias")
    TrainConfig(data=["mni152"], out="r", steps=1, augment=list(AUGMENTATIONS), multires=[2.0]).validate()


@pytest.mark.parametrize("multires", [[], [0.0], [-1.0], [math.nan], [2.0, math.inf]])
def test_bad_multires_spacings_are_refused(multires):
    with pytest.raises(ValueError, match="--multires"):
        TrainConfig(data=["mni152"], out="r", steps=1, multires=multires).validate()


def test_augment_and_multires_are_for_nifti_data(tmp_path):
    for data in ("mnist", "shapes:primitives@16"):
        with pytest.raises(ValueError, match="NIfTI"):
            open_source(data, augment=["flip"])
        with pytest.raises(ValueError, match="NIfTI"):
            open_source(data, multires=[2.0])
    path = noisy_head(tmp_path / "head.nii.gz", n=24)  # 1.5 x 1.5 x 2 mm voxels
    source = open_source([str(path)], patch_size=8, augment=["flip"], multires=[3.0])
    assert len(source.sampler.volumes) == 2 and source.meta["augment"] == ["flip"]
    assert source.meta["multires"]["spacings"] == [3.0]
    # the 3 mm copy spans the same field of view: about 24 * (1.5, 1.5, 2) / 3 voxels
    extra = source.meta["multires"]["shapes"][0]
    assert all(abs(n - 24 * z / 3) <= 1.5 for n, z in zip(extra, (1.5, 1.5, 2.0), strict=True))
    assert source.meta["shapes"] == [[24, 24, 24]]  # one entry per file: the first copy
    x, coords = source.sample(4, _gen(0))
    assert x.shape == (4, 1, 8, 8, 8) and coords.shape == (4, 3, 8, 8, 8)
