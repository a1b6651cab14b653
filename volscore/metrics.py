"""Evaluation metrics: MNIST sample quality, PSNR/SSIM for volumes, MMD/COV/1-NNA for shapes.

MNIST (the 2D baseline): a small CNN classifier whose penultimate features give a Frechet distance
(FID with an MNIST classifier instead of Inception), its confidence and class histogram, and a
nearest-training-image check for memorisation. Volumes: PSNR and SSIM through MONAI's metrics.
Shapes: 1 - IoU distances between occupancy volumes, then minimum matching distance (MMD), coverage
(COV) and 1-nearest-neighbour accuracy (1-NNA) as in Achlioptas et al. (2018) and Yang et al. (2019).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from volscore.atomic import atomic_write

ArrayLike = Tensor | np.ndarray

# Bump when the cache layout or the training recipe changes, so old caches are retrained.
_CACHE_FORMAT = 1


# ---------------------------------------------------------------------------------------------------
# MNIST classifier
# ---------------------------------------------------------------------------------------------------


class MnistClassifier(nn.Module):
    """Three strided conv layers (28 -> 14 -> 7 -> 4 px) and an MLP, about 120 k parameters.

    ``features`` is the penultimate layer (after its ReLU, as Inception's pool features in FID).
    Strided convolutions instead of max-pooling: on a CPU the element-wise layers at full
    resolution, not the convolutions, dominate the step time.

    Args:
        width: channels of the first conv layer (the others have ``2 * width``).
        feature_dim: size of the penultimate layer, the features used for the Frechet distance.
        num_classes: number of output logits.
    """

    def __init__(self, width: int = 32, feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        # The arguments that rebuild this model, stored with the weights in the cache.
        self.model_args = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes}

        def block(c_in: int, c_out: int, k: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, width, 5),  # (N, w, 14, 14)
            *block(width, 2 * width, 3),  # (N, 2w, 7, 7)
            *block(2 * width, 2 * width, 3),  # (N, 2w, 4, 4)
            nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (N, feature_dim) of images (N, 1, 28, 28) in [0, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes)."""
        return self.head(self.dropout(self.features(x)))


def _random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image (N, 1, H, W) by its own integer offset in [-max_shift, max_shift], zero fill."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (N, 1, H + 2s, W + 2s)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, :]  # (N, 1, W)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)  # (N, 1, H, W)


def train_classifier(
    images: Tensor,
    labels: Tensor,
    steps: int = 600,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    max_shift: int = 2,
    width: int = 32,
    feature_dim: int = 64,
) -> MnistClassifier:
    """Train an ``MnistClassifier`` with Adam and random shifts; returns it in eval mode.

    ``images`` (N, 1, 28, 28) in [0, 1], ``labels`` (N,) int. Deterministic for a given seed (on CPU);
    the global RNG is left untouched.
    """
    images = images.detach().float().cpu()
    labels = labels.detach().long().cpu()
    num_classes = max(10, int(labels.max()) + 1)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init and dropout
        model = MnistClassifier(width=width, feature_dim=feature_dim, num_classes=num_classes)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        # Cosine decay: the last few hundred steps at a small rate settle BatchNorm and the weights.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        model.train()
        n = images.shape[0]
        perm, pos = torch.randperm(n, generator=gen), 0
        for _ in range(steps):
            if pos + batch_size > n:  # epoch-style sampling: every image seen once per pass
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            x = _random_shift(images[idx], max_shift, gen) if max_shift > 0 else images[idx]
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


_TRAIN_SIGNATURE = inspect.signature(train_classifier)


def _fingerprint(images: Tensor, labels: Tensor) -> str:
    """Short hash of the training data, so a cache trained on other data is not reused."""
    h = hashlib.sha1()
    h.update(images.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(labels.detach().long().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_or_train_classifier(
    cache_path: Path | str,
    images: Tensor,
    labels: Tensor,
    steps: int = 600,
    seed: int = 0,
    **train_kwargs: Any,
) -> MnistClassifier:
    """Load a cached classifier trained with these arguments on this data, or train and cache one.

    The cache is a plain dict (state_dict, the arguments, a data fingerprint) loaded with
    ``weights_only=True`` and written atomically (temp file in the same folder, then ``os.replace``).
    A corrupt, unreadable or mismatched cache triggers a warning and a retrain, never an error.
    """
    cache_path = Path(cache_path)
    # Resolve defaults, so passing a default explicitly still hits the cache (and typos fail here).
    bound = _TRAIN_SIGNATURE.bind_partial(steps=steps, seed=seed, **train_kwargs)
    bound.apply_defaults()
    args = dict(bound.arguments)
    expected = {"format": _CACHE_FORMAT, "args": args, "data": _fingerprint(images, labels)}
    if cache_path.exists():
        try:
            ckpt = torch.load(cache_path, map_location="cpu", weights_only=True)
            found = {k: ckpt.get(k) for k in expected}
            if found != expected:
                raise ValueError(f"cache made with {found}, wanted {expected}")
            model = MnistClassifier(**ckpt["model_args"])
            model.load_state_dict(ckpt["state_dict"])
            return model.eval()
        except Exception as err:  # any unreadable cache is only a lost shortcut
            warnings.warn(f"retraining the MNIST classifier: cannot use {cache_path} ({err})", stacklevel=2)
    model = train_classifier(images, labels, **args)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    _atomic_torch_save({**expected, "model_args": model.model_args, "state_dict": state}, cache_path)
    return model


def _atomic_torch_save(obj: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ---------------------------------------------------------------------------------------------------
# Frechet distance and MNIST sample evaluation
# ---------------------------------------------------------------------------------------------------


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


@torch.no_grad()
def _classify(classifier: MnistClassifier, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Features (N, F) and softmax probabilities (N, C), computed in batches in eval mode."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    feats, probs = [], []
    for chunk in x.split(batch_size):
        f = classifier.features(chunk.to(device).float())
        feats.append(f.cpu())
        probs.append(classifier.head(f).softmax(-1).cpu())
    classifier.train(was_training)
    return torch.cat(feats).double(), torch.cat(probs)


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
    classifier: MnistClassifier,
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

    _, probs = _classify(classifier, samples)
    top = probs.max(1)
    hist = torch.bincount(top.indices, minlength=10).double() / len(samples)

    sample_sub, train_sub, test_sub = subset(samples), subset(train_images), subset(test_images)
    noise = blurred_noise_images(n, seed=seed)
    f_sample, _ = _classify(classifier, sample_sub)
    f_train, _ = _classify(classifier, train_sub)
    f_test, _ = _classify(classifier, test_sub)
    f_noise, _ = _classify(classifier, noise)

    nn_sample = _nearest_distances(sample_sub, train_images)
    nn_test = _nearest_distances(test_sub, train_images)
    return {
        "n": n,
        "confident_fraction": float((top.values >= confidence).double().mean()),
        "class_histogram": hist.tolist(),
        "fd": frechet_distance(f_sample, f_test),
        "fd_floor": frechet_distance(f_train, f_test),
        "fd_ceiling": frechet_distance(f_noise, f_test),
        "nn_train_mean": float(nn_sample.mean()),
        "nn_train_min": float(nn_sample.min()),
        "test_nn_train_mean": float(nn_test.mean()),
        "test_nn_train_min": float(nn_test.min()),
    }


# ---------------------------------------------------------------------------------------------------
# Volumes: PSNR and SSIM
# ---------------------------------------------------------------------------------------------------


def _as_bcdhw(x: ArrayLike, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).detach()
    if t.ndim == 3:
        t = t[None, None]  # (1, 1, D, H, W)
    if t.ndim != 5:
        raise ValueError(
            f"expected a volume (D, H, W) or a batch (B, C, D, H, W), got shape {tuple(t.shape)}"
        )
    return t.to(dtype)


def psnr(x: ArrayLike, ref: ArrayLike, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(data_range^2 / MSE), of x against ref.

    Volumes (D, H, W) or batches (B, C, D, H, W) (mean over the batch); float64 via MONAI's PSNRMetric.
    """
    from monai.metrics import PSNRMetric

    metric = PSNRMetric(max_val=data_range)
    # The call returns the (B, 1) per-volume values; aggregate() would round the mean to float32.
    return float(metric(_as_bcdhw(x, torch.float64), _as_bcdhw(ref, torch.float64)).mean())


def ssim(x: ArrayLike, ref: ArrayLike, data_range: float, win_size: int = 11) -> float:
    """Structural similarity of x against ref (3D Gaussian window, sigma 1.5), via MONAI's SSIMMetric.

    Volumes (D, H, W) or batches (B, C, D, H, W) (mean over the batch); every spatial side must be
    at least ``win_size`` (the window is applied without padding).
    """
    from monai.metrics import SSIMMetric

    xt, rt = _as_bcdhw(x, torch.float32), _as_bcdhw(ref, torch.float32)
    if min(xt.shape[2:]) < win_size:
        raise ValueError(f"every side must be >= win_size={win_size}, got {tuple(xt.shape[2:])}")
    metric = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=win_size)
    return float(metric(xt, rt).double().mean())


# ---------------------------------------------------------------------------------------------------
# Shapes: IoU distances, MMD, COV, 1-NNA, connectivity
# ---------------------------------------------------------------------------------------------------


def _occupancy_flat(x: ArrayLike, threshold: float) -> Tensor:
    """(N, D, H, W) or (N, 1, D, H, W) occupancies -> boolean (N, V)."""
    t = torch.as_tensor(x).detach()
    if t.ndim == 5 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 4:
        raise ValueError(f"expected occupancies (N, D, H, W) or (N, 1, D, H, W), got {tuple(t.shape)}")
    return (t > threshold).reshape(len(t), -1)


def iou_distance_matrix(
    a: ArrayLike, b: ArrayLike, threshold: float = 0.5, max_elements: int = 2**25
) -> Tensor:
    """1 - IoU (Na, Nb) between occupancy volumes thresholded at ``threshold`` (occupied if > threshold).

    Intersections are a matrix product of the binary volumes, done in blocks of at most
    ``max_elements`` voxels per operand so memory stays bounded for many or large volumes. Two empty
    volumes count as identical (distance 0). Counts are exact in float64.
    """
    fa, fb = _occupancy_flat(a, threshold), _occupancy_flat(b, threshold)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"volumes differ in size: {fa.shape[1]} vs {fb.shape[1]} voxels")
    rows = max(1, max_elements // max(1, fa.shape[1]))
    size_a, size_b = fa.sum(1).double(), fb.sum(1).double()
    out = torch.empty(len(fa), len(fb), dtype=torch.float64)
    for i in range(0, len(fa), rows):
        ca = fa[i : i + rows].double()
        for j in range(0, len(fb), rows):
            inter = ca @ fb[j : j + rows].double().T  # (rows_a, rows_b) voxel counts
            union = size_a[i : i + rows, None] + size_b[None, j : j + rows] - inter
            iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
            out[i : i + rows, j : j + rows] = 1 - iou
    return out


def mmd(dist_gen_ref: ArrayLike) -> float:
    """Minimum matching distance: mean over reference shapes of the distance to the nearest generated one.

    ``dist_gen_ref`` is (N_gen, N_ref); lower is better (fidelity to every reference shape).
    """
    d = torch.as_tensor(dist_gen_ref).double()
    return float(d.min(0).values.mean())


def coverage(dist_gen_ref: ArrayLike) -> float:
    """Coverage: fraction of reference shapes that are the nearest reference of some generated shape.

    ``dist_gen_ref`` is (N_gen, N_ref); higher is better (diversity; low values flag mode collapse).
    """
    d = torch.as_tensor(dist_gen_ref)
    return float(torch.unique(d.argmin(1)).numel() / d.shape[1])


def one_nna(d_gg: ArrayLike, d_rr: ArrayLike, d_gr: ArrayLike) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of telling generated from reference shapes.

    d_gg (Ng, Ng), d_rr (Nr, Nr), d_gr (Ng, Nr). 0.5 is ideal (the sets are indistinguishable);
    1.0 means the sets are apart; well below 0.5 means generated shapes sit on top of reference
    shapes (copies of the training set give 0). Ties go to the generated set.
    """
    gg, rr, gr = (torch.as_tensor(d).double() for d in (d_gg, d_rr, d_gr))
    ng, nr = len(gg), len(rr)
    full = torch.cat([torch.cat([gg, gr], 1), torch.cat([gr.T, rr], 1)], 0)  # (Ng + Nr, Ng + Nr)
    full.fill_diagonal_(float("inf"))  # leave one out: a shape is not its own neighbour
    is_gen = torch.cat([torch.ones(ng, dtype=torch.bool), torch.zeros(nr, dtype=torch.bool)])
    nearest = full.argmin(1)
    return float((is_gen[nearest] == is_gen).double().mean())


def connected_fraction(occupancies: ArrayLike, threshold: float = 0.5, connectivity: int = 6) -> float:
    """Fraction of occupancy volumes (N, D, H, W) or (N, 1, D, H, W) that form exactly one component.

    ``connectivity`` is 6 (faces, the default), 18 (faces and edges) or 26 (faces, edges, corners).
    6 is the strict choice: parts touching only along an edge or at a corner are not one solid.
    Empty volumes count as not connected.
    """
    occ = _occupancy_flat(occupancies, threshold)
    t = torch.as_tensor(occupancies)
    shape = t.shape[-3:]
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    structure = scipy.ndimage.generate_binary_structure(3, rank)
    ones = [scipy.ndimage.label(v.reshape(shape).numpy(), structure=structure)[1] == 1 for v in occ]
    return float(np.mean(ones)) if ones else float("nan")
