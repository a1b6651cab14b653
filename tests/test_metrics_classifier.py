"""Tests for volscore/metrics/classifier.py: the 2D and 3D classifiers on synthetic "digits" (conftest),
the augmentation, determinism and the cache; one slow test checks the accuracy on the bundled MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import volscore.metrics.classifier as classifier_module
from volscore.metrics import ConvClassifier, load_or_train_classifier, random_shift, train_classifier


def test_classifier_shapes_and_size() -> None:
    model = ConvClassifier()
    x = torch.rand(5, 1, 28, 28)
    assert model.features(x).shape == (5, 64)
    assert model(x).shape == (5, 10)
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000


def test_random_shift_is_an_integer_translation() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 9:15] = torch.rand(64, 1, 8, 6)  # content away from the borders
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
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


def test_train_classifier_learns_and_is_deterministic(digits: dict, classifier: ConvClassifier) -> None:
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
        m.setattr(classifier_module, "train_classifier", no_training)
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
    assert isinstance(model, ConvClassifier)
    args = torch.load(cache, weights_only=True)["args"]
    assert (args["steps"], args["seed"], args["batch_size"], args["lr"]) == (5, 0, 16, 2e-3)
    with monkeypatch.context() as m:  # defaults passed explicitly still hit the cache
        m.setattr(classifier_module, "train_classifier", no_training)
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


def test_random_shift_translates_volumes() -> None:
    x = torch.zeros(16, 1, 12, 12, 12)
    x[:, :, 4:8, 3:9, 5:8] = torch.rand(16, 1, 4, 6, 3, generator=torch.Generator().manual_seed(1))
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.allclose(y.sum((1, 2, 3, 4)), x.sum((1, 2, 3, 4)))
    shifts = set()
    for xi, yi in zip(x, y, strict=True):
        offsets = [(a, b, c) for a in range(-2, 3) for b in range(-2, 3) for c in range(-2, 3)]
        match = [s for s in offsets if torch.equal(torch.roll(xi, s, dims=(1, 2, 3)), yi)]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 8


def test_3d_classifier_learns_volume_classes() -> None:
    # Four classes of 16^3 volumes: a bar along each axis, or a cube; shifted, scaled, noisy.
    g = torch.Generator().manual_seed(0)
    protos = torch.zeros(4, 1, 16, 16, 16)
    protos[0, :, 3:13, 6:10, 6:10] = 1
    protos[1, :, 6:10, 3:13, 6:10] = 1
    protos[2, :, 6:10, 6:10, 3:13] = 1
    protos[3, :, 5:11, 5:11, 5:11] = 1

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(4).repeat(n)
        x = random_shift(protos[labels], 2, g) * (
            0.7 + 0.3 * torch.rand(len(labels), 1, 1, 1, 1, generator=g)
        )
        return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1), labels

    (x_train, y_train), (x_test, y_test) = draw(16), draw(8)
    model = train_classifier(x_train, y_train, steps=150, batch_size=16, width=8, feature_dim=16)
    assert model.model_args["spatial_dims"] == 3 and model.model_args["size"] == 16
    assert model.features(x_test).shape == (32, 16)
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean()
    assert acc >= 0.9
    with pytest.raises(ValueError, match="expected"):
        train_classifier(torch.rand(4, 1, 8, 8, 6), torch.arange(4))


def test_cache_keeps_the_3d_architecture(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 1, 16, 16, 16, generator=g), torch.arange(12) % 3
    first = load_or_train_classifier(tmp_path / "c.pt", x, y, steps=2, batch_size=4, width=4, feature_dim=8)
    again = load_or_train_classifier(tmp_path / "c.pt", x, y, steps=2, batch_size=4, width=4, feature_dim=8)
    assert again.model_args == first.model_args
    assert torch.equal(first.features(x), again.features(x))
