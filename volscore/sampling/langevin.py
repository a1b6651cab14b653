"""Langevin samplers on any score function: plain, annealed (NCSN) and predictor-corrector (score SDE).

The annealed samplers share one signature, ``sampler(score_fn, x, sigmas, ...) -> x``, with
``score_fn(x, sigma)`` taking a per-sample (B,) sigma. They never know whether the score comes from a
closed-form density, a network, or a patch-stitched network over a whole volume.
``generator`` may be one ``torch.Generator`` or a sequence with one generator per sample, so that
sample i depends only on its own seed and not on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from volscore.noise import randn

Generators = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None]


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like x, drawn per sample when given one generator per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return randn(x.shape, generator, x.device, x.dtype)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack([randn(x.shape[1:], g, x.device, x.dtype) for g in generator])


def batch_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """sigma as a float32 (B,) tensor for a batch x."""
    return torch.full((x.shape[0],), float(sigma), device=x.device, dtype=torch.float32)


@torch.no_grad()
def langevin(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    step_size: float,
    n_steps: int,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Unadjusted Langevin dynamics, the lecture's update x <- x + gamma s(x) + sqrt(2 gamma) z."""
    for t in range(n_steps):
        x = x + step_size * score_fn(x) + (2 * step_size) ** 0.5 * randn_like(x, generator)
        if callback is not None:
            callback({"step": t, "x": x})
    return x


@torch.no_grad()
def annealed_langevin(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigmas: Tensor,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    denoise: bool = True,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Annealed Langevin dynamics (NCSN, Song and Ermon 2019, Algorithm 1).

    At level i, ``n_steps_each`` Langevin steps with alpha_i = step_lr * sigma_i^2 / sigma_L^2, so the
    signal-to-noise ratio of a step is the same at every level. ``denoise`` ends with the Tweedie step
    x + sigma_L^2 s(x, sigma_L) (NCSNv2), which removes the last level's noise.
    """
    sigma_last = float(sigmas[-1])
    for i, sigma in enumerate(sigmas.tolist()):
        sigma_b = batch_sigma(sigma, x)
        alpha = step_lr * (sigma / sigma_last) ** 2
        for _ in range(n_steps_each):
            x = x + alpha * score_fn(x, sigma_b) + (2 * alpha) ** 0.5 * randn_like(x, generator)
        if callback is not None:
            callback({"level": i, "sigma": sigma, "x": x})
    if denoise:
        x = x + sigma_last**2 * score_fn(x, batch_sigma(sigma_last, x))
    return x


@torch.no_grad()
def predictor_corrector(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigmas: Tensor,
    n_steps_each: int = 1,
    snr: float = 0.16,
    denoise: bool = True,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Predictor-corrector sampling of the variance-exploding SDE (Song et al. 2021, Algorithm 2).

    Corrector: ``n_steps_each`` Langevin steps with the snr rule eps = 2 (snr |z| / |s|)^2, norms averaged
    over the batch (so, unlike the annealed sampler, a sample depends on its batch).
    Predictor: reverse diffusion from sigma_i to sigma_{i+1},
    x <- x + (sigma_i^2 - sigma_{i+1}^2) s + sqrt(sigma_i^2 - sigma_{i+1}^2) z. After the last level the
    predictor to sigma = 0 without noise (``denoise``) is the Tweedie step x + sigma_L^2 s.
    """
    levels = sigmas.tolist()
    for i, sigma in enumerate(levels):
        sigma_b = batch_sigma(sigma, x)
        for _ in range(n_steps_each):
            s = score_fn(x, sigma_b)
            z = randn_like(x, generator)
            # Norms averaged over the batch as in score_sde: a per-sample |s| can be near zero in low
            # dimensions, and eps ~ 1 / |s|^2 then throws that sample far away.
            s_norm = s.flatten(1).float().norm(dim=1).mean()
            z_norm = z.flatten(1).float().norm(dim=1).mean()
            eps = float(2 * (snr * z_norm / s_norm.clamp_min(1e-12)) ** 2)
            x = x + eps * s + (2 * eps) ** 0.5 * z
        if i + 1 < len(levels):
            var = sigma**2 - levels[i + 1] ** 2
            x = x + var * score_fn(x, sigma_b) + var**0.5 * randn_like(x, generator)
        elif denoise:
            x = x + sigma**2 * score_fn(x, sigma_b)
        if callback is not None:
            callback({"level": i, "sigma": sigma, "x": x})
    return x
