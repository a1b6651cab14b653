"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), the multistep second-order solver of the probability-flow
ODE written in the data prediction D(x, sigma), in the form of k-diffusion's ``sample_dpmpp_2m``.

With lambda = -log sigma (the VE process's half log-SNR up to a constant) and h = lambda_{i+1} - lambda_i:
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h) D_i',
    D_i' = (1 + 1 / (2 r)) D_i - 1 / (2 r) D_{i-1},  r = h_{i-1} / h_i,
first step and last step (to sigma = 0) first order (D_i' = D_i). One network evaluation per level: N
levels cost N evaluations. Same signature family as the other samplers; D = x + sigma^2 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from volscore.sampling.langevin import Callback, Generators, batch_sigma

ScoreFn = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def dpm_solver_2m(
    score_fn: ScoreFn,
    x: Tensor,
    sigmas: Tensor,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Deterministic DPM-Solver++(2M) from x ~ N(0, sigmas[0]^2 I) to sigma = 0 (``generator`` unused)."""
    levels = [float(s) for s in sigmas] + [0.0]
    denoised_prev: Tensor | None = None
    h_prev = 0.0
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        denoised = x + sigma**2 * score_fn(x, batch_sigma(sigma, x))
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            d = denoised
            if denoised_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * denoised_prev
            x = (sigma_next / sigma) * x - math.expm1(-h) * d
            h_prev = h
        denoised_prev = denoised
        if callback is not None:
            callback({"level": i, "sigma": sigma, "x": x})
    return x
