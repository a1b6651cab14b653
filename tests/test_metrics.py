"""Tests for volscore/metrics.py.

The maths against closed forms (Frechet distance of Gaussians, PSNR from the MSE, SSIM of identical
volumes, IoU counted by hand), the shape statistics on hand-made sets, and the classifier on small
synthetic "digits" (ten random block patterns), so the tests need no dataset. One slow test checks the
accuracy on the bundled MNIST file when it is present.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from volscore import metrics
from volscore.metrics import (
    MnistClassifier,
    connected_fraction,
    coverage,
    evaluate_mnist_samples,
    frechet_distance,
    iou_distance_matrix,
    load_or_train_classifier,
    mmd,
    one_nna,
    psnr,
    ssim,
    train_classifier,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The models here are tiny: a second thread buys nothing, and on a busy 2-core machine
    # OpenMP's waiting made 5 training steps take 6 s instead of 0.07 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- synthetic digits


def synthetic_digits(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten fixed random 7x7 block patterns upscaled to 28x28, shifted by up to 2 px, with noise."""
    protos = torch.rand(10, 1, 7, 7, generator=torch.Generator().manual_seed(123)) < 0.35
    protos = protos.float().repeat_interleave(4, -1).repeat_interleave(4, -2)  # (10, 1, 28, 28)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    images = metrics._random_shift(protos[labels], 2, g)
    images = images * (0.7 + 0.3 * torch.rand(len(labels), 1, 1, 1, generator=g))
    images = (images + 0.1 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return images, labels


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    x_train, y_train = synthetic_digits(20, seed=0)
    x_test, y_test = synthetic_digits(10, seed=1)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@pytest.fixture(scope="module")
def classifier(digits: dict[str, torch.Tensor]) -> MnistClassifier:
    return train_classifier(digits["x_train"], digits["y_train"], steps=30, batch_size=32)


# ----------------------------------------------------------------------------- classifier


def test_classifier_shapes_and_size() -> None:
    model = MnistClassifier()
    x = torch.rand(5, 1, 28, 28)
    assert model.features(x).shape == (5, 64)
    assert model(x).shape == (5, 10)
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000


def test_random_shift_is_an_integer_translation() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 9:15] = torch.rand(64, 1, 8, 6)  # content away from the borders
    y = metrics._random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing cut off, nothing added
    shifts = set()
    for xi, yi in zip(x, y, strict=True):
        match = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(torch.roll(xi, (dy, dx), dims=(1, 2)), yi)
        ]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 10  # offsets differ per image


