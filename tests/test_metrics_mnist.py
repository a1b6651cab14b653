"""Tests for volscore/metrics/mnist.py: the Frechet distance against closed forms (identical sets, a
translation, diagonal Gaussians) and the MNIST sample evaluation on synthetic digits (conftest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from volscore.metrics import ConvClassifier, blurred_noise_images, evaluate_mnist_samples, frechet_distance


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


def test_evaluate_mnist_samples(digits: dict, classifier: ConvClassifier) -> None:
    x_train, x_test = digits["x_train"], digits["x_test"]
    good = evaluate_mnist_samples(x_test, classifier, x_train, x_test)
    assert good["n"] == len(x_test)
    assert len(good["class_histogram"]) == 10
    assert sum(good["class_histogram"]) == pytest.approx(1.0)
    assert 0.0 <= good["confident_fraction"] <= 1.0
    assert good["fd_floor"] < good["fd_ceiling"]
    assert good["fd"] < good["fd_ceiling"] / 2
    assert good["nn_train_mean"] == pytest.approx(good["test_nn_train_mean"])  # samples are the test set

    noise = blurred_noise_images(100, seed=5)
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
