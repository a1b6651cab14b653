"""Restoration of a whole volume with a patch prior: posterior draws over the stitched score, their mean and
per-voxel standard deviation, one draw at a time (memory bounded by the tile batch, as for sampling)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from volscore.amp import autocast
from volscore.restore.operators import Operator
from volscore.restore.posterior import PosteriorScore, posterior_sample, proximal_iterations
from volscore.sampling.settings import SamplerSettings
from volscore.sampling.stitch import PatchFn, StitchedScore


@dataclass
class Restored:
    """The mean of ``n_samples`` posterior draws, their per-voxel standard deviation (None for one draw:
    a single draw says nothing about its spread), network evaluations per draw and seconds in all."""

    mean: Tensor  # (*spatial) in model units
    std: Tensor | None
    n_samples: int
    nfe: int
    seconds: float


def restore_volume(
    model: PatchFn,
    operator: Operator,
    y: Tensor,
    x_init: Tensor | None,
    noise_sigma: float,
    sigmas: Tensor,
    method: str | SamplerSettings,
    sigma_data: float,
    patch_size: int | Sequence[int],
    coords: bool,
    fine_shape: Sequence[int],
    n_samples: int = 1,
    seed: int = 0,
    stitch: str = "shift",
    tile_batch: int = 8,
    amp: torch.dtype | None = None,
    progress: bool = True,
) -> Restored:
    """Restore ``y`` (1, 1, *its shape, model units) onto the ``fine_shape`` grid with a ``StitchedScore`` of
    ``model``: ``method`` "pnp" runs ``proximal_iterations`` from ``x_init``; a ``SamplerSettings`` draws
    ``n_samples`` times from p(x | y) with its sampler (``posterior_sample``), started at ``x_init`` noised to
    sigmas[0] (or at pure noise without one). Run k is seeded by ``seed + k`` (noise and tile offsets), so
    draws are reproducible and independent."""
    from tqdm.auto import tqdm

    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    t0 = time.perf_counter()
    shape = (1, 1, *fine_shape)
    init = None if x_init is None else x_init.reshape(shape).to(y)
    evaluations = [0]
    patch_fn = autocast(model, amp)
    total = torch.zeros(shape, dtype=torch.float64)
    total_sq = torch.zeros(shape, dtype=torch.float64)
    bar = tqdm(total=n_samples * len(sigmas), disable=not progress, desc="restore", unit="level")
    for k in range(n_samples):
        stitched = StitchedScore(
            patch_fn, patch_size, stitch=stitch, tile_batch=tile_batch, coords=coords,
            generator=torch.Generator().manual_seed(seed + k + 1_000_003), blend_offset=True,
        )  # fmt: skip

        def score(x: Tensor, sigma: Tensor, stitched: StitchedScore = stitched) -> Tensor:
            evaluations[0] += 1
            return stitched(x, sigma)

        if method == "pnp":
            if init is None:
                raise ValueError("pnp starts from an estimate: give x_init")
            posterior = PosteriorScore(score, operator, y, noise_sigma, sigma_data)
            draw = proximal_iterations(posterior, init, sigmas, callback=lambda _: bar.update(1))
        elif isinstance(method, SamplerSettings):
            draw = posterior_sample(
                score, operator, y, noise_sigma, sigmas, method, sigma_data, shape, x_init=init,
                generator=torch.Generator().manual_seed(seed + k), callback=lambda _: bar.update(1),
            )  # fmt: skip
        else:
            raise ValueError(f"method must be 'pnp' or SamplerSettings, got {method!r}")
        total += draw.double()
        total_sq += draw.double() ** 2
    bar.close()
    mean = total / n_samples
    std = None
    if n_samples > 1:
        std = ((total_sq - n_samples * mean**2).clamp_min(0) / (n_samples - 1)).sqrt().float()[0, 0]
    return Restored(
        mean=mean.float()[0, 0], std=std, n_samples=n_samples, nfe=evaluations[0] // n_samples,
        seconds=time.perf_counter() - t0,
    )  # fmt: skip
