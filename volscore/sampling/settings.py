"""How to sample: the sampler, its noise levels and its constants, as one validated record (no torch import:
``volscore sample``'s flags are generated from these fields)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SAMPLERS = ("heun", "edm", "dpm", "annealed", "pc")
AUTO = "auto"  # the measured best for the run's kind (DEFAULT_SAMPLERS)
# The best sampler measured per kind of run at 35-80 network evaluations (README, "Samplers and the training
# recipe" and "3D shapes"): MNIST, EDM's stochastic sampler at 40 levels (lowest Frechet distance at 79
# evaluations); stitched 3D volumes, DPM-Solver++(2M) at 35 (higher SSIM and lower noise than Heun at the same
# 35 on three seeds, as good as Heun at 79); whole shapes, EDM's stochastic sampler at 18 levels (the lowest
# 1-NNA of every sampler at 18-80 evaluations; deterministic solvers leave stray fragments). MNIST and volumes
# end their chain at sigma 0.06 rather than the run's 0.01 (the network is least accurate at the smallest
# sigmas, which EDM's log-normal training rarely draws): chosen on one seed (scripts/tune_sampler.py for
# MNIST), on others MNIST's Frechet distance 10.0 -> 6.9 at 79 evaluations, the 3D prior's noise 1.26x ->
# 0.93x the template's; on whole shapes (a 20-minute model, DPM-Solver) it changed nothing.
DEFAULT_SAMPLERS: dict[str, dict[str, Any]] = {
    "mnist": {"sampler": "edm", "steps": 40, "sigma_min": 0.06},
    "nifti": {"sampler": "dpm", "steps": 35, "sigma_min": 0.06},
    "shapes": {"sampler": "edm", "steps": 18},
    "self-supervised": {"sampler": "dpm", "steps": 35},
}
FALLBACK_SAMPLER: dict[str, Any] = {"sampler": "heun", "steps": 18}
# Schedules: EDM's rho-schedule for the ODE solvers, NCSN's geometric levels for the Langevin samplers.
KARRAS_SAMPLERS = ("heun", "edm", "dpm")
# How a patch model scores a whole volume (volscore.sampling.stitch): a random grid shift per call (PaDIS),
# Gaussian-blended overlapping windows (MONAI), or a fixed grid (the seam baseline).
STITCH_MODES = ("shift", "blend", "fixed")


def _opt(help: str, **meta: Any) -> dict[str, Any]:
    return {"help": help, **meta}


@dataclass
class SamplerSettings:
    """A sampler and its settings. ``steps`` is the number of noise levels: Heun and EDM cost 2 steps - 1
    network evaluations, DPM-Solver++(2M) ``steps``, annealed Langevin ``steps`` x ``n_steps_each`` + 1,
    predictor-corrector ``steps`` x (``n_steps_each`` + 1)."""

    sampler: str = field(
        default=AUTO,
        metadata=_opt(
            "sampling algorithm; auto: the measured best for the run's kind (MNIST: edm, 40 levels; 3D "
            "volumes: dpm, 35 levels; both down to sigma 0.06; whole shapes: edm, 18 levels; others: heun, "
            "18 levels)",
            choices=(AUTO, *SAMPLERS),
        ),
    )
    steps: int | None = field(
        default=None,
        metadata=_opt("noise levels (default: 18 for heun/edm/dpm, the run's levels for annealed/pc)"),
    )
    sigma_max: float | None = field(default=None, metadata=_opt("first level (default: the run's sigma_max)"))
    sigma_min: float | None = field(default=None, metadata=_opt("last level (default: the run's sigma_min)"))
    rho: float = field(default=7.0, metadata=_opt("heun/edm/dpm: EDM's schedule exponent"))
    s_churn: float = field(default=40.0, metadata=_opt("edm: stochasticity S_churn (0 = heun)"))
    s_tmin: float = field(default=0.05, metadata=_opt("edm: churn only for sigma >= S_tmin"))
    s_tmax: float = field(default=50.0, metadata=_opt("edm: churn only for sigma <= S_tmax"))
    s_noise: float = field(default=1.003, metadata=_opt("edm: noise inflation S_noise"))
    n_steps_each: int = field(
        default=5, metadata=_opt("annealed: Langevin steps per level; pc: corrector steps")
    )
    step_lr: float | None = field(
        default=None, metadata=_opt("annealed: step size (default: NCSNv2 technique 4)")
    )
    step_lr_scale: float = field(default=1.0, metadata=_opt("annealed: multiplies the step size"))
    snr: float = field(default=0.16, metadata=_opt("pc: corrector signal-to-noise ratio"))

    def validate(self) -> None:
        if self.sampler not in (AUTO, *SAMPLERS):
            raise ValueError(f"sampler must be one of {(AUTO, *SAMPLERS)}, got {self.sampler!r}")
        if self.steps is not None and self.steps < 2:
            raise ValueError(f"--steps must be >= 2 noise levels, got {self.steps}")
        if self.n_steps_each < 0 or (self.sampler == "annealed" and self.n_steps_each < 1):
            raise ValueError(
                f"--n-steps-each must be >= 1 for annealed, >= 0 for pc, got {self.n_steps_each}"
            )
        for name in ("sigma_max", "sigma_min", "step_lr", "step_lr_scale", "rho", "snr", "s_noise"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
        for name in ("s_churn", "s_tmin", "s_tmax"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.sigma_max is not None and self.sigma_min is not None and self.sigma_max <= self.sigma_min:
            raise ValueError(f"--sigma-max ({self.sigma_max}) must exceed --sigma-min ({self.sigma_min})")

    def for_kind(self, kind: str) -> SamplerSettings:
        """These settings with ``auto`` replaced by the measured best for a run of ``kind`` (its levels too,
        unless ``steps`` was given); settings that name a sampler come back unchanged."""
        if self.sampler != AUTO:
            return self
        chosen = DEFAULT_SAMPLERS.get(kind, FALLBACK_SAMPLER)
        steps = self.steps if self.steps is not None else chosen["steps"]
        # the kind's measured constants (e.g. MNIST's last level) where these settings leave them to the run
        constants = {
            k: v for k, v in chosen.items() if k not in ("sampler", "steps") and getattr(self, k) is None
        }
        return dataclasses.replace(self, sampler=chosen["sampler"], steps=steps, **constants)

    def network_evaluations(self, levels: int) -> int:
        """Network evaluations per sample for ``levels`` noise levels (NFE)."""
        require_resolved(self)
        if self.sampler in ("heun", "edm"):
            return 2 * levels - 1
        if self.sampler == "dpm":
            return levels
        if self.sampler == "annealed":
            return levels * self.n_steps_each + 1
        return levels * (self.n_steps_each + 1)  # pc: corrector steps and a predictor per level


def require_resolved(settings: SamplerSettings) -> None:
    if settings.sampler == AUTO:
        raise ValueError("sampler 'auto' names no sampler yet: resolve it with .for_kind(run.kind)")
