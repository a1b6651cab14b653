"""volscore.data: NIfTI I/O, 3D patch sampling and MNIST, independent of the rest of volscore.

The public names below are imported lazily (PEP 562), so that `import volscore.data` stays cheap and
`volscore --help` does not pay for nibabel or torch.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

_EXPORTS = {
    "Volume": "nifti",
    "VolumeError": "nifti",
    "IntensityScaler": "nifti",
    "resolve_paths": "nifti",
    "load_volume": "nifti",
    "save_volume": "nifti",
    "save_nifti": "nifti",
    "describe": "nifti",
    "coordinate_grid": "patches",
    "coordinate_patch": "patches",
    "PatchSampler": "patches",
    "PatchBatch": "patches",
    "default_region": "patches",
    "MNI152_TRAIN_REGION": "patches",
    "MNI152_HOLDOUT_REGION": "patches",
    "MNI152_HOLDOUT_CROP": "patches",
    "load_mnist": "mnist",
    "read_idx": "mnist",
    "fetch_mnist": "mnist",
    "stratified_split": "mnist",
    "dequantize": "mnist",
    "MnistSource": "mnist",
}

__all__ = ["data_dir", *_EXPORTS]


def data_dir() -> Path:
    """The folder of bundled data: `$VOLSCORE_DATA` if set, else `data/` at the repository root."""
    override = os.environ.get("VOLSCORE_DATA")
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[2] / "data"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
