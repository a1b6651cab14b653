"""The sampler table: every sampler run by name from ``SamplerSettings``, with its noise levels.

Where to add a sampler: a function in its own module of this package with the common signature, its name
in ``settings.SAMPLERS``, one branch in ``run_sampler``, and fields in ``SamplerSettings`` for its constants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from volscore.noise import geometric_sigmas, karras_sigmas, ncsnv2_step_lr
from volscore.sampling.dpm_solver import dpm_solver_2m
from volscore.sampling.edm import edm_sampler, heun_sampler
from volscore.sampling.langevin import Callback, Generators, annealed_langevin, predictor_corrector
from volscore.sampling.settings import KARRAS_SAMPLERS, SAMPLERS, SamplerSettings, require_resolved

DEFAULT_KARRAS_STEPS = 18  # EDM: 18 levels = 35 Heun evaluations


def sampling_sigmas(settings: SamplerSettings, sigma_min: float, sigma_max: float, num_sigmas: int) -> Tensor:
    """The descending levels for ``settings``: its own sigma range and steps where given, else the run's
    (``sigma_min``, ``sigma_max``; ``num_sigmas`` geometric levels for the Langevin samplers)."""
    require_resolved(settings)
    lo = settings.sigma_min if settings.sigma_min is not None else sigma_min
    hi = settings.sigma_max if settings.sigma_max is not None else sigma_max
    if lo >= hi:  # e.g. a kind's default last level (0.06) above a run trained only on smaller sigmas
        raise ValueError(f"the last level sigma_min {lo:g} must lie below the first, sigma_max {hi:g}: "
                         "give --sigma-min (and/or --sigma-max)")  # fmt: skip
    if settings.sampler in KARRAS_SAMPLERS:
        return karras_sigmas(settings.steps or DEFAULT_KARRAS_STEPS, lo, hi, settings.rho)
    return geometric_sigmas(hi, lo, settings.steps or num_sigmas)


def annealed_step_lr(settings: SamplerSettings, sigmas: Tensor) -> float:
    """Annealed Langevin's step_lr (given, or NCSNv2's technique 4 for these levels) times the scale."""
    if settings.step_lr is not None:
        return settings.step_lr * settings.step_lr_scale
    gamma = (float(sigmas[0]) / float(sigmas[-1])) ** (1 / (len(sigmas) - 1))
    return ncsnv2_step_lr(float(sigmas[-1]), gamma, settings.n_steps_each) * settings.step_lr_scale


def run_sampler(
    settings: SamplerSettings,
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigmas: Tensor,
    generator: Generators | Sequence[torch.Generator] = None,
    callback: Callback | None = None,
) -> Tensor:
    """Run the sampler named by ``settings`` from x (already at ``sigmas[0]``) down to the clean sample."""
    require_resolved(settings)
    s = settings
    if s.sampler == "heun":
        return heun_sampler(score_fn, x, sigmas, generator=generator, callback=callback)
    if s.sampler == "edm":
        return edm_sampler(
            score_fn, x, sigmas, s_churn=s.s_churn, s_tmin=s.s_tmin, s_tmax=s.s_tmax, s_noise=s.s_noise,
            generator=generator, callback=callback,
        )  # fmt: skip
    if s.sampler == "dpm":
        return dpm_solver_2m(score_fn, x, sigmas, generator=generator, callback=callback)
    if s.sampler == "annealed":
        return annealed_langevin(
            score_fn, x, sigmas, n_steps_each=s.n_steps_each, step_lr=annealed_step_lr(s, sigmas),
            denoise=True, generator=generator, callback=callback,
        )  # fmt: skip
    if s.sampler == "pc":
        return predictor_corrector(
            score_fn, x, sigmas, n_steps_each=s.n_steps_each, snr=s.snr, denoise=True,
            generator=generator, callback=callback,
        )  # fmt: skip
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {s.sampler!r}")
