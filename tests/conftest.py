"""Shared test settings and fixtures.

- One torch thread, since the tests run small ops for which a second thread costs more than it gains (up to
  10x on a busy 2-core machine).
- Synthetic "digits" for the classifier and MNIST-metric tests (test_metrics_*.py): no dataset needed.
- Tiny trained runs (``tiny_run``: 3D NIfTI patches with coordinate channels; ``tiny_mnist_run``: 2D MNIST;
  ``tiny_shapes_run``: whole 16^3 shapes), each built one way, by ``train_tiny``: ``TrainConfig`` +
  ``Trainer`` with preset "tiny", ``amp="off"``, two seeded steps and a given sigma range. They are
  session-scoped and read-only: a test that writes into a run folder trains its own with ``train_tiny``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from volscore.metrics import ConvClassifier, random_shift, train_classifier

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules (phantoms.py) for tests in subfolders

from phantoms import PATCH, noisy_head  # noqa: E402

torch.set_num_threads(1)


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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Back to one thread after each test: the CLI's commands set torch's threads to the available cores
    (``machine.set_threads``), which would otherwise hold for every later test of the session."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> dict[str, torch.Tensor]:
    x_train, y_train = synthetic_digits(20, seed=0)
    x_test, y_test = synthetic_digits(10, seed=1)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@pytest.fixture(scope="session")
def classifier(digits: dict[str, torch.Tensor]) -> ConvClassifier:
    return train_classifier(digits["x_train"], digits["y_train"], steps=30, batch_size=32)


# -- tiny trained runs ---------------------------------------------------------------------------------------
TINY = dict(
    preset="tiny",
    amp="off",
    device="cpu",
    steps=2,
    batch_size=2,
    sigma_min=0.01,
    sigma_max=1.0,
    num_sigmas=10,
    log_every=1,
    seed=0,
)


def train_tiny(out: str | Path, data: list[str], **overrides: Any) -> Path:
    """Train a tiny run into ``out`` (``TINY`` settings, then ``overrides``); the global torch RNG state is
    left as it was, so a fixture built by one test does not change the random numbers of the next."""
    from volscore.config import TrainConfig
    from volscore.train import Trainer

    cfg = TrainConfig(data=list(data), out=str(out), **{**TINY, **overrides})
    with torch.random.fork_rng(devices=[]), Trainer(cfg, progress=False) as trainer:
        trainer.run()
    return Path(out)


@pytest.fixture(scope="session")
def tiny_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 3D run's training volume: a noisy 24^3 head phantom (float64 NIfTI, voxels 1.5 x 1.5 x 2 mm)."""
    return noisy_head(tmp_path_factory.mktemp("tiny_data") / "head.nii.gz", sigma=0.05, seed=11)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_volume: Path) -> Path:
    """A 3D run on 16^3 patches with coordinate channels, trained for two steps (nearly untrained)."""
    return train_tiny(tmp_path_factory.mktemp("tiny_run"), [str(tiny_volume)], patch_size=PATCH)


@pytest.fixture(scope="session")
def tiny_mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2D MNIST run (28 x 28 images, no coordinates), trained for two steps."""
    return train_tiny(tmp_path_factory.mktemp("tiny_mnist_run"), ["mnist"])


@pytest.fixture(scope="session")
def tiny_shapes_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of whole 16^3 primitive shapes (no patches, no coordinates), trained for two steps."""
    return train_tiny(tmp_path_factory.mktemp("tiny_shapes_run"), ["shapes:primitives@16"], coords=False)
