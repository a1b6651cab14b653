"""The option records of the commands other than ``train`` (whose record is ``config.TrainConfig``): each
field is declared once here, the CLI's flags are generated from it, and ``validate`` checks it at the edge.
No torch import, so ``volscore --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from volscore.config import OBJECTIVES, PRESET_NAMES, check_seed
from volscore.sampling.settings import AUTO, SAMPLERS, STITCH_MODES

NOISE_MODELS = ("gaussian", "rician")
BACKGROUND_RULES = ("clamp", "none")
DENOISE_CHAINS = ("pc", "annealed")  # the chains ``denoise.estimators.annealed_denoise`` runs from the scan
SELF_SUPERVISED_OBJECTIVES = ("dsm", "ssm-vr")
DEFAULT_DENOISER = "pretrained:t1-denoiser"  # ``volscore denoise`` without --run or --self-supervised
# volscore.data.nifti.load_volume's volume_index, the flag of every command that reads one scan
VOLUME_INDEX_HELP = "4D files: the volume to use (0 is the first; negative counts from the end)"
SPACING_RULES = ("native", "auto")  # or a spacing in mm: ``denoise.spacing``
INFERENCE_AMP = ("off", "bf16")  # --amp of sample, denoise and restore (network under autocast)
# What ``volscore denoise`` does when its self-check (``denoise.check``) fails.
CHECK_MODES = ("off", "warn", "shrink", "refuse")
# Blend overlap of the Tweedie pass (bench_denoise_curves, README): on the 96^3 hold-out 0.25 takes half the
# time of 0.5 for 0.03 dB, but on a small 4 x 4 x 5 mm scan it cost 0.13-0.21 dB; 0.75 is no better at 5.7x.
DENOISE_OVERLAP = 0.5


def _opt(help: str, **meta: Any) -> dict[str, Any]:
    return {"help": help, **meta}


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")


@dataclass
class SampleOptions:
    """Where and how many samples ``volscore sample`` writes; the sampler itself is ``SamplerSettings``."""

    out: str = field(metadata=_opt("grid .png (2D), volume .nii.gz (3D) or folder (shapes)"))
    n: int | None = field(
        default=None, metadata=_opt("number of samples (default: 64 images or shapes, 1 volume)")
    )
    shape: list[int] | None = field(
        default=None, metadata=_opt("spatial shape (default: the training image, shape or volume)", nargs="+")
    )
    seed: int = field(default=0, metadata=_opt("sample i uses seed + i"))
    stitch: str = field(
        default="shift", metadata=_opt("3D patch models: patch stitching", choices=STITCH_MODES)
    )
    tile_batch: int = field(default=8, metadata=_opt("3D: tiles per network call (bounds memory)"))
    volume_batch: int = field(
        default=1,
        metadata=_opt("3D, --n > 1: volumes sampled in one chain (bigger network batches, for GPUs)"),
    )
    amp: str = field(
        default="off",
        metadata=_opt(
            "network under autocast (bf16: faster on CPUs with native bf16)", choices=INFERENCE_AMP
        ),
    )
    mesh: bool = field(default=False, metadata=_opt("shapes: also shape_XXX.obj (needs volscore[mesh])"))
    force: bool = field(default=False, metadata=_opt("replace existing outputs"))

    def count(self, kind: str) -> int:
        """Samples to draw for a run of ``kind``: --n, else 1 volume (nifti) or 64 images or shapes."""
        return self.n if self.n is not None else 1 if kind == "nifti" else 64

    def validate(self) -> None:
        if (self.n is not None and self.n < 1) or self.tile_batch < 1 or self.volume_batch < 1:
            raise ValueError(
                f"--n, --tile-batch and --volume-batch must be >= 1, got {self.n}, {self.tile_batch}, "
                f"{self.volume_batch}"
            )
        if self.stitch not in STITCH_MODES:
            raise ValueError(f"stitch must be one of {STITCH_MODES}, got {self.stitch!r}")
        if self.amp not in INFERENCE_AMP:
            raise ValueError(f"amp must be one of {INFERENCE_AMP}, got {self.amp!r}")
        if self.shape is not None and (len(self.shape) not in (2, 3) or any(s < 1 for s in self.shape)):
            raise ValueError(f"--shape must be 2 or 3 positive sizes, got {self.shape}")
        check_seed(self.seed)


@dataclass
class DenoiseOptions:
    """How ``volscore denoise`` works: the model (a run or a self-supervised fit), noise and estimator."""

    run: str | None = field(
        default=None,
        metadata=_opt(f"trained 3D run folder, or pretrained:NAME (default: {DEFAULT_DENOISER})"),
    )
    self_supervised: bool = field(default=False, metadata=_opt("fit a model on the noisy scan itself"))
    sigma: str = field(default="auto", metadata=_opt("noise sd in input units, or auto (estimated, printed)"))
    noise: str = field(default="gaussian", metadata=_opt("noise model", choices=NOISE_MODELS))
    steps: int = field(default=0, metadata=_opt("0: one Tweedie step; K > 0: K-level annealed chain"))
    sampler: str = field(default="pc", metadata=_opt("chain for --steps > 0", choices=DENOISE_CHAINS))
    chains: int = field(default=1, metadata=_opt("--steps > 0: average this many chains"))
    seed: int = field(default=0, metadata=_opt("seed of chains and tilings"))
    minutes: float = field(default=5.0, metadata=_opt("--self-supervised: fitting budget"))
    objective: str = field(
        default="dsm",
        metadata=_opt(
            "--self-supervised: DSM measured better (35.3 vs 34.2 dB for 6-minute fits, bench_denoise)",
            choices=SELF_SUPERVISED_OBJECTIVES,
        ),
    )
    stitch: str = field(default="blend", metadata=_opt("Tweedie step tiling", choices=STITCH_MODES))
    tile_batch: int = field(default=8, metadata=_opt("tiles per network call (bounds memory)"))
    background: str = field(default="clamp", metadata=_opt("rule outside the head", choices=BACKGROUND_RULES))
    device: str = field(default="cpu", metadata=_opt("cpu, cuda or cuda:N"))
    volume_index: int | None = field(default=None, metadata=_opt(VOLUME_INDEX_HELP))
    spacing: str = field(
        default="native",
        metadata=_opt(
            "voxel size to denoise at: native (the scan's grid), auto (the run's training spacing nearest to "
            "the scan's, unless the scan already has it within 10%%), or a spacing in mm; the scan is "
            "resampled there, denoised at the resampled noise level, and resampled back onto its own grid"
        ),
    )
    ensemble: int = field(
        default=1,
        metadata=_opt(
            "Tweedie: average this many passes, each with another flip of --ensemble-axes (coordinates "
            "flipped with the voxels) and, after the first, a random tile offset"
        ),
    )
    ensemble_axes: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata=_opt("axes whose flips the ensemble uses (none: tile offsets only)", nargs="*"),
    )
    overlap: float = field(default=DENOISE_OVERLAP, metadata=_opt("blend stitching: tile overlap in [0, 1)"))
    amp: str = field(
        default="off",
        metadata=_opt("network under autocast (bf16: faster on recent CPUs)", choices=INFERENCE_AMP),
    )
    check: str = field(
        default="warn",
        metadata=_opt(
            "self-check of the result (residual against the noise, SURE estimate of the gain; one more "
            "denoising pass): off, warn (record and print a failure), shrink (on failure, mix the output "
            "with the input by the SURE-optimal weight) or refuse (on failure, write nothing)",
            choices=CHECK_MODES,
        ),
    )
    init: str | None = field(
        default=None,
        metadata=_opt(
            "--self-supervised: start the fit from this run's weights (run folder or pretrained:NAME), in "
            "its units and at its voxel size: fine-tuning a trained prior on the scan"
        ),
    )
    fit_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for self-supervised fits

    @property
    def sigma_value(self) -> float | None:
        """The given noise level, or None for "auto"."""
        return None if self.sigma == "auto" else float(self.sigma)

    @property
    def spacing_value(self) -> float | None:
        """The given spacing in mm, or None for a rule ("native", "auto")."""
        return None if self.spacing in SPACING_RULES else float(self.spacing)

    def with_default_model(self) -> tuple[DenoiseOptions, str | None]:
        """These options with the bundled T1 denoiser as the run when neither --run nor --self-supervised is
        given, and the line that says so (None when a model was given)."""
        if self.run is not None or self.self_supervised:
            return self, None
        note = (
            f"no --run or --self-supervised given: denoising with the bundled {DEFAULT_DENOISER} "
            "(see `volscore models`)"
        )
        return dataclasses.replace(self, run=DEFAULT_DENOISER), note

    def validate(self) -> None:
        """The one place the denoising options are checked: model choice, sigma, chain, noise model."""
        if self.run is not None and self.self_supervised:
            raise ValueError("give either a trained run (--run RUN) or --self-supervised, not both")
        if self.run is None and not self.self_supervised:
            raise ValueError(
                "no model: give --run RUN, --self-supervised, or use with_default_model() (the bundled "
                f"{DEFAULT_DENOISER})"
            )
        if self.sigma != "auto":
            try:
                value = float(self.sigma)
            except (TypeError, ValueError):
                raise ValueError(f"--sigma must be 'auto' or a number, got {self.sigma!r}") from None
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--sigma must be a finite number > 0, got {self.sigma}")
        for name, value, allowed in (
            ("noise", self.noise, NOISE_MODELS),
            ("sampler", self.sampler, DENOISE_CHAINS),
            ("objective", self.objective, SELF_SUPERVISED_OBJECTIVES),
            ("stitch", self.stitch, STITCH_MODES),
            ("background", self.background, BACKGROUND_RULES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.steps < 0 or self.chains < 1 or self.tile_batch < 1:
            raise ValueError(
                f"need --steps >= 0, --chains >= 1, --tile-batch >= 1; got {self.steps}, {self.chains}, "
                f"{self.tile_batch}"
            )
        if self.self_supervised and self.steps:
            raise ValueError(
                "a self-supervised model knows only the scan's noise level: use steps=0 (Tweedie)"
            )
        _positive("minutes", self.minutes)
        if self.spacing not in SPACING_RULES:
            try:
                _positive("spacing", float(self.spacing))
            except (TypeError, ValueError):
                raise ValueError(
                    f"--spacing must be one of {SPACING_RULES} or a number of mm > 0, got {self.spacing!r}"
                ) from None
        for name, value, allowed in (("amp", self.amp, INFERENCE_AMP), ("check", self.check, CHECK_MODES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.ensemble < 1 or (self.ensemble > 1 and self.steps):
            raise ValueError(f"--ensemble must be >= 1 and is for Tweedie (--steps 0), got {self.ensemble}")
        axes = list(self.ensemble_axes)
        if len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
            raise ValueError(f"--ensemble-axes must be distinct axes among 0, 1, 2, got {axes}")
        if not (math.isfinite(self.overlap) and 0 <= self.overlap < 1):
            raise ValueError(f"--overlap must be in [0, 1), got {self.overlap}")
        if self.init is not None and not self.self_supervised:
            raise ValueError("--init is the prior of a --self-supervised fit; with --run, drop --init")
        check_seed(self.seed)


@dataclass
class NoisyOptions:
    """``volscore noisy``: a noisy copy of a scan with known noise (``volscore.corrupt.make_noisy_file``)."""

    fraction: float = field(default=0.05, metadata=_opt("noise sd / the scan's 99.5th percentile"))
    noise: str = field(default="gaussian", metadata=_opt("noise model", choices=NOISE_MODELS))
    seed: int = field(default=0, metadata=_opt("seed of the noise"))
    volume_index: int | None = field(default=None, metadata=_opt(VOLUME_INDEX_HELP))
    force: bool = field(default=False, metadata=_opt("replace an existing output"))

    def validate(self) -> None:
        _positive("fraction", self.fraction)
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {NOISE_MODELS}, got {self.noise!r}")
        check_seed(self.seed)


# The 2D baseline's training recipes: what differs from TrainConfig's defaults.
BASELINE_RECIPES: dict[str, dict[str, Any]] = {
    "edm": {"sigma_dist": "lognormal", "weighting": "edm", "lr": 1e-3},
    "ncsn": {"sigma_dist": "loguniform", "weighting": "sigma2", "lr": 5e-4},
}


@dataclass
class DemoOptions:
    """``volscore demo``: the main job. Sample a brain from the bundled 3D prior and denoise a noisy copy of
    the template's hold-out with the bundled T1 denoiser; ``--minutes`` trains the prior further first."""

    out: str = field(default="runs/demo", metadata=_opt("folder for the demo's files"))
    prior: str = field(
        default="pretrained:mni152-prior", metadata=_opt("3D prior to sample: run or pretrained:NAME")
    )
    denoiser: str = field(default=DEFAULT_DENOISER, metadata=_opt("3D denoiser: run or pretrained:NAME"))
    minutes: float = field(
        default=0.0, metadata=_opt("train the prior this many minutes further first (0: as is)")
    )
    noise: float = field(
        default=0.05, metadata=_opt("noise sd of the hold-out copy, x the 99.5th percentile")
    )
    seed: int = field(default=0, metadata=_opt("seed of sampling and noise"))
    force: bool = field(default=False, metadata=_opt("replace the demo's files from an earlier call"))

    def validate(self) -> None:
        if not (math.isfinite(self.minutes) and self.minutes >= 0):
            raise ValueError(f"--minutes must be a finite number >= 0, got {self.minutes}")
        _positive("noise", self.noise)
        check_seed(self.seed)