def test_train_classifier_learns_and_is_deterministic(digits: dict, classifier: MnistClassifier) -> None:
    with torch.no_grad():
        acc = (classifier(digits["x_test"]).argmax(1) == digits["y_test"]).float().mean()
    assert acc >= 0.9
    assert not classifier.training
    state = torch.get_rng_state()
    again = train_classifier(digits["x_train"], digits["y_train"], steps=30, batch_size=32)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    for (k, a), b in zip(classifier.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_load_or_train_classifier_caches(tmp_path: Path, digits: dict, monkeypatch) -> None:
    x, y = digits["x_train"], digits["y_train"]
    cache = tmp_path / "sub" / "clf.pt"
    first = load_or_train_classifier(cache, x, y, steps=5, batch_size=16)
    assert cache.exists()
    assert [p.name for p in cache.parent.iterdir()] == ["clf.pt"]  # no temp file left

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded the cache")

    with monkeypatch.context() as m:
        m.setattr(metrics, "train_classifier", no_training)
        loaded = load_or_train_classifier(cache, x, y, steps=5, batch_size=16)
    for a, b in zip(first.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not loaded.training

    # Other arguments, other data, or a corrupt file: retrain with a warning, never crash.
    with pytest.warns(UserWarning, match="retraining"):
        load_or_train_classifier(cache, x, y, steps=6, batch_size=16)
    with pytest.warns(UserWarning, match="retraining"):
        load_or_train_classifier(cache, x[:-1], y[:-1], steps=6, batch_size=16)
    cache.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="retraining"):
        model = load_or_train_classifier(cache, x, y, steps=5, batch_size=16)
    assert isinstance(model, MnistClassifier)
    args = torch.load(cache, weights_only=True)["args"]
    assert (args["steps"], args["seed"], args["batch_size"], args["lr"]) == (5, 0, 16, 2e-3)
    with monkeypatch.context() as m:  # defaults passed explicitly still hit the cache
        m.setattr(metrics, "train_classifier", no_training)
        load_or_train_classifier(cache, x, y, steps=5, batch_size=16, seed=0, lr=2e-3)
    with pytest.raises(TypeError):  # a misspelt argument fails loudly, not as a silent retrain
        load_or_train_classifier(cache, x, y, step=5)


@pytest.mark.slow
def test_classifier_accuracy_on_bundled_mnist() -> None:
    path = Path(__file__).resolve().parents[1] / "data" / "mnist_5k.npz"
    if not path.exists():
        pytest.skip("bundled MNIST not found")
    data = np.load(path)
    images = torch.from_numpy(data["images"]).float().div(255).unsqueeze(1)
    labels = torch.from_numpy(data["labels"].astype(np.int64))
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in range(10):  # stratified 400 / 100 per class, as load_mnist does
        idx = rng.permutation(np.flatnonzero(data["labels"] == c))
        train += idx[:400].tolist()
        test += idx[400:500].tolist()
    model = train_classifier(images[train], labels[train])
    with torch.no_grad():
        acc = (model(images[test]).argmax(1) == labels[test]).float().mean()
    assert acc >= 0.97


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_distance_same_features_is_zero() -> None:
    feats = torch.randn(500, 16, generator=torch.Generator().manual_seed(0)) @ torch.randn(16, 16)
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(feats, feats.numpy()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_translation_is_the_squared_shift() -> None:
    # Same covariance exactly, so only the mean term remains: exact, no Monte Carlo error.
    feats = torch.randn(300, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shift = torch.arange(8, dtype=torch.float64) / 4
    assert frechet_distance(feats, feats + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-7)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    n = 100_000
    a = mu1 + np.sqrt(v1) * rng.normal(size=(n, 6))
    b = mu2 + np.sqrt(v2) * rng.normal(size=(n, 6))
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    # Estimation error of the means and variances is O(sqrt(d / n)) ~ 0.01 here.
    assert frechet_distance(a, b) == pytest.approx(exact, abs=0.05)


def test_frechet_distance_rejects_mismatched_features() -> None:
    with pytest.raises(ValueError):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))


# ----------------------------------------------------------------------------- MNIST evaluation


def test_evaluate_mnist_samples(digits: dict, classifier: MnistClassifier) -> None:
    x_train, x_test = digits["x_train"], digits["x_test"]
    good = evaluate_mnist_samples(x_test, classifier, x_train, x_test)
    assert good["n"] == len(x_test)
    assert len(good["class_histogram"]) == 10
    assert sum(good["class_histogram"]) == pytest.approx(1.0)
    assert 0.0 <= good["confident_fraction"] <= 1.0
    assert good["fd_floor"] < good["fd_ceiling"]
    assert good["fd"] < good["fd_ceiling"] / 2
    assert good["nn_train_mean"] == pytest.approx(good["test_nn_train_mean"])  # samples are the test set

    noise = metrics.blurred_noise_images(100, seed=5)
    bad = evaluate_mnist_samples(noise, classifier, x_train, x_test)
    assert bad["fd"] > 5 * good["fd"]

    # Memorised samples: copies of training images sit at distance 0 from the training set.
    copies = evaluate_mnist_samples(x_train[::2], classifier, x_train, x_test)
    assert copies["nn_train_min"] == 0.0
    assert copies["nn_train_mean"] < 0.5 * copies["test_nn_train_mean"]

    # Samples are clipped to [0, 1] before evaluation.
    scaled = evaluate_mnist_samples(x_test * 5 - 2, classifier, x_train, x_test)
    clipped = evaluate_mnist_samples((x_test * 5 - 2).clamp(0, 1), classifier, x_train, x_test)
    assert scaled == clipped

    diverged = x_test.clone()
    diverged[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"1 of \d+ samples contain NaN"):
        evaluate_mnist_samples(diverged, classifier, x_train, x_test)


# ----------------------------------------------------------------------------- PSNR and SSIM


def test_psnr_matches_the_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(13, 17, 11, generator=g)
    x = ref + 0.05 * torch.randn(ref.shape, generator=g)
    mse = float(((x.double() - ref.double()) ** 2).mean())
    assert psnr(x, ref, data_range=1.0) == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-9)
    assert psnr(x.numpy() * 4, ref.numpy() * 4, data_range=4.0) == pytest.approx(
        10 * math.log10(1.0 / mse), rel=1e-6
    )


def test_ssim_is_one_for_identical_and_lower_for_noisy() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(12, 15, 13, generator=g)
    assert ssim(ref, ref, data_range=1.0) == pytest.approx(1.0, abs=1e-5)
    noisy = ref + 0.1 * torch.randn(ref.shape, generator=g)
    noisier = ref + 0.3 * torch.randn(ref.shape, generator=g)
    s1, s2 = ssim(noisy, ref, data_range=1.0), ssim(noisier, ref, data_range=1.0)
    assert s2 < s1 < 1.0
    batch = torch.stack([noisy, noisier])[:, None]  # (B, C, D, H, W): mean over the batch
    assert ssim(batch, torch.stack([ref, ref])[:, None], data_range=1.0) == pytest.approx(
        (s1 + s2) / 2, rel=1e-5
    )
    with pytest.raises(ValueError):
        ssim(torch.rand(8, 20, 20), torch.rand(8, 20, 20), data_range=1.0)


# ----------------------------------------------------------------------------- shapes


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
