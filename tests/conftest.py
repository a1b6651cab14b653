"""Shared test settings: one torch thread, since the tests run small ops for which a second thread
costs more than it gains (up to 10x on a busy 2-core machine)."""

import pytest
import torch

from volscore.metrics import ConvClassifier, random_shift, train_classifier

torch.set_num_threads(1)


# Synthetic "digits" for the classifier and MNIST-metric tests (test_metrics_*.py): no dataset needed.


def synthetic_digits(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten fixed random 7x7 block patterns upscaled to 28x28, shifted by up to 2 px, with noise."""
    protos = torch.rand(10, 1, 7, 7, generator=torch.Generator().manual_seed(123)) < 0.35
    protos = protos.float().repeat_interleave(4, -1).repeat_interleave(4, -2)  # (10, 1, 28, 28)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    images = random_shift(protos[labels], 2, g)
    images = images * (0.7 + 0.3 * torch.rand(len(labels), 1, 1, 1, generator=g))
    images = (images + 0.1 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return images, labels


@pytest.fixture(scope="session")
def digits() -> dict[str, torch.Tensor]:
    x_train, y_train = synthetic_digits(20, seed=0)
    x_test, y_test = synthetic_digits(10, seed=1)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@pytest.fixture(scope="session")
def classifier(digits: dict[str, torch.Tensor]) -> ConvClassifier:
    return train_classifier(digits["x_train"], digits["y_train"], steps=30, batch_size=32)
