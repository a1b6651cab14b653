"""Noise levels: sigma schedules, sigma sampling for training, and rank-agnostic broadcasting.

One source of truth for the sigmas used by the losses and the samplers (NCSN, NCSNv2, EDM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from volscore.config import SIGMA_DISTS


def append_dims(x: Tensor, target_ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-sample tensor of shape (B,) broadcasts against (B, ...).

    Unlike ``x[:, None, None, None]`` this is right for vectors, images and volumes alike.
    """
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_ndim is {target_ndim}")
    return x.reshape(*x.shape, *([1] * missing))


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise on ``device``, drawn on the generator's own device.

    Seeded streams come from CPU generators, so the same seed gives the same noise on a GPU run; drawing
    with a CPU generator directly on CUDA would fail.
    """
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def as_sigma_batch(sigma: float | Tensor, batch: int, device: torch.device | str | None = None) -> Tensor:
    """Return sigma as a float32 tensor of shape (batch,), from a float, a 0-d or a (batch,) tensor."""
    sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=device)
    if sigma_t.ndim == 0:
        return sigma_t.expand(batch).clone()
    if sigma_t.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or of shape ({batch},), got {tuple(sigma_t.shape)}")
    return sigma_t


def geometric_sigmas(sigma_max: float, sigma_min: float, num_sigmas: int) -> Tensor:
    """NCSN's geometric schedule sigma_1 > ... > sigma_L (float32, descending)."""
    if not (sigma_max > sigma_min > 0):
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max}, {sigma_min}")
    if num_sigmas < 2:
        raise ValueError(f"num_sigmas must be >= 2, got {num_sigmas}")
    return torch.exp(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), num_sigmas, dtype=torch.float64)
    ).float()


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's schedule (Karras et al. 2022, eq. 5): t_i = (sigma_max^(1/rho) + i / (N - 1)
    (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for i = 0 .. N - 1 (float32, descending, t_N = 0 implied).

    rho = 1 is uniform in sigma and rho -> infinity the geometric schedule; in between, a larger rho shortens
    the steps near sigma_min at the expense of those near sigma_max (EDM found rho = 7 best by measurement;
    rho = 3 would roughly equalise the local truncation error of the steps).
    """
    if not (sigma_max > sigma_min > 0):
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max}, {sigma_min}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact endpoints, not their float round trip
    return sigmas.float()


def sigma_max_from_data(x: Tensor, max_points: int = 2000, generator: torch.Generator | None = None) -> float:
    """NCSNv2 technique 1: sigma_1 about the largest Euclidean distance between training points.

    x has shape (N, ...); at most ``max_points`` points are drawn (without replacement) so the
    cost stays O(max_points^2 * d) and the memory O(max_points * d).
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least two data points to measure pairwise distances")
    flat = x.reshape(n, -1)
    if n > max_points:
        flat = flat[torch.randperm(n, generator=generator)[:max_points]]
    flat = flat.float()  # float32 distances of order sqrt(d) lose nothing that matters for sigma_max
    # Blocks of rows keep the peak at one (block, points) distance matrix plus the points themselves.
    return float(max(torch.cdist(block, flat).max() for block in flat.split(128)))


def _overlap(gamma: float, d: int) -> float:
    # NCSNv2 eq. (technique 2): mass of the sigma_i shell within 3 std of the sigma_{i-1} shell.
    phi = torch.distributions.Normal(0.0, 1.0).cdf
    a = math.sqrt(2 * d) * (gamma - 1)
    return float(phi(torch.tensor(a + 3 * gamma)) - phi(torch.tensor(a - 3 * gamma)))


def ncsnv2_gamma(d: int, target: float = 0.5) -> float:
    """NCSNv2 technique 2: the ratio gamma = sigma_{i-1} / sigma_i for data of dimension d.

    Solves Phi(sqrt(2d)(gamma - 1) + 3 gamma) - Phi(sqrt(2d)(gamma - 1) - 3 gamma) = target by bisection
    (the left side falls monotonically in gamma for gamma > 1).
    """
    lo, hi = 1.0 + 1e-9, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _overlap(mid, d) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def ncsnv2_num_sigmas(d: int, sigma_max: float, sigma_min: float, target: float = 0.5) -> int:
    """Number of geometric levels from sigma_max to sigma_min with NCSNv2's ratio for dimension d."""
    gamma = ncsnv2_gamma(d, target)
    return int(math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma))) + 1


def sample_training_sigmas(
    dist: str,
    batch: int,
    generator: torch.Generator | None,
    sigma_min: float,
    sigma_max: float,
    num_sigmas: int | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> Tensor:
    """Per-sample training sigmas (B,), float32 on the CPU (the generator's stream; move them after).

    - "loguniform": ln sigma uniform on [ln sigma_min, ln sigma_max], the geometric schedule made
      continuous, so any number of sampling levels is in distribution.
    - "geometric": one of the ``num_sigmas`` geometric levels, uniformly (NCSN's discrete training).
    - "lognormal": ln sigma ~ N(p_mean, p_std^2) clamped to [sigma_min, sigma_max] (EDM).
    """
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    if dist == "lognormal":
        z = torch.randn(batch, generator=generator)
        return torch.exp(p_mean + p_std * z).clamp(sigma_min, sigma_max)
    if dist == "geometric":
        if num_sigmas is None or num_sigmas < 2:
            raise ValueError(f"geometric sigmas need num_sigmas >= 2, got {num_sigmas}")
        idx = torch.randint(num_sigmas, (batch,), generator=generator)
        return torch.exp(lo + (hi - lo) * (1 - idx / (num_sigmas - 1))).float()
    if dist == "loguniform":
        u = torch.rand(batch, generator=generator)
        return torch.exp(lo + (hi - lo) * u)
    raise ValueError(f"sigma distribution must be one of {SIGMA_DISTS}, got {dist!r}")


def ncsnv2_step_lr(sigma_min: float, gamma: float, n_steps_each: int) -> float:
    """NCSNv2 technique 4: the annealed Langevin step_lr eps for the last level sigma_L = sigma_min.

    Chooses eps so that after T = n_steps_each steps at one level the chain's variance matches the
    level's (the ratio s_T^2 / sigma_i^2 of NCSNv2 Sec. 3.3 equals 1), with a = eps / sigma_L^2:
    (1 - a)^{2T} (gamma^2 - 2a / (1 - (1 - a)^2)) + 2a / (1 - (1 - a)^2) = 1.
    """

    def ratio(a: float) -> float:
        c = 2 * a / (1 - (1 - a) ** 2)
        return (1 - a) ** (2 * n_steps_each) * (gamma**2 - c) + c

    grid = torch.logspace(-8, -0.01, 4000, dtype=torch.float64).tolist()
    best = min(grid, key=lambda a: abs(ratio(a) - 1.0))
    return best * sigma_min**2
