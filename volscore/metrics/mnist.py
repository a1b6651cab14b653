"""MNIST sample quality: classifier-feature Frechet distance with its floor and ceiling, confidence,
class histogram and the nearest-training-image check for memorisation (the 2D baseline's yardsticks)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch
from torch import Tensor

from volscore.metrics.classifier import ConvClassifier, classify

ArrayLike = Tensor | np.ndarray


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F) and (M, F), in float64.

    d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Dowson and Landau, 1982; the FID formula).
    Estimated from samples it is biased upwards, more so for small N: compare values at equal N.
    """
    a = torch.as_tensor(feats_a).detach().cpu().double().numpy()
    b = torch.as_tensor(feats_b).detach().cpu().double().numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (N>=2, F) with equal F, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = _sqrtm(cov_a @ cov_b)
    if covmean is None:
        # Too singular (fewer samples than features, dead units): regularise as pytorch-fid does.
        eps = 1e-6 * max(np.trace(cov_a), np.trace(cov_b), 1e-12) / len(cov_a) * np.eye(len(cov_a))
        covmean = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    if np.iscomplexobj(covmean):
        # Round-off gives small imaginary parts; a large one means the estimate is unreliable.
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            warnings.warn(f"sqrtm has imaginary part {imag:.3g}; Frechet distance unreliable", stacklevel=2)
        covmean = covmean.real
    d2 = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean)
    return float(max(d2, 0.0))  # round-off can dip just below zero for identical sets


def _sqrtm(a: np.ndarray, rtol: float = 1e-6) -> np.ndarray | None:
    """scipy's matrix square root, or None when it is not finite or X @ X misses A by more than rtol.

    Covariances of ReLU features are often singular; sqrtm then warns but is usually still accurate,
    so the warning is silenced and the residual checked instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(a)
    if not np.isfinite(root).all():
        return None
    residual = np.linalg.norm(root @ root - a) / max(np.linalg.norm(a), 1e-300)
    return root if residual <= rtol else None


def blurred_noise_images(
    n: int, mean: float = 0.13, std: float = 0.3, blur: float = 1.25, seed: int = 0
) -> Tensor:
    """Gaussian noise N(mean, std) blurred by a Gaussian of ``blur`` px, clipped to [0, 1]: (n, 1, 28, 28).

    The FD ceiling: images with MNIST's mean intensity and some spatial structure, but no digits.
    """
    rng = np.random.default_rng(seed)
    noise = rng.normal(mean, std, size=(n, 1, 28, 28))
    noise = scipy.ndimage.gaussian_filter(noise, sigma=(0, 0, blur, blur))
    return torch.from_numpy(np.clip(noise, 0.0, 1.0)).float()


def _nearest_distances(x: Tensor, ref: Tensor, chunk: int = 512) -> Tensor:
    """L2 distance (N,) from each image in x to its nearest image in ref, chunked over x."""
    ref_flat = ref.reshape(len(ref), -1).double()
    out = [torch.cdist(c.reshape(len(c), -1).double(), ref_flat).min(1).values for c in x.split(chunk)]
    return torch.cat(out)


def evaluate_mnist_samples(
    samples: Tensor,
    classifier: ConvClassifier,
    train_images: Tensor,
    test_images: Tensor,
    confidence: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """Quality of generated MNIST digits (N, 1, 28, 28); samples are clipped to [0, 1] first.

    Returns a dict of Python floats/lists:
      - ``confident_fraction``: fraction whose top class probability is >= ``confidence``;
      - ``class_histogram``: fraction of samples per predicted class (length 10), ideally uniform;
      - ``fd``: Frechet distance of classifier features, samples vs test images; ``fd_floor`` the same
        for training images vs test images (what a perfect generator gets), ``fd_ceiling`` for blurred
        Gaussian noise images vs test images (what a generator of no digits gets);
      - ``nn_train_mean`` / ``nn_train_min``: mean and min L2 distance from a sample to its nearest
        training image, and ``test_nn_train_mean`` / ``test_nn_train_min`` the same for test images
        (a memorisation check: samples much closer to the training set than test images are suspicious).

    The FD's bias and the minimum over a set both depend on the set size, so the FDs and the
    nearest-neighbour statistics are computed on random subsets of one common size ``n`` (reported),
    the smallest of the three sets; the same test subset serves all three FDs. The nearest-neighbour
    reference is the whole training set. At n = 1000 the floor itself moves by about a unit from one
    subset to another (1.2 to 2.4 on the bundled MNIST): read differences of that size as noise.
    """
    gen = torch.Generator().manual_seed(seed)
    bad = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
    if bad:
        raise ValueError(f"{bad} of {len(samples)} samples contain NaN or Inf (a diverged sampler?)")
    samples = samples.detach().float().cpu().clamp(0, 1)
    train_images = train_images.detach().float().cpu()
    test_images = test_images.detach().float().cpu()
    n = min(len(samples), len(train_images), len(test_images))
    if n < 2:
        raise ValueError("need at least two samples, training and test images")

    def subset(x: Tensor) -> Tensor:
        # Random, not the first n: MNIST arrays are often sorted by label.
        return x[torch.randperm(len(x), generator=gen)[:n]]

    _, probs = classify(classifier, samples)
    top = probs.max(1)
    hist = torch.bincount(top.indices, minlength=10).double() / len(samples)

    sample_sub, train_sub, test_sub = subset(samples), subset(train_images), subset(test_images)
    noise = blurred_noise_images(n, seed=seed)
    f_sample, _ = classify(classifier, sample_sub)
    f_train, _ = classify(classifier, train_sub)
    f_test, _ = classify(classifier, test_sub)
    f_noise, _ = classify(classifier, noise)

    nn_sample = _nearest_distances(sample_sub, train_images)
    nn_test = _nearest_distances(test_sub, train_images)
    return {
        "n": n,
        "confident_fraction": float((top.values >= confidence).double().mean()),
        "class_histogram": hist.tolist(),
        "fd": frechet_distance(f_sample, f_test),
        "fd_floor": frechet_distance(f_train, f_test),
        # against training images: the figure to tune samplers and recipes on, keeping the test split unseen
        "fd_train": frechet_distance(f_sample, f_train),
        "fd_ceiling": frechet_distance(f_noise, f_test),
        "nn_train_mean": float(nn_sample.mean()),
        "nn_train_min": float(nn_sample.min()),
        "test_nn_train_mean": float(nn_test.mean()),
        "test_nn_train_min": float(nn_test.min()),
    }


def cache_dir() -> Path:
    """Where trained evaluation classifiers are cached: $XDG_CACHE_HOME/volscore or ~/.cache/volscore."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "volscore"


