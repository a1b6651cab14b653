"""Tests for volscore/data/mnist.py: the bundled 5k split and hand-made IDX files (never the network).

Split sizes and stratification (400/100 per class), disjointness, determinism, value range; the IDX parser
on small files written here, plain and gzip, and its errors; dequantisation; MnistSource's interface.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from volscore.data import mnist
from volscore.data.mnist import MnistSource, dequantize, load_mnist, read_idx, stratified_split


def _idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_byte, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_mnist(root, split, n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    return images, labels


def test_bundled_split_sizes_stratified_disjoint():
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    assert x_train.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.bincount(y_train).tolist() == [400] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10
    assert x_train.min() == 0 and x_train.max() == 1 and x_test.min() >= 0 and x_test.max() <= 1
    assert len(set(y_train[:50].tolist())) > 5  # shuffled, not sorted by label like the source

    with np.load(mnist.data_dir() / mnist.MNIST_5K_FILE) as npz:
        labels = npz["labels"]
    train, test = stratified_split(labels, 100, mnist.SPLIT_SEED)
    assert len(np.intersect1d(train, test)) == 0 and len(np.union1d(train, test)) == 5000
    # Disjoint as images too, not only as indices.
    train_rows = {row.numpy().tobytes() for row in (x_train * 255).round().to(torch.uint8)}
    assert not any(row.numpy().tobytes() in train_rows for row in (x_test * 255).round().to(torch.uint8))


def test_bundled_split_is_deterministic():
    a, la = load_mnist("train")
    b, lb = load_mnist("train")
    assert torch.equal(a, b) and torch.equal(la, lb)
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")


def test_read_idx_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(_idx_bytes(array))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    for name in ("plain", "packed.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, array)
    wide = np.array([[-1, 2], [300, -40000]], dtype=np.int32)
    (tmp_path / "wide").write_bytes(_idx_bytes(wide, 0x0C))
    out = read_idx(tmp_path / "wide")
    assert out.dtype.isnative and np.array_equal(out, wide)


def test_read_idx_errors_name_the_file(tmp_path):
    array = np.zeros((2, 3), np.uint8)
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x01\x02\x08\x02" + _idx_bytes(array)[4:])
    with pytest.raises(ValueError, match="bad-magic.*bad magic"):
        read_idx(bad_magic)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(array)[:-1])
    with pytest.raises(ValueError, match="short.*needs 6"):
        read_idx(short)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(_idx_bytes(array))[:12])
    with pytest.raises(ValueError, match="broken.gz.*cannot read"):
        read_idx(broken_gz)


def test_load_mnist_from_idx_folder(tmp_path):
    images, labels = _write_mnist(tmp_path, "train", 12, 0)
    _write_mnist(tmp_path, "test", 5, 1)
    x, y = load_mnist("train", root=tmp_path)
    assert x.shape == (12, 1, 28, 28) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255) and y.tolist() == labels.tolist()
    assert load_mnist("test", root=tmp_path)[0].shape == (5, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist("train", root=tmp_path / "elsewhere")


def test_dequantize():
    x = torch.arange(256, dtype=torch.float32).repeat(4) / 255
    y = dequantize(x, torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32 and y.min() >= 0 and y.max() < 1
    assert torch.equal(torch.floor(y * 256), (x * 255).round())  # each level keeps its own bin
    assert torch.equal(y, dequantize(x, torch.Generator().manual_seed(0)))


def test_mnist_source():
    images = torch.arange(6 * 4, dtype=torch.float32).reshape(6, 1, 2, 2) / 255
    source = MnistSource(images, dequantize=False)
    x, coords = source.sample(10, torch.Generator().manual_seed(0))
    assert coords is None and x.shape == (10, 1, 2, 2)
    assert all(any(torch.equal(xi, im) for im in images) for xi in x)
    assert source.sample_shape == (1, 2, 2) and source.coord_channels == 0

    source = MnistSource.from_split("train")
    a, _ = source.sample(8, torch.Generator().manual_seed(1))
    b, _ = source.sample(8, torch.Generator().manual_seed(1))
    assert a.shape == (8, 1, 28, 28) and torch.equal(a, b) and 0 <= a.min() and a.max() < 1
