"""Training configuration: typed, validated data, saved with every run. Each field is declared once, here:
``volscore train``'s flags are generated from these fields (``volscore.arguments``). No torch import here,
so the CLI's ``--help`` stays instant."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

OBJECTIVES = ("dsm", "ssm", "ssm-vr", "ssm-fd")
# How ssm and ssm-vr compute v^T J v (volscore.objectives.ssm_loss's method); auto: the faster on the device.
SSM_METHODS = ("auto", "exact", "forward")
SIGMA_DISTS = ("loguniform", "geometric", "lognormal")
AMP_MODES = ("auto", "bf16", "fp16", "off")
WEIGHTINGS = ("sigma2", "edm")
PRECONDITIONERS = ("edm", "ncsnv2")  # volscore.nets.precond.Preconditioner kinds
PRESET_NAMES = ("tiny", "small", "base", "deep")  # volscore.nets.presets.PRESETS (a test checks they agree)
LR_SCHEDULES = ("constant", "cosine")
# Seeds are non-negative (numpy refuses others) and leave room for the offsets added to them (seed + i for
# sample i, seed + 1_000_003 r for shard r) below torch's 2^64.
SEED_MAX = 2**63 - 1
# Random augmentations of the clean 3D training patches (volscore.data.augment; applied in this order).
AUGMENTATIONS = ("flip", "affine", "gamma", "bias")

# The fields a resumed run may change: the budget and how it runs, never the model, data or objective.
RUNTIME_FIELDS = (
    "steps",
    "minutes",
    "device",
    "compile",
    "channels_last",
    "ckpt_every",
    "log_every",
)


def _opt(help: str, **meta: Any) -> dict[str, Any]:
    return {"help": help, **meta}


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` and in the checkpoint. Fields with help text are
    ``volscore train`` flags."""

    data: list[str] = field(
        metadata=_opt("mnist | mnist:IDX_DIR | mni152 | shapes:KIND[@SIZE] | NIfTI files, a folder or a glob")
    )
    out: str = field(metadata=_opt("run directory (config, checkpoint, metrics, plots)"))
    objective: str = field(default="dsm", metadata=_opt("score-matching objective", choices=OBJECTIVES))
    ssm_method: str = field(
        default="auto",
        metadata=_opt(
            "ssm, ssm-vr: differentiate v^T J v by exact (reverse over reverse) or forward (forward-mode "
            "AD): the same loss at different cost; auto: the faster on this device (forward on CPU)",
            choices=SSM_METHODS,
        ),
    )
    preset: str = field(
        default="small", metadata=_opt("network size (volscore.nets.presets)", choices=PRESET_NAMES)
    )
    precond: str = field(default="edm", metadata=_opt("network preconditioning", choices=PRECONDITIONERS))
    sigma_data: float = 0.5  # EDM's data standard deviation in the preconditioner
    steps: int | None = field(default=None, metadata=_opt("total training steps"))
    minutes: float | None = field(default=None, metadata=_opt("wall-clock budget of this invocation"))
    batch_size: int | None = field(
        default=None, metadata=_opt("batch size (default: 64 for 2D images, 4 for 3D)")
    )
    lr: float = field(default=2e-4, metadata=_opt("Adam learning rate"))
    lr_schedule: str = field(
        default="constant",
        metadata=_opt("after warm-up: constant, or cosine decay to 0 at --steps", choices=LR_SCHEDULES),
    )
    warmup: int = field(default=200, metadata=_opt("linear learning-rate warm-up steps"))
    grad_clip: float = 1.0
    ema_decay: float = field(default=0.999, metadata=_opt("EMA decay (with the usual warm-up)"))
    amp: str = field(
        default="auto",
        metadata=_opt("mixed precision (auto: bf16 on CPU and capable GPUs)", choices=AMP_MODES),
    )
    sigma_dist: str = field(
        default="loguniform", metadata=_opt("training sigma distribution", choices=SIGMA_DISTS)
    )
    weighting: str = field(
        default="sigma2",
        metadata=_opt(
            "loss weight lambda(sigma): sigma2 (NCSN) or edm (unit weight on the network output)",
            choices=WEIGHTINGS,
        ),
    )
    sigma_min: float = field(default=0.01, metadata=_opt("smallest training sigma"))
    sigma_max: float | None = field(
        default=None, metadata=_opt("largest training sigma (default: largest pairwise distance, NCSNv2)")
    )
    num_sigmas: int | None = field(
        default=None, metadata=_opt("sampling levels (default: NCSNv2 technique 2 for the sample dimension)")
    )
    p_mean: float = field(default=-1.2, metadata=_opt("lognormal: mean of ln sigma (EDM)"))
    p_std: float = field(default=1.2, metadata=_opt("lognormal: standard deviation of ln sigma (EDM)"))
    patch_size: int = field(default=32, metadata=_opt("3D patch edge"))
    coords: bool = field(
        default=True, metadata=_opt("3D: coordinate channels (position in the whole volume)")
    )
    coord_frequencies: int = field(
        default=0, metadata=_opt("3D: Fourier features of the coordinates, sin/cos(2^k pi c) for k < this")
    )
    spacing: float | None = field(
        default=None, metadata=_opt("3D: resample volumes to this isotropic spacing (mm)")
    )
    full_volume: bool = field(default=False, metadata=_opt("mni152: also train on the y >= 120 hold-out"))
    augment: list[str] = field(
        default_factory=list,
        metadata=_opt(
            "3D NIfTI patches: random augmentations of the clean patches, any of flip (axis flips), affine "
            "(rotations and scalings), gamma (contrast), bias (smooth multiplicative field); none by default",
            choices=AUGMENTATIONS,
            nargs="*",
        ),
    )
    multires: list[float] | None = field(
        default=None,
        metadata=_opt(
            "3D NIfTI: also resample every volume to each of these isotropic spacings (mm) and draw patches "
            "from all of them (multi-resolution training; coordinates stay per volume)"
        ),
    )
    seed: int = field(default=0, metadata=_opt("seed of weights, batches and noise"))
    data_shards: int = field(
        default=1,
        metadata=_opt("batches per step drawn in turn (one process reproducing an N-process torchrun run)"),
    )
    log_every: int = 25
    ckpt_every: int = field(default=500, metadata=_opt("checkpoint every this many steps"))
    max_skipped: int = 50  # non-finite losses tolerated before stopping
    device: str = field(default="auto", metadata=_opt("cpu, cuda, cuda:N or auto"))
    compile: bool = field(default=False, metadata=_opt("torch.compile the model (not for ssm, ssm-vr)"))
    channels_last: bool = field(default=False, metadata=_opt("channels-last(-3d) memory format"))
    init: str | None = field(
        default=None, metadata=_opt("start from these weights: a run folder or pretrained:NAME (fine-tuning)")
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def model_changes(self, other: TrainConfig) -> list[str]:
        """The non-runtime fields that ``other`` sets (not None) to another value: what a resume may not
        change. None means "resolved by the run" (sigma_max, num_sigmas, batch_size)."""
        skip = set(RUNTIME_FIELDS) | {"out"}
        return [
            f"{f.name}: {getattr(self, f.name)!r} -> {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name not in skip
            and getattr(other, f.name) is not None
            and getattr(self, f.name) != getattr(other, f.name)
        ]

    def validate(self) -> None:
        """Refuse what cannot run, naming the option: choices, budgets, finite positive numbers, seeds."""
        for name, allowed in (
            ("objective", OBJECTIVES),
            ("ssm_method", SSM_METHODS),
            ("sigma_dist", SIGMA_DISTS),
            ("amp", AMP_MODES),
            ("weighting", WEIGHTINGS),
            ("precond", PRECONDITIONERS),
            ("lr_schedule", LR_SCHEDULES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.steps is None and self.minutes is None:
            raise ValueError("give --steps or --minutes (or both)")
        if self.lr_schedule == "cosine" and self.steps is None:
            raise ValueError("--lr-schedule cosine decays to 0 at --steps: give --steps")
        positive = {
            "lr": self.lr,
            "sigma_min": self.sigma_min,
            "sigma_data": self.sigma_data,
            "p_std": self.p_std,
            "grad_clip": self.grad_clip,
            "minutes": self.minutes,
            "sigma_max": self.sigma_max,
        }
        for name, value in positive.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
        at_least_one = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "data_shards": self.data_shards,
            "patch_size": self.patch_size,
            "ckpt_every": self.ckpt_every,
            "log_every": self.log_every,
        }
        for name, value in at_least_one.items():
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not 0 <= self.coord_frequencies <= 12:
            raise ValueError(f"--coord-frequencies must be in [0, 12], got {self.coord_frequencies}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if self.max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {self.max_skipped}")
        check_seed(self.seed)
        if not (math.isfinite(self.p_mean) and 0 <= self.ema_decay < 1):
            raise ValueError(
                f"need a finite --p-mean and 0 <= --ema-decay < 1, got {self.p_mean}, {self.ema_decay}"
            )
        if self.sigma_max is not None and self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"--sigma-max ({self.sigma_max}) must be larger than --sigma-min ({self.sigma_min})"
            )
        if self.num_sigmas is not None and self.num_sigmas < 2:
            raise ValueError(f"--num-sigmas must be >= 2, got {self.num_sigmas}")
        if self.spacing is not None and not (math.isfinite(self.spacing) and self.spacing > 0):
            raise ValueError(f"--spacing must be a finite number of mm > 0, got {self.spacing}")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown or len(set(self.augment)) != len(self.augment):
            raise ValueError(f"--augment takes distinct names from {AUGMENTATIONS}, got {self.augment}")
        if self.multires is not None and (
            not self.multires or not all(math.isfinite(s) and s > 0 for s in self.multires)
        ):
            raise ValueError(f"--multires must be spacings of mm > 0, got {self.multires}")
        if self.compile and self.objective in ("ssm", "ssm-vr"):
            raise ValueError(
                f"--compile cannot train {self.objective}: torch.compile does not support its double "
                "backward; use --objective ssm-fd or dsm, or drop --compile"
            )


def check_seed(seed: int, name: str = "seed") -> None:
    """Refuse a seed outside [0, SEED_MAX], naming the option."""
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer in [0, 2^63 - 1], got {seed}")
