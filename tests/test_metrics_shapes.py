"""Tests for volscore/metrics/shapes.py: IoU distances counted by hand, MMD/COV/1-NNA on hand-made sets
whose answers are known (identical, disjoint, one distribution), connectivity, and ``evaluate_shapes``."""

from __future__ import annotations

import pytest
import torch

from volscore.metrics import connected_fraction, coverage, evaluate_shapes, iou_distance_matrix, mmd, one_nna


def ball(size: int, center: tuple[float, float, float], radius: float) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    return ((grid - torch.tensor(center)[:, None, None, None]).pow(2).sum(0) <= radius**2).float()


def test_iou_distance_matrix_matches_a_pairwise_count() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 6, 7, 5, generator=g)
    b = torch.rand(4, 1, 6, 7, 5, generator=g)  # channel dim accepted
    b[0] = 0.0  # an empty volume
    a[4] = 0.0
    d = iou_distance_matrix(a, b, threshold=0.5, max_elements=2 * 6 * 7 * 5)  # force 2-row blocks
    assert d.shape == (5, 4)
    for i in range(5):
        for j in range(4):
            oa, ob = a[i] > 0.5, b[j, 0] > 0.5
            union = (oa | ob).sum().item()
            expected = 1 - (oa & ob).sum().item() / union if union else 0.0
            assert d[i, j].item() == pytest.approx(expected, abs=1e-12)
    assert d[4, 0] == 0.0  # two empty volumes are identical
    assert torch.allclose(iou_distance_matrix(a, a).diagonal(), torch.zeros(5, dtype=torch.float64))


def test_mmd_coverage_and_1nna_on_identical_sets() -> None:
    shapes = torch.stack([ball(12, (6, 6, 6), r) for r in (2, 3, 4, 5)])
    d = iou_distance_matrix(shapes, shapes)
    assert coverage(d) == 1.0
    assert mmd(d) == 0.0
    # Exact copies of the reference set: every shape's nearest neighbour is its twin, so 1-NNA is 0
    # (the memorisation signature); 0.5 is the value for independent draws of one distribution.
    assert one_nna(d, d, d) == 0.0


def test_1nna_is_one_half_for_sets_from_one_distribution() -> None:
    # Hand-made on a line, gen {0, 1} and ref {1.5, 3}; nearest neighbours:
    # 0 -> 1 right, 1 -> 1.5 wrong, 1.5 -> 1 wrong, 3 -> 1.5 right.
    gen, ref = torch.tensor([[0.0], [1.0]]), torch.tensor([[1.5], [3.0]])
    assert one_nna(torch.cdist(gen, gen), torch.cdist(ref, ref), torch.cdist(gen, ref)) == 0.5
    # Two independent draws from one Gaussian: 0.5 up to sampling noise (std about 0.025 here).
    g = torch.Generator().manual_seed(0)
    gen, ref = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)
    value = one_nna(torch.cdist(gen, gen), torch.cdist(ref, ref), torch.cdist(gen, ref))
    assert abs(value - 0.5) < 0.1


def test_1nna_and_coverage_on_far_sets() -> None:
    # Balls in opposite corners: overlapping within each set, disjoint across sets.
    gen = torch.stack([ball(16, (4, 4, 4), r) for r in (2, 2.5, 3, 3.5)])
    ref = torch.stack([ball(16, (11, 11, 11), r) for r in (2, 2.5, 3, 3.5, 4)])
    d_gr = iou_distance_matrix(gen, ref)
    assert torch.all(d_gr == 1.0)
    assert one_nna(iou_distance_matrix(gen, gen), iou_distance_matrix(ref, ref), d_gr) == 1.0
    assert mmd(d_gr) == 1.0
    assert coverage(d_gr) == pytest.approx(1 / 5)  # all ties go to the first reference shape


def test_connected_fraction() -> None:
    sphere = ball(16, (8, 8, 8), 5)
    two_cubes = torch.zeros(16, 16, 16)
    two_cubes[2:6, 2:6, 2:6] = 1
    two_cubes[9:13, 9:13, 9:13] = 1
    corner = torch.zeros(16, 16, 16)  # two cubes touching at one corner only
    corner[2:6, 2:6, 2:6] = 1
    corner[6:10, 6:10, 6:10] = 1
    empty = torch.zeros(16, 16, 16)
    assert connected_fraction(sphere[None]) == 1.0
    assert connected_fraction(two_cubes[None]) == 0.0
    assert connected_fraction(torch.stack([sphere, two_cubes, sphere, empty])[:, None]) == 0.5
    assert connected_fraction(corner[None], connectivity=6) == 0.0
    assert connected_fraction(corner[None].numpy(), connectivity=26) == 1.0
    with pytest.raises(ValueError):
        connected_fraction(sphere[None], connectivity=8)


def test_evaluate_shapes_scores_copies_far_sets_and_the_floor() -> None:
    g = torch.Generator().manual_seed(0)

    def balls(n: int, lo: float, hi: float) -> torch.Tensor:
        c = lo + (hi - lo) * torch.rand(n, 3, generator=g)
        r = 2 + 2 * torch.rand(n, generator=g)
        return torch.stack([ball(16, tuple(ci.tolist()), float(ri)) for ci, ri in zip(c, r, strict=True)])

    train, reference = balls(40, 5, 11), balls(20, 5, 11)
    # Copies of training shapes: at distance 0 from the training set, unlike the held-out reference.
    copies = evaluate_shapes(train[:20], reference, train, seed=0)
    assert copies["nn_train_min"] == 0.0 and copies["nn_train_mean"] == 0.0
    assert copies["ref_nn_train_mean"] > 0.1
    assert copies["connected_fraction"] == 1.0 and copies["ref_connected_fraction"] == 1.0
    assert copies["empty_fraction"] == 0.0
    # The floor is a training subset of the same size against the same reference set.
    assert 0.0 < copies["floor_coverage"] <= 1.0 and 0.0 <= copies["floor_one_nna"] <= 1.0
    # Far from the data (balls in one corner, clipped from a wider range): 1-NNA 1, coverage low.
    far = evaluate_shapes(balls(20, 2.5, 3.5) * 3 - 1, reference, train, seed=0)
    assert far["one_nna"] > 0.9
    assert far["coverage"] < copies["floor_coverage"]
    assert far["mmd"] > copies["floor_mmd"]
    # The reference set itself as samples: coverage 1, MMD 0.
    same = evaluate_shapes(reference, reference, train, seed=0)
    assert same["coverage"] == 1.0 and same["mmd"] == 0.0
    bad = reference.clone()
    bad[2, 3, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="1 of 20 samples contain NaN"):
        evaluate_shapes(bad, reference, train)


def test_evaluate_shapes_class_histogram() -> None:
    from volscore.metrics import train_classifier

    g = torch.Generator().manual_seed(0)
    small, large = ball(16, (8, 8, 8), 2.5), ball(16, (8, 8, 8), 6)
    x = torch.stack([small, large] * 12)[:, None]
    y = torch.tensor([0, 1] * 12)
    clf = train_classifier(x, y, steps=150, batch_size=8, width=4, feature_dim=8, max_shift=1)
    samples = torch.stack([small] * 6 + [large] * 2) + 0.01 * torch.rand(8, 16, 16, 16, generator=g)
    m = evaluate_shapes(samples, x[:8], x, classifier=clf)
    assert m["class_histogram"][:2] == pytest.approx([0.75, 0.25])
    assert sum(m["class_histogram"]) == pytest.approx(1.0) and len(m["class_histogram"]) == 10
    assert 0.0 <= m["confident_fraction"] <= 1.0