@dataclass
class BaselineOptions:
    """``volscore baseline``: the lecture's 2D example end to end (train on MNIST, sample, evaluate)."""

    out: str = field(default="runs/baseline", metadata=_opt("run directory"))
    minutes: float = field(default=20.0, metadata=_opt("training minutes of this call"))
    objective: str = field(default="dsm", metadata=_opt("score-matching objective", choices=OBJECTIVES))
    recipe: str = field(
        default="edm",
        metadata=_opt(
            "training sigmas and weighting: edm (log-normal, EDM weighting, lr 1e-3) or ncsn (log-uniform, "
            "sigma^2 weighting, lr 5e-4: the lecture's)",
            choices=tuple(BASELINE_RECIPES),
        ),
    )
    preset: str = field(default="small", metadata=_opt("network size", choices=PRESET_NAMES))
    lr: float | None = field(default=None, metadata=_opt("Adam learning rate (default: the recipe's)"))
    n: int = field(default=500, metadata=_opt("samples to draw and evaluate"))
    seed: int = field(default=0, metadata=_opt("seed of training and sampling"))

    def validate(self) -> None:
        _positive("minutes", self.minutes)
        _positive("lr", self.lr)
        if self.recipe not in BASELINE_RECIPES:
            raise ValueError(f"--recipe must be one of {tuple(BASELINE_RECIPES)}, got {self.recipe!r}")
        if self.n < 2:
            raise ValueError(f"--n must be >= 2 (the Frechet distance needs a covariance), got {self.n}")
        check_seed(self.seed)


