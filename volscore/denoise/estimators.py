"""Denoisers on tensors in model units: one stitched Tweedie step and the annealed (Langevin or
predictor-corrector) chain started at the scan itself."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from volscore.options import DENOISE_CHAINS
from volscore.sampling.stitch import PatchFn


def _as_batch(noisy: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(np.asarray(noisy) if not isinstance(noisy, Tensor) else noisy, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(x.shape)}")
    return x[None, None]  # (1, 1, D, H, W)


@torch.no_grad()
def tweedie_denoise(
    model: PatchFn,
    noisy: Tensor,
    sigma: float,
    patch_size: int | Sequence[int],
    coords: bool,
    stitch: str = "blend",
    tile_batch: int = 8,
    generator: torch.Generator | None = None,
    score_sigma: float | None = None,
) -> Tensor:
    """One Tweedie step D(y) = y + sigma^2 s(y, sigma) over a whole (D, H, W) volume in model units.

    ``model(x, sigma, coords)`` is a patch score function (e.g. ``Preconditioner``), stitched over the
    volume: ``"blend"`` (Gaussian-weighted overlap: deterministic, no seams) or ``"shift"`` (one random grid,
    ``generator``). ``score_sigma`` is the noise level the network is conditioned on, if not ``sigma``:
    self-supervised models are evaluated at their tiny training level (``fit_self_supervised``).
    """
    from volscore.sampling.stitch import StitchedScore

    x = _as_batch(noisy)
    score_fn = StitchedScore(
        model, _patch(patch_size), stitch=stitch, tile_batch=tile_batch, coords=coords, generator=generator
    )
    s = score_fn(x, float(sigma if score_sigma is None else score_sigma))
    return (x + float(sigma) ** 2 * s)[0, 0]


def _patch(patch_size: int | Sequence[int]) -> int | tuple[int, ...]:
    return int(patch_size) if isinstance(patch_size, (int, np.integer)) else tuple(int(p) for p in patch_size)


def denoise_sigmas(sigma: float, sigma_min: float, steps: int) -> Tensor:
    """``steps`` geometric levels from the scan's sigma down to sigma_min (just [sigma] if steps == 1)."""
    from volscore.noise import geometric_sigmas

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1 or sigma <= sigma_min:
        return torch.tensor([float(sigma)])
    return geometric_sigmas(float(sigma), float(sigma_min), steps)


@torch.no_grad()
def annealed_denoise(
    model: PatchFn,
    noisy: Tensor,
    sigma: float,
    steps: int,
    patch_size: int | Sequence[int],
    coords: bool,
    sigma_min: float,
    sampler: str = "pc",
    n_steps_each: int | None = None,
    step_lr: float | None = None,
    snr: float = 0.16,
    chains: int = 1,
    stitch: str = "shift",
    tile_batch: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Start at the scan (x = y, already at level sigma), anneal down to sigma_min, finish with Tweedie.

    Levels: ``denoise_sigmas(sigma, sigma_min, steps)``. ``sampler="pc"`` (default): reverse-diffusion
    predictor sigma_i -> sigma_{i+1}, which started from y is the VE-SDE posterior sampler for p(x | y),
    with ``n_steps_each`` Langevin corrector steps per level (snr rule; default 0, the best on the toy of the
    module docstring). ``"annealed"``: NCSN annealed Langevin, ``n_steps_each`` (default 1) steps with
    alpha_i = step_lr sigma_i^2 / sigma_L^2 (default step_lr 0.05 sigma_L^2); it barely denoises (see above).
    The chain's score uses ``stitch`` (default shift: one evaluation per voxel, the grid moves each step);
    the final Tweedie step at sigma_L uses blend (no seams). ``chains`` independent chains are averaged:
    one chain is a posterior sample, the average tends to the posterior mean. Reproducible per generator.
    """
    from volscore.sampling.langevin import annealed_langevin, predictor_corrector
    from volscore.sampling.stitch import StitchedScore

    if sampler not in DENOISE_CHAINS:
        raise ValueError(f"sampler must be one of {DENOISE_CHAINS}, got {sampler!r}")
    if chains < 1:
        raise ValueError(f"chains must be >= 1, got {chains}")
    sigmas = denoise_sigmas(sigma, sigma_min, steps)
    sigma_last = float(sigmas[-1])
    lr = 0.05 * sigma_last**2 if step_lr is None else float(step_lr)
    each = (1 if sampler == "annealed" else 0) if n_steps_each is None else int(n_steps_each)
    score_fn = StitchedScore(
        model, _patch(patch_size), stitch=stitch, tile_batch=tile_batch, coords=coords, generator=generator
    )
    y = _as_batch(noisy)
    total = torch.zeros_like(y[0, 0])
    for _ in range(chains):
        if sampler == "annealed":
            x = annealed_langevin(score_fn, y, sigmas, each, lr, denoise=False, generator=generator)
        else:
            x = predictor_corrector(score_fn, y, sigmas, each, snr, denoise=False, generator=generator)
        total += tweedie_denoise(model, x[0, 0], sigma_last, patch_size, coords, "blend", tile_batch)
    return total / chains
