"""Training configuration: typed, validated data, saved with every run (no torch import here, so the
CLI's ``--help`` stays instant)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

OBJECTIVES = ("dsm", "ssm", "ssm-vr", "ssm-fd")
SIGMA_DISTS = ("loguniform", "geometric", "lognormal")
AMP_MODES = ("auto", "bf16", "fp16", "off")
WEIGHTINGS = ("sigma2", "edm")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` and in the checkpoint."""

    data: list[str]  # "mnist", "mnist:DIR", "mni152", NIfTI files, folders or globs
    out: str  # run directory
    objective: str = "dsm"  # dsm | ssm | ssm-vr | ssm-fd
    preset: str = "small"  # ScoreUNet preset (volscore.nets.presets)
    precond: str = "edm"  # edm | ncsnv2
    sigma_data: float = 0.5
    steps: int | None = None  # stop after this many steps in total ...
    minutes: float | None = None  # ... or after this much wall-clock in this invocation
    batch_size: int = 64
    lr: float = 2e-4
    warmup: int = 200  # linear learning-rate warm-up steps
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    amp: str = "auto"  # auto | bf16 | fp16 | off
    sigma_dist: str = "loguniform"  # loguniform | geometric | lognormal
    sigma_min: float = 0.01
    sigma_max: float | None = None  # None: NCSNv2 technique 1 (largest pairwise distance)
    num_sigmas: int | None = None  # None: NCSNv2 technique 2 for the sample dimension
    p_mean: float = -1.2  # lognormal sigma distribution (EDM)
    p_std: float = 1.2
    weighting: str = "sigma2"  # lambda(sigma): sigma2 (NCSN) | edm (unit weight on the network's output)
    patch_size: int = 32  # 3D only
    coords: bool = True  # 3D only: coordinate channels
    spacing: float | None = None  # 3D only: resample volumes to this isotropic spacing (mm)
    full_volume: bool = False  # 3D mni152 only: also train on the hold-out region
    seed: int = 0
    data_shards: int = 1  # shards drawn in turn by one process (= a data_shards-process DDP run)
    log_every: int = 25
    ckpt_every: int = 500
    max_skipped: int = 50  # non-finite losses tolerated before stopping
    device: str = "auto"
    compile: bool = False  # torch.compile the model (DSM and FD-SSM only: no double backward)
    channels_last: bool = False  # channels-last(-3d) memory format for weights and activations

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.sigma_dist not in SIGMA_DISTS:
            raise ValueError(f"sigma_dist must be one of {SIGMA_DISTS}, got {self.sigma_dist!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.steps is None and self.minutes is None:
            raise ValueError("give --steps or --minutes (or both)")
        if self.compile and self.objective in ("ssm", "ssm-vr"):
            raise ValueError(
                f"--compile cannot train {self.objective}: torch.compile does not support its double "
                "backward; use --objective ssm-fd or dsm, or drop --compile"
            )
        if self.data_shards < 1:
            raise ValueError(f"data_shards must be >= 1, got {self.data_shards}")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
