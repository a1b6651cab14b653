"""Denoisers on tensors in model units: one stitched Tweedie step and the annealed (Langevin or
predictor-corrector) chain started at the scan itself."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from volscore.amp import autocast
from volscore.options import DENOISE_CHAINS, DENOISE_OVERLAP
from volscore.sampling.stitch import PatchFn


def _as_batch(noisy: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(np.asarray(noisy) if not isinstance(noisy, Tensor) else noisy, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(x.shape)}")
    return x[None, None]  # (1, 1, D, H, W)


def flip_patterns(axes: Sequence[int] = (0, 1, 2)) -> list[tuple[int, ...]]:
    """The flips of ``axes`` in the order the ensemble uses them: none first, then single axes, pairs, ...
    (so an ensemble of 2 adds the flip of the first axis, left-right for RAS-ordered scans)."""
    axes = tuple(int(a) for a in axes)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def mirrored(model: PatchFn, flips: Sequence[int]) -> PatchFn:
    """``model`` as seen through a volume flipped along ``flips`` (spatial axes of the volume).

    The stitcher hands the flipped volume's tiles the coordinates of the flipped grid. Voxel j of an axis of
    n flipped is voxel n - 1 - j of the scan, whose coordinate is c(n - 1 - j) = -c(j) (coordinates are
    linear in [-1, 1], extrapolated alike past the ends), so negating the flipped axes' coordinate channels
    gives every voxel the coordinate of its own place in the scan: the model is asked about the same
    anatomy at the same position, only mirrored.
    """
    channels = [int(a) for a in flips]

    def patch_fn(x: Tensor, sigma: Tensor, coords: Tensor | None) -> Tensor:
        if coords is not None and channels:
            coords = coords.clone()
            coords[:, channels] = -coords[:, channels]
        return model(x, sigma, coords)

    return patch_fn


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
    ensemble: int = 1,
    flip_axes: Sequence[int] = (0, 1, 2),
    overlap: float = DENOISE_OVERLAP,
    amp: torch.dtype | None = None,
) -> Tensor:
    """One Tweedie step D(y) = y + sigma^2 s(y, sigma) over a whole (D, H, W) volume in model units.

    ``model(x, sigma, coords)`` is a patch score function (e.g. ``Preconditioner``), stitched over the
    volume: ``"blend"`` (Gaussian-weighted overlap of ``overlap``: deterministic, no seams) or ``"shift"``
    (one random grid, ``generator``). ``score_sigma`` is the noise level the network is conditioned on, if
    not ``sigma``: self-supervised models are evaluated at their tiny training level
    (``fit_self_supervised``). ``amp``: run the network under autocast to this dtype (``autocast``).

    ``ensemble`` K > 1 averages K estimates: pass k flips the volume along ``flip_patterns(flip_axes)[k mod
    2^len(flip_axes)]`` (the coordinates with it, ``mirrored``), denoises and flips back; passes after the
    first also move the tiles (blend: a random window offset; shift: a new random grid), drawn from
    ``generator``. Pass 0 is the plain pass, so K = 1 is it, bit for bit. The average removes the part of the
    network's error that depends on the tiling and the orientation (seams, edge-of-tile effects, asymmetric
    filters); it costs K passes.
    """
    from volscore.sampling.stitch import StitchedScore

    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    x = _as_batch(noisy)
    level = float(sigma if score_sigma is None else score_sigma)
    patterns = flip_patterns(flip_axes)
    total = None
    for k in range(ensemble):
        flips = patterns[k % len(patterns)]
        dims = [2 + a for a in flips]
        patch_fn = autocast(mirrored(model, flips) if flips else model, amp)
        score_fn = StitchedScore(
            patch_fn, _patch(patch_size), stitch=stitch, tile_batch=tile_batch, coords=coords,
            overlap=overlap, generator=generator, blend_offset=k > 0,
        )  # fmt: skip
        s = score_fn(x.flip(dims), level).flip(dims) if flips else score_fn(x, level)
        estimate = x + float(sigma) ** 2 * s
        total = estimate if total is None else total + estimate
    assert total is not None
    return (total[0, 0] / ensemble) if ensemble > 1 else total[0, 0]


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
    overlap: float = DENOISE_OVERLAP,
) -> Tensor:
    """Start at the scan (x = y, already at level sigma), anneal down to sigma_min, finish with Tweedie.

    Levels: ``denoise_sigmas(sigma, sigma_min, steps)``. ``sampler="pc"`` (default): reverse-diffusion
    predictor sigma_i -> sigma_{i+1}, which started from y is the VE-SDE posterior sampler for p(x | y),
    with ``n_steps_each`` Langevin corrector steps per level (snr rule; default 0, the best on the toy of the
    module docstring). ``"annealed"``: NCSN annealed Langevin, ``n_steps_each`` (default 1) steps with
    alpha_i = step_lr sigma_i^2 / sigma_L^2 (default step_lr 0.05 sigma_L^2); it barely denoises (see above).
    The chain's score uses ``stitch`` (default shift: one evaluation per voxel, the grid moves each step);
    the final Tweedie step at sigma_L uses blend (no seams; tile ``overlap``). ``chains`` independent chains
    are averaged: one chain is a posterior sample, the average tends to the posterior mean. Reproducible per
    generator.
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
        total += tweedie_denoise(
            model, x[0, 0], sigma_last, patch_size, coords, "blend", tile_batch, overlap=overlap
        )
    return total / chains
