"""MNIST, the lecture's 2D baseline: the bundled 5k subset offline, the full IDX files when available.

The bundled `mnist_5k.npz` is sorted by label, so it is split once, stratified and seeded:
400 train / 100 test images per class. The test split never reaches `MnistSource`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from volscore.data import data_dir

MNIST_5K_FILE = "mnist_5k.npz"
SPLIT_SEED = 0
TEST_PER_CLASS = 100

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# md5 of the four .gz files, as published by torchvision and the original site.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not, detected from its first bytes) into a native array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: cannot read IDX file ({type(exc).__name__}: {exc})") from exc
    # Magic: two zero bytes, a type byte, the number of dimensions; then one big-endian uint32 per dimension.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX data has {len(raw) - header} bytes, shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): `test_per_class` of each class to test, the rest to train; both shuffled."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) <= test_per_class:
            raise ValueError(f"class {c} has {len(idx)} images, need more than {test_per_class}")
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    # Shuffle across classes so that any prefix of a split is mixed (the source is sorted by label).
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: neither {stem} nor {stem}.gz found (fetch_mnist(root) downloads them)")


def load_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64.

    Without `root`: the bundled 5k subset, 4000 train / 1000 test (fixed stratified split). With `root`:
    the standard IDX files in that folder, 60000 train / 10000 test.
    """
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if root is None:
        path = data_dir() / MNIST_5K_FILE
        with np.load(path) as npz:
            images, labels = npz["images"], npz["labels"]
        train, test = stratified_split(labels, TEST_PER_CLASS, SPLIT_SEED)
        keep = train if split == "train" else test
        images, labels = images[keep], labels[keep]
    else:
        root = Path(root).expanduser()
        image_path, label_path = (_find_idx(root, stem) for stem in _IDX_FILES[split])
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{image_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"{label_path}: {labels.shape} labels for {len(images)} images")
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0).unsqueeze(1)  # (N,1,H,W)
    return x, torch.from_numpy(labels.astype(np.int64))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fetch_mnist(root: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download the four MNIST IDX .gz files into `root` (skipping valid ones); needs internet access."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_MD5.items():
        target = root / name
        if target.is_file() and _md5(target) == md5:
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            tmp = root / f".{name}.{uuid.uuid4().hex[:8]}.part"
            try:
                with urllib.request.urlopen(mirror + name, timeout=timeout) as response:
                    tmp.write_bytes(response.read())
                if _md5(tmp) != md5:
                    raise ValueError("md5 mismatch")
                os.replace(tmp, target)
                break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                errors.append(f"{mirror}: {exc}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            tried = "; ".join(errors)
            raise RuntimeError(
                f"could not download {name} (offline?); tried {tried}. Copy the four MNIST IDX files "
                f"into {root} by hand, or use the bundled subset (root=None)."
            )
    return root


def dequantize(x: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform dequantisation of images k/255 in [0, 1]: (255 x + u) / 256, u ~ U[0, 1) (NCSN)."""
    u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=torch.float32).to(x.device)
    return (x * 255.0 + u) / 256.0


class MnistSource:
    """Random training images with dequantisation; same `sample` interface as `PatchSampler`."""

    def __init__(self, images: Tensor, *, dequantize: bool = True) -> None:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected images (N, 1, H, W), got {tuple(images.shape)}")
        self.images = images.to(torch.float32)
        self.dequantize = dequantize

    @classmethod
    def from_split(
        cls, split: str = "train", root: str | os.PathLike | None = None, *, dequantize: bool = True
    ) -> MnistSource:
        return cls(load_mnist(split, root)[0], dequantize=dequantize)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def coord_channels(self) -> int:
        return 0

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, None]:
        """(x (B, 1, 28, 28) float32 in [0, 1), None)."""
        idx = torch.randint(len(self.images), (int(batch_size),), generator=generator)
        x = self.images[idx]
        return (dequantize(x, generator) if self.dequantize else x), None
