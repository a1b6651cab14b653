"""Tests for volscore.restore.estimate: posterior draws over the stitched score give the posterior's mean and
per-voxel sd. With independent N(MU, SD^2) voxels and a noise-free mask, the hole's voxels are N(MU, SD^2)
a posteriori and the known ones are fixed: the mean of n draws must be MU within 4.5 standard errors, the
variance map SD^2 within 5 standard errors of a sample variance (SD^2 sqrt(2 / (n - 1)) per voxel,
averaged over the hole's independent voxels), and 0 on known voxels; pnp is deterministic."""

from __future__ import annotations

import math

import torch

from volscore.noise import geometric_sigmas, karras_sigmas
from volscore.restore.estimate import restore_volume
from volscore.restore.operators import Mask
from volscore.sampling.settings import SamplerSettings

MU, SD, N = 0.5, 0.2, 200


def prior(x: torch.Tensor, sigma: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
    return (MU - x) / (SD**2 + sigma.reshape(-1, 1, 1, 1, 1) ** 2)


def _known() -> torch.Tensor:
    known = torch.ones(8, 8, 8, dtype=torch.bool)
    known[2:6, 2:6, 3:5] = False
    return known


def test_draws_give_the_posterior_mean_and_sd() -> None:
    known = _known()
    y = torch.where(known, torch.full((8, 8, 8), 0.9), torch.zeros(()))[None, None]
    out = restore_volume(
        prior, Mask(known), y, None, 0.0, karras_sigmas(20, 0.002, 20.0),
        SamplerSettings(sampler="heun", steps=20), SD, 16, False, (8, 8, 8), n_samples=N, progress=False,
    )  # fmt: skip
    hole = ~known
    assert out.n_samples == N and out.nfe == 39 and out.std is not None
    assert torch.equal(out.mean[known], y[0, 0][known]) and (out.std[known] == 0).all()
    assert (out.mean[hole] - MU).abs().max() < 4.5 * SD / math.sqrt(N)
    var = out.std[hole].double() ** 2
    se = SD**2 * math.sqrt(2 / (N - 1)) / math.sqrt(hole.sum().item())
    assert abs(var.mean().item() - SD**2) < 5 * se, var.mean().item()


def test_pnp_is_deterministic_and_needs_a_start() -> None:
    known = _known()
    y = torch.where(known, torch.full((8, 8, 8), 0.9), torch.zeros(()))[None, None]
    args = (
        prior,
        Mask(known),
        y,
        torch.full((8, 8, 8), 0.7),
        0.0,
        geometric_sigmas(0.1, 0.01, 5),
        "pnp",
        SD,
        16,
    )
    a = restore_volume(*args, False, (8, 8, 8), seed=0, progress=False)
    b = restore_volume(*args, False, (8, 8, 8), seed=5, progress=False)
    assert torch.equal(a.mean, b.mean) and a.std is None and a.nfe == 5
    try:
        restore_volume(prior, Mask(known), y, None, 0.0, geometric_sigmas(0.1, 0.01, 5), "pnp", SD, 16, False,
                       (8, 8, 8), progress=False)  # fmt: skip
    except ValueError as exc:
        assert "x_init" in str(exc)
    else:
        raise AssertionError("pnp without a start was accepted")
