"""Named ScoreUNet presets and the plain-dict model arguments stored in checkpoints.

Parameter counts (1 image channel; 3D with 3 coordinate channels), printed by ``count_parameters``:
    tiny   2D ~17 k,   3D ~45 k    tests only
    small  2D ~0.34 M, 3D ~0.82 M  MNIST, quick 3D denoisers
    base   2D ~1.1 M,  3D ~3.0 M   longer 3D runs
    deep   2D ~1.2 M,  3D ~3.1 M   small's width with a fourth level: a larger receptive field at about
                                   small's cost per voxel (sizes divisible by 8; scripts/bench_denoiser_nets)
A checkpoint stores ``model_args(...)`` (ints, floats, bools, strings, lists) and rebuilds the model with
``build_model_from_args``: no pickled classes, loadable with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from volscore.nets.precond import Preconditioner
from volscore.nets.unet import ScoreUNet

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        channels=[8, 16],  # feature channels per level; one down-sampling
        num_res_blocks=1,  # residual blocks per level (doubled at the bottom)
        emb_dim=16,  # noise-embedding width
        num_groups=4,  # GroupNorm groups (clipped to divide each layer's channels)
        dropout=0.0,  # dropout inside residual blocks
    ),
    "small": dict(
        channels=[16, 32, 64],  # three levels: a 32^3 patch reaches 8^3 at the bottom
        num_res_blocks=1,
        emb_dim=128,
        num_groups=8,
        dropout=0.0,
    ),
    "base": dict(
        channels=[32, 64, 128],  # twice the width of small: about 4x the compute
        num_res_blocks=1,
        emb_dim=128,
        num_groups=8,
        dropout=0.0,
    ),
    "deep": dict(
        channels=[16, 32, 64, 128],  # small plus a level at 1/8: sizes must divide by 8 (48^3 -> 6^3)
        num_res_blocks=1,
        emb_dim=128,
        num_groups=8,
        dropout=0.0,
    ),
}


def model_args(
    preset: str,
    spatial_dims: int,
    in_channels: int = 1,
    coord_channels: bool = False,
    sigma_data: float = 0.5,
    kind: str = "edm",
    coord_frequencies: int = 0,
) -> dict[str, Any]:
    """The plain dict that ``build_model_from_args`` turns into a model: {"net": ScoreUNet kwargs, ...}."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    net = dict(
        spatial_dims=int(spatial_dims), in_channels=int(in_channels), coord_channels=bool(coord_channels)
    )
    net.update({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in PRESETS[preset].items()})
    if coord_channels and coord_frequencies:  # absent when 0, so earlier runs' arguments compare equal
        net["coord_frequencies"] = int(coord_frequencies)
    return {"net": net, "sigma_data": float(sigma_data), "kind": str(kind)}


def build_model_from_args(args: dict[str, Any]) -> Preconditioner:
    """Rebuild a model from ``model_args(...)`` output (e.g. read back from a checkpoint)."""
    net_kwargs = dict(args["net"])
    if "channels" in net_kwargs:
        net_kwargs["channels"] = tuple(net_kwargs["channels"])
    return Preconditioner(ScoreUNet(**net_kwargs), sigma_data=args["sigma_data"], kind=args["kind"])


def build_model(
    preset: str,
    spatial_dims: int,
    in_channels: int = 1,
    coord_channels: bool = False,
    sigma_data: float = 0.5,
    kind: str = "edm",
) -> Preconditioner:
    """A preconditioned ScoreUNet from a named preset: ``build_model("small", 3)(x, sigma)`` is a score."""
    return build_model_from_args(
        model_args(preset, spatial_dims, in_channels, coord_channels, sigma_data, kind)
    )


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
