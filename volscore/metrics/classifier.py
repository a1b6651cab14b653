"""Small strided-conv classifiers for evaluating samples: MNIST digits (2D) and 3D digit shapes.

Their penultimate features give a Frechet distance (FID with a domain classifier instead of
Inception), their softmax a confidence and a class histogram. Training is seeded and deterministic on
CPU; ``load_or_train_classifier`` caches the weights (``weights_only`` loads, atomic writes), keyed by
the training arguments and a fingerprint of the data.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from volscore.atomic import atomic_write

# Bump when the cache layout or the training recipe changes, so old caches are retrained.
_CACHE_FORMAT = 1


def _conv_output_size(size: int, layers: int = 3) -> int:
    """Side after ``layers`` stride-2 convolutions with 'same' padding: 28 -> 4, 32 -> 4."""
    for _ in range(layers):
        size = (size + 1) // 2
    return size


class ConvClassifier(nn.Module):
    """Three strided conv layers (28 -> 14 -> 7 -> 4 px in 2D; 32 -> 16 -> 8 -> 4 in 3D) and an MLP.

    About 120 k parameters for MNIST (2D, size 28, width 32). ``features`` is the penultimate layer
    (after its ReLU, as Inception's pool features in FID). Strided convolutions instead of max-pooling:
    on a CPU the element-wise layers at full resolution, not the convolutions, dominate the step time.

    Args:
        width: channels of the first conv layer (the others have ``2 * width``).
        feature_dim: size of the penultimate layer, the features used for the Frechet distance.
        num_classes: number of output logits.
        spatial_dims: 2 for images (N, 1, H, W), 3 for volumes (N, 1, D, H, W).
        size: side of the (square or cubic) input.
    """

    def __init__(
        self,
        width: int = 32,
        feature_dim: int = 64,
        num_classes: int = 10,
        spatial_dims: int = 2,
        size: int = 28,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        # The arguments that rebuild this model, stored with the weights in the cache.
        self.model_args = {
            "width": width,
            "feature_dim": feature_dim,
            "num_classes": num_classes,
            "spatial_dims": spatial_dims,
            "size": size,
        }
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d

        def block(c_in: int, c_out: int, k: int) -> list[nn.Module]:
            return [conv(c_in, c_out, k, stride=2, padding=k // 2), norm(c_out), nn.ReLU()]

        flat = 2 * width * _conv_output_size(size) ** spatial_dims
        self.body = nn.Sequential(
            *block(1, width, 5),  # (N, w, 14, 14) for MNIST
            *block(width, 2 * width, 3),  # (N, 2w, 7, 7)
            *block(2 * width, 2 * width, 3),  # (N, 2w, 4, 4)
            nn.Flatten(),
            nn.Linear(flat, feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (N, feature_dim) of inputs (N, 1, *spatial) in [0, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes)."""
        return self.head(self.dropout(self.features(x)))


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each input (N, C, *spatial) by its own integer offset in [-max_shift, max_shift] per
    spatial axis, zero fill (2D or 3D)."""
    n, spatial = x.shape[0], x.shape[2:]
    padded = F.pad(x, (max_shift,) * (2 * len(spatial)))
    # One offset draw per axis, in axis order (rows then columns for images).
    offsets = [torch.randint(0, 2 * max_shift + 1, (n,), generator=generator) for _ in spatial]
    out = torch.empty_like(x)
    for i in range(n):
        window = tuple(slice(int(o[i]), int(o[i]) + s) for o, s in zip(offsets, spatial, strict=True))
        out[i] = padded[(i, slice(None), *window)]
    return out


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
) -> ConvClassifier:
    """Train a ``ConvClassifier`` with Adam and random shifts; returns it in eval mode.

    ``images`` (N, 1, S, S) or (N, 1, S, S, S) in [0, 1], ``labels`` (N,) int. Deterministic for a
    given seed (on CPU); the global RNG is left untouched.
    """
    images = images.detach().float().cpu()
    labels = labels.detach().long().cpu()
    if images.ndim not in (4, 5) or images.shape[1] != 1 or len(set(images.shape[2:])) != 1:
        raise ValueError(f"expected (N, 1, S, S) or (N, 1, S, S, S) inputs, got {tuple(images.shape)}")
    num_classes = max(10, int(labels.max()) + 1)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init and dropout
        model = ConvClassifier(width, feature_dim, num_classes, images.ndim - 2, images.shape[-1])
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
            x = random_shift(images[idx], max_shift, gen) if max_shift > 0 else images[idx]
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
) -> ConvClassifier:
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
            model = ConvClassifier(**ckpt["model_args"])
            model.load_state_dict(ckpt["state_dict"])
            return model.eval()
        except Exception as err:  # any unreadable cache is only a lost shortcut
            warnings.warn(f"retraining the classifier: cannot use {cache_path} ({err})", stacklevel=2)
    model = train_classifier(images, labels, **args)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_write(
        cache_path,
        lambda tmp: torch.save({**expected, "model_args": model.model_args, "state_dict": state}, tmp),
    )
    return model


@torch.no_grad()
def classify(classifier: ConvClassifier, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Features (N, F) in float64 and softmax probabilities (N, C), in batches, in eval mode."""
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
