"""A trained run, loaded once: its model, its ``TrainConfig`` and what writing results back needs.

Every reader of a run (sampling, denoising, recipes, benchmarks) goes through ``Run``, so the facts about a
run are read in one place: spatial dims, patch size and coordinates, intensity scaler, voxel size, default
sample shape. The trainer writes what this reads (``Trainer.state_dict``: config, model_args, data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from volscore.checkpoint import CHECKPOINT_NAME, CheckpointError, check_finite, load_checkpoint
from volscore.config import TrainConfig
from volscore.nets.precond import Preconditioner
from volscore.outputs import RUN_FILES, RUN_LOCK

PRETRAINED_PREFIX = "pretrained:"


def run_files(spec: str | os.PathLike | None) -> list[Path]:
    """The files of the run ``spec`` on disk (none for ``pretrained:NAME``): inputs that no output of a
    command reading the run may replace (``outputs.check_outputs``)."""
    if spec is None or os.fspath(spec).startswith(PRETRAINED_PREFIX):
        return []
    folder = Path(spec).expanduser()
    return [folder / name for name in RUN_FILES if name != RUN_LOCK]


@dataclass
class Run:
    """A run's EMA (or raw) model in eval mode and the metadata its checkpoint stores."""

    name: str  # what the user gave: a run folder or pretrained:NAME
    model: Preconditioner
    config: TrainConfig
    model_args: dict[str, Any]
    data: dict[str, Any]  # the training source's meta (kind, shapes, scalers, zooms, ...)
    step: int

    @classmethod
    def load(cls, spec: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True) -> Run:
        """A run folder, or ``pretrained:NAME`` for a model bundled with volscore (hash-checked)."""
        text = os.fspath(spec)
        if text.startswith(PRETRAINED_PREFIX):
            from volscore.pretrained import load_pretrained_state

            state = load_pretrained_state(text[len(PRETRAINED_PREFIX) :], map_location=device)
            return cls.from_state(state, text, device, use_ema)
        path = Path(text).expanduser()
        if not path.is_dir():
            raise CheckpointError(
                f"{path}: no run directory here (train one with `volscore train --out {path}`)"
            )
        return cls.from_state(
            load_checkpoint(path / CHECKPOINT_NAME, map_location=device), text, device, use_ema
        )

    @classmethod
    def from_state(
        cls, state: dict[str, Any], name: str, device: str | torch.device = "cpu", use_ema: bool = True
    ) -> Run:
        """Build the model from a checkpoint dict (``load_checkpoint``) and load its (EMA) weights."""
        from volscore.nets import build_model_from_args

        model = build_model_from_args(state["model_args"])
        weights = state["model"]
        if use_ema and "ema" in state:
            weights = {
                k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")
            }
        check_finite(name, weights, "EMA weights" if weights is not state["model"] else "model weights")
        try:
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
        except RuntimeError as e:
            raise CheckpointError(f"{name}: weights do not fit the stored model arguments: {e}") from e
        model = model.to(device).eval().requires_grad_(False)
        return cls(
            name=str(name),
            model=model,
            config=TrainConfig.from_dict(state.get("config", {})),
            model_args=state["model_args"],
            data=dict(state.get("data") or {}),
            step=int(state.get("step", 0)),
        )

    # -- facts about the run ----------------------------------------------------------------------------
    @property
    def spatial_dims(self) -> int:
        return int(self.model_args["net"]["spatial_dims"])

    @property
    def channels(self) -> int:
        return int(self.model_args["net"]["in_channels"])

    @property
    def coords(self) -> bool:
        """Whether the network takes coordinate channels (PatchDDM): the model's own arguments decide."""
        return bool(self.model_args["net"].get("coord_channels", False))

    @property
    def kind(self) -> str:
        """mnist | nifti | shapes | self-supervised (older runs without a kind: by their dimension)."""
        return str(self.data.get("kind") or ("mnist" if self.spatial_dims == 2 else "nifti"))

    @property
    def patch_size(self) -> int | None:
        """The training patch edge, or None for a model of whole samples (MNIST, whole shapes)."""
        if self.kind in ("nifti", "self-supervised"):
            return int(self.config.patch_size)
        if "patch_size" in self.data:  # shapes larger than the patch (PatchDDM)
            return int(self.data["patch_size"])
        return None

    @property
    def sample_shape(self) -> list[int]:
        """The spatial shape a sample has by default: the training image, shape or (first) volume."""
        if "sample_shape" in self.data:
            return [int(s) for s in self.data["sample_shape"]]
        if self.kind == "mnist":
            return [28, 28]
        if self.kind == "shapes":
            return [int(self.data["size"])] * 3
        shapes = self.data.get("shapes") or [[self.config.patch_size] * 3]
        return [int(s) for s in shapes[0]]

    @property
    def zooms(self) -> list[float]:
        """Voxel size (mm) of the training volumes as the model saw them (after any resampling)."""
        zooms = self.data.get("zooms") or [[1.0] * self.spatial_dims]
        return [float(z) for z in zooms[0]]

    def scaler(self) -> Any:
        """The training volumes' ``IntensityScaler`` (model units <-> intensities), or None."""
        from volscore.data.nifti import IntensityScaler

        scalers = self.data.get("scalers")
        return IntensityScaler.from_dict(scalers[0]) if scalers else None

    def training_volume(self, index: int = 0) -> Any:
        """The ``index``-th training volume as the model saw it: resampled to the run's spacing and in model
        units (numpy float32, (X, Y, Z)); the reference a sample of this run should resemble."""
        import numpy as np

        from volscore.data.nifti import IntensityScaler, load_volume, resolve_paths
        from volscore.data.sources import resample

        if self.kind != "nifti":
            raise ValueError(f"{self.name}: not a run of NIfTI volumes")
        paths = resolve_paths(self.config.data)  # the spec ("mni152", a folder...), not this machine's paths
        if len(paths) <= index:
            raise ValueError(f"{self.name}: has no training volume {index}")
        volume = load_volume(paths[index])
        data = volume.data
        if self.config.spacing is not None:
            data, _ = resample(data, volume.affine, self.config.spacing)
        scaler = IntensityScaler.from_dict(self.data["scalers"][index])
        return np.asarray(scaler.forward(data), dtype=np.float32)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max) the model was trained on."""
        if self.config.sigma_max is None:
            raise CheckpointError(f"{self.name}: the run stores no sigma_max")
        return float(self.config.sigma_min), float(self.config.sigma_max)

    @property
    def num_sigmas(self) -> int:
        return int(self.config.num_sigmas or 2)
