"""Score networks: a dimension-generic ScoreUNet, its preconditioning, and named presets."""

from __future__ import annotations

from volscore.nets.precond import Preconditioner
from volscore.nets.presets import PRESETS, build_model, build_model_from_args, count_parameters, model_args
from volscore.nets.unet import ScoreUNet

__all__ = [
    "PRESETS",
    "Preconditioner",
    "ScoreUNet",
    "build_model",
    "build_model_from_args",
    "count_parameters",
    "model_args",
]
