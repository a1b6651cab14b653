"""Restoration of a whole volume with a patch prior: posterior draws over the stitched score, their mean and
per-voxel standard deviation, one draw at a time (memory bounded by the tile batch, as for sampling)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from volscore.denoise.estimators import autocast
from volscore.restore.operators import Operator
from volscore.restore.posterior import posterior_sample
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
    settings: SamplerSettings,
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
    """``n_samples`` draws from p(x | y) (``posterior_sample``) over a ``StitchedScore`` of ``model`` on the
    ``fine_shape`` grid, started at ``x_init`` (model units, ``fine_shape``) noised to sigmas[0], or at pure
    noise. Draw k is seeded by ``seed + k`` (its noise and its tile offsets), so draws are reproducible and
    independent. ``y``: the measurement (1, 1, *its shape) in model units."""
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

        draw = posterior_sample(
            score, operator, y, noise_sigma, sigmas, settings, sigma_data, shape, x_init=init,
            generator=torch.Generator().manual_seed(seed + k), callback=lambda _: bar.update(1),
        )  # fmt: skip
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
