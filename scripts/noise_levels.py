"""NCSNv2's techniques 1, 2 and 4 worked out for MNIST and for 3D patches of the bundled MNI template.

    .venv/bin/python scripts/noise_levels.py

Technique 1: sigma_max = the largest distance between training samples (here 1000 random training
patches, foreground-weighted as in training, template scaled to [0, 1] by robust percentiles).
Technique 2: the ratio gamma = sigma_{i-1} / sigma_i that keeps neighbouring noise shells overlapping
for dimension d, and the number of levels L from sigma_max down to sigma_min = 0.01.
Technique 4: the step size for T = 5 Langevin steps per level.
"""

from __future__ import annotations

import math

import torch

from volscore.data.sources import open_source
from volscore.noise import ncsnv2_gamma, ncsnv2_num_sigmas, ncsnv2_step_lr, sigma_max_from_data


def row(name: str, source, n: int = 1000) -> str:
    g = torch.Generator().manual_seed(0)
    x, _ = source.sample(n, g)
    d = math.prod(source.sample_shape)
    smax = sigma_max_from_data(x, max_points=n, generator=g)
    gamma = ncsnv2_gamma(d)
    levels = ncsnv2_num_sigmas(d, smax, 0.01)
    eps = ncsnv2_step_lr(0.01, gamma, 5)
    return f"| {name} | {d:,} | {smax:.1f} | {math.sqrt(d):.0f} | {gamma:.4f} | {levels:,} | {eps:.2e} |"


def main() -> None:
    print(
        "| data | d | sigma_max (technique 1) | sqrt(d) | gamma (technique 2) | levels to 0.01 "
        "| step_lr, T=5 (technique 4) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(row("MNIST 28x28", open_source("mnist")))
    for p in (16, 32, 64):
        print(row(f"MNI template, {p}^3 patch (1 mm)", open_source("mni152", patch_size=p, coords=False)))


if __name__ == "__main__":
    main()
