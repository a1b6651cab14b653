"""EDM's samplers (Karras et al. 2022): deterministic 2nd-order Heun (Algorithm 1) and the stochastic
sampler with churn (Algorithm 2), on the probability-flow ODE of the variance-exploding process,
dx / dsigma = (x - D(x, sigma)) / sigma = -sigma s(x, sigma).

Same signature family as the Langevin samplers: ``sampler(score_fn, x, sigmas, ..., generator, callback)``
with ``score_fn(x, sigma (B,))``, so a ``StitchedScore`` over a whole volume works unchanged (one global
step per evaluation; the stitcher draws a new grid offset at every call). ``sigmas`` are the descending
levels (e.g. ``noise.karras_sigmas``); the last step goes from sigmas[-1] to 0 (Euler, as in EDM), so N
levels cost 2 N - 1 network evaluations. D is recovered from the score as D = x + sigma^2 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from volscore.sampling.langevin import Callback, Generators, batch_sigma, randn_like

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _slope(score_fn: ScoreFn, x: Tensor, sigma: float) -> Tensor:
    """dx / dsigma = -sigma s(x, sigma) of the probability-flow ODE."""
    return -sigma * score_fn(x, batch_sigma(sigma, x))


def _heun_step(score_fn: ScoreFn, x: Tensor, d: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One step sigma -> sigma_next with slope d at (x, sigma); 2nd-order correction unless sigma_next = 0."""
    x_next = x + (sigma_next - sigma) * d
    if sigma_next > 0:
        d_next = _slope(score_fn, x_next, sigma_next)
        x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
    return x_next


@torch.no_grad()
def heun_sampler(
    score_fn: ScoreFn,
    x: Tensor,
    sigmas: Tensor,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """EDM Algorithm 1: deterministic Heun steps from x ~ N(0, sigmas[0]^2 I) down to sigma = 0.

    ``generator`` is unused (the sampler is deterministic given x) and accepted for the common signature.
    """
    levels = [float(s) for s in sigmas] + [0.0]
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        x = _heun_step(score_fn, x, _slope(score_fn, x, sigma), sigma, sigma_next)
        if callback is not None:
            callback({"level": i, "sigma": sigma, "x": x})
    return x


@torch.no_grad()
def edm_sampler(
    score_fn: ScoreFn,
    x: Tensor,
    sigmas: Tensor,
    s_churn: float = 40.0,
    s_tmin: float = 0.05,
    s_tmax: float = 50.0,
    s_noise: float = 1.003,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """EDM Algorithm 2: before each Heun step, add noise that raises sigma_i to (1 + gamma) sigma_i, with
    gamma = min(S_churn / N, sqrt(2) - 1) for sigma_i in [S_tmin, S_tmax] (else 0).

    The churn is Langevin-like: it lets the chain correct errors of earlier steps instead of carrying them,
    which EDM found to help on harder data. S_churn = 0 is ``heun_sampler``. Defaults: EDM's ImageNet-64
    settings (S_churn 40, S_tmin 0.05, S_tmax 50, S_noise 1.003).
    """
    levels = [float(s) for s in sigmas] + [0.0]
    n = len(levels) - 1
    gamma_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * randn_like(x, generator)
        x = _heun_step(score_fn, x, _slope(score_fn, x, sigma_hat), sigma_hat, sigma_next)
        if callback is not None:
            callback({"level": i, "sigma": sigma, "x": x})
    return x