def evaluate_mnist_file(
    samples_path: str | os.PathLike, out_json: str | os.PathLike | None = None
) -> dict[str, Any]:
    """``evaluate_mnist_samples`` on a .npy of samples (N, 1, 28, 28), with the cached MNIST classifier;
    optionally written to ``out_json``."""
    from volscore.atomic import atomic_write_json
    from volscore.data.mnist import load_mnist
    from volscore.metrics.classifier import load_or_train_classifier

    path = Path(samples_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file of samples")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy of samples ({e})") from e
    if array.ndim != 4 or tuple(array.shape[1:]) != (1, 28, 28):
        raise ValueError(f"{path}: expected samples of shape (N, 1, 28, 28), got {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: samples of type {array.dtype}, expected real numbers in [0, 1]")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{path}: {bad} non-finite sample values (NaN or Inf); metrics of them mean nothing")
    samples = torch.from_numpy(array).float()
    train_x, train_y = load_mnist("train")
    test_x, _ = load_mnist("test")
    clf = load_or_train_classifier(cache_dir() / "mnist_classifier.pt", train_x, train_y)
    result = evaluate_mnist_samples(samples, clf, train_x, test_x)
    if out_json is not None:
        atomic_write_json(out_json, result)
    return result


def format_mnist_metrics(m: dict[str, Any]) -> str:
    """The metrics of ``evaluate_mnist_samples`` as a few lines of text."""
    hist = " ".join(f"{100 * h:.0f}" for h in m["class_histogram"])
    return (
        f"confident (p >= 0.9): {100 * m['confident_fraction']:.1f} %\n"
        f"class histogram (%, 0-9): {hist}\n"
        f"Frechet distance: {m['fd']:.2f}  (floor train-vs-test {m['fd_floor']:.2f}, "
        f"ceiling blurred noise {m['fd_ceiling']:.2f}, n = {m['n']})\n"
        f"nearest training image, mean L2: samples {m['nn_train_mean']:.2f}, "
        f"test images {m['test_nn_train_mean']:.2f}"
    )