RESTORE_TASKS = ("superres", "inpaint")
SLICE_PROFILES = ("box", "gaussian")  # volscore.restore.operators' thick-slice profiles
# "pnp": deterministic proximal iterations (the best PSNR measured); a sampler name: posterior draws with it.
RESTORE_SAMPLERS = (AUTO, "pnp", *SAMPLERS)
# Levels per method, chosen on a crop of the template's training half (never the reported hold-out):
# (levels, first sigma, last sigma) in model units (README, "Restoring scans").
RESTORE_LEVELS = {"pnp": (10, 0.1, 0.01), "draws": (10, 0.1, 0.005)}


@dataclass
class RestoreOptions:
    """How ``volscore restore`` works: the task and its measurement, the prior, the sampler."""

    task: str = field(default="superres", metadata=_opt("what to restore", choices=RESTORE_TASKS))
    run: str = field(
        default=DEFAULT_DENOISER,
        metadata=_opt("the prior: a trained 3D run folder or pretrained:NAME (no coordinates is safest)"),
    )
    slice_axis: str = field(
        default="auto",
        metadata=_opt("superres: the thick axis (0, 1, 2), or auto (the largest voxel size in the header)"),
    )
    factor: str = field(
        default="auto",
        metadata=_opt("superres: fine slices per thick slice, or auto (thick voxel size / in-plane size)"),
    )
    profile: str = field(
        default="box",
        metadata=_opt("superres: slice profile (box: the mean of the fine slices)", choices=SLICE_PROFILES),
    )
    mask: str | None = field(
        default=None,
        metadata=_opt("inpaint: NIfTI mask on the input's grid, nonzero = voxels to fill in"),
    )
    sampler: str = field(
        default=AUTO,
        metadata=_opt(
            "pnp: deterministic proximal iterations (best PSNR measured); a sampler name: posterior draws; "
            "auto: pnp for one sample, dpm draws for --n-samples > 1",
            choices=RESTORE_SAMPLERS,
        ),
    )
    steps: int | None = field(default=None, metadata=_opt("noise levels (default 10)"))
    sigma_max: float | None = field(default=None, metadata=_opt("first level, model units (default 0.1)"))
    sigma_min: float | None = field(
        default=None, metadata=_opt("last level, model units (default: pnp 0.01, draws 0.005)")
    )
    n_samples: int = field(
        default=1,
        metadata=_opt("posterior draws: OUTPUT is their mean, and their per-voxel sd goes to --std-out"),
    )
    noise_sigma: str = field(
        default="auto",
        metadata=_opt("measurement noise sd in input units, or auto (estimated from the input)"),
    )
    seed: int = field(default=0, metadata=_opt("draw k uses seed + k (noise and tile offsets)"))
    tile_batch: int = field(default=8, metadata=_opt("tiles per network call (bounds memory)"))
    amp: str = field(default="off", metadata=_opt("network under autocast", choices=INFERENCE_AMP))
    device: str = field(default="cpu", metadata=_opt("cpu, cuda or cuda:N"))
    volume_index: int | None = field(default=None, metadata=_opt(VOLUME_INDEX_HELP))

    @property
    def method(self) -> str:
        """ "pnp" or the sampler of the posterior draws, with auto resolved."""
        if self.sampler != AUTO:
            return self.sampler
        return "pnp" if self.n_samples == 1 else "dpm"

    def levels(self) -> tuple[int, float, float]:
        """(levels, first sigma, last sigma) in model units: the given ones, else the method's default."""
        steps, hi, lo = RESTORE_LEVELS["pnp" if self.method == "pnp" else "draws"]
        return (
            self.steps if self.steps is not None else steps,
            self.sigma_max if self.sigma_max is not None else hi,
            self.sigma_min if self.sigma_min is not None else lo,
        )

    @property
    def noise_value(self) -> float | None:
        return None if self.noise_sigma == "auto" else float(self.noise_sigma)

    def validate(self) -> None:
        """The one place the restoration options are checked, before any file is read."""
        for name, value, allowed in (
            ("task", self.task, RESTORE_TASKS),
            ("profile", self.profile, SLICE_PROFILES),
            ("sampler", self.sampler, RESTORE_SAMPLERS),
            ("amp", self.amp, INFERENCE_AMP),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.task == "inpaint" and self.mask is None:
            raise ValueError("--task inpaint needs --mask MASK.nii.gz (nonzero = voxels to fill in)")
        if self.task == "superres" and self.mask is not None:
            raise ValueError("--mask is for --task inpaint")
        if self.slice_axis != "auto" and self.slice_axis not in ("0", "1", "2"):
            raise ValueError(f"--slice-axis must be auto, 0, 1 or 2, got {self.slice_axis!r}")
        if self.factor != "auto":
            try:
                factor = int(self.factor)
            except (TypeError, ValueError):
                raise ValueError(f"--factor must be auto or an integer >= 2, got {self.factor!r}") from None
            if factor < 2:
                raise ValueError(f"--factor must be auto or an integer >= 2, got {self.factor!r}")
        if self.method == "pnp" and self.n_samples > 1:
            raise ValueError(
                "pnp is deterministic: --n-samples > 1 needs a posterior sampler (--sampler dpm, heun, ...)"
            )
        if self.n_samples < 1 or self.tile_batch < 1 or (self.steps is not None and self.steps < 1):
            raise ValueError(
                f"need --n-samples, --tile-batch and --steps >= 1; got {self.n_samples}, {self.tile_batch}, "
                f"{self.steps}"
            )
        _positive("sigma_max", self.sigma_max)
        _positive("sigma_min", self.sigma_min)
        steps, hi, lo = self.levels()
        if not hi > lo and steps > 1:
            raise ValueError(f"need --sigma-max > --sigma-min, got {hi}, {lo}")
        if self.noise_sigma != "auto":
            try:
                value = float(self.noise_sigma)
            except (TypeError, ValueError):
                raise ValueError(
                    f"--noise-sigma must be auto or a number >= 0, got {self.noise_sigma!r}"
                ) from None
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"--noise-sigma must be auto or a finite number >= 0, got {self.noise_sigma}"
                )
        check_seed(self.seed)
