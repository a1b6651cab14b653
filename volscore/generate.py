"""Sampling from a trained run: images in batches, and volumes of any size through the stitched score.

The sampler is the plain annealed Langevin (or predictor-corrector) function; for volumes its score
function is a ``StitchedScore`` over patches, so the chain is one global chain with one global noise
draw per step. Sample i uses its own generator (seed + i), so it does not depend on the batch size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from volscore.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from volscore.noise import geometric_sigmas, ncsnv2_step_lr
from volscore.sampling.langevin import annealed_langevin, predictor_corrector, randn_like

SAMPLERS = ("annealed", "pc")


def load_run(run: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> tuple[Any, dict]:
    """The (EMA) model of a run directory in eval mode, and the checkpoint's state dict."""
    from volscore.nets import build_model_from_args

    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"{run}: no run directory here (train one with `volscore train --out {run}`)")
    state = load_checkpoint(run / CHECKPOINT_NAME, map_location=device)
    model = build_model_from_args(state["model_args"])
    weights = state["model"]
    if use_ema and "ema" in state:
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"{run / CHECKPOINT_NAME}: weights do not fit the stored model arguments: {e}"
        ) from e
    return model.to(device).eval().requires_grad_(False), state


def sampling_schedule(
    config: dict[str, Any], num_sigmas: int | None = None, n_steps_each: int = 5, step_lr: float | None = None
) -> tuple[Tensor, float]:
    """The run's geometric sigmas (optionally re-spaced) and NCSNv2's step_lr (technique 4) for them."""
    n = num_sigmas or int(config["num_sigmas"])
    sigmas = geometric_sigmas(float(config["sigma_max"]), float(config["sigma_min"]), n)
    if step_lr is None:
        gamma = (float(config["sigma_max"]) / float(config["sigma_min"])) ** (1 / (n - 1))
        step_lr = ncsnv2_step_lr(float(config["sigma_min"]), gamma, n_steps_each)
    return sigmas, step_lr


def _run_sampler(
    name: str,
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigmas: Tensor,
    n_steps_each: int,
    step_lr: float,
    generators: Sequence[torch.Generator],
    callback: Callable[[dict], None] | None,
) -> Tensor:
    if name == "annealed":
        return annealed_langevin(score_fn, x, sigmas, n_steps_each, step_lr, True, generators, callback)
    if name == "pc":
        return predictor_corrector(score_fn, x, sigmas, n_steps_each, 0.16, True, generators, callback)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


def sample_images(
    model: Callable[..., Tensor],
    n: int,
    shape: Sequence[int],
    sigmas: Tensor,
    n_steps_each: int,
    step_lr: float,
    seed: int = 0,
    batch_size: int = 64,
    sampler: str = "annealed",
    progress: bool = True,
) -> Tensor:
    """n samples of ``shape`` (C, H, W) from a score model ``model(x, sigma)``, in batches."""
    from tqdm.auto import tqdm

    out = []
    bar = tqdm(total=n * len(sigmas), disable=not progress, desc="sample", unit="img-level")
    for start in range(0, n, batch_size):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, min(n, start + batch_size))]
        x = float(sigmas[0]) * randn_like(torch.empty(len(gens), *shape), gens)
        k = len(gens)
        x = _run_sampler(sampler, model, x, sigmas, n_steps_each, step_lr, gens, lambda _: bar.update(k))  # noqa: B023
        out.append(x)
    bar.close()
    return torch.cat(out)


def sample_volume(
    model: Callable[..., Tensor],
    shape: Sequence[int],
    patch_size: int,
    coords: bool,
    sigmas: Tensor,
    n_steps_each: int,
    step_lr: float,
    seed: int = 0,
    stitch: str = "shift",
    tile_batch: int = 8,
    sampler: str = "annealed",
    channels: int = 1,
    progress: bool = True,
) -> Tensor:
    """One volume of any ``shape`` (D, H, W) with the patch-stitched score; returns (C, D, H, W)."""
    from tqdm.auto import tqdm

    from volscore.sampling.stitch import StitchedScore

    gen = torch.Generator().manual_seed(seed)
    stitched = StitchedScore(
        model,
        patch_size,
        mode=stitch,
        tile_batch=tile_batch,
        coords=coords,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    x = float(sigmas[0]) * randn_like(torch.empty(1, channels, *shape), gen)
    bar = tqdm(total=len(sigmas), disable=not progress, desc="sample", unit="level")
    last = [time.monotonic()]

    def on_level(info: dict) -> None:
        now = time.monotonic()
        bar.set_postfix(sigma=f"{info['sigma']:.3g}", s_per_level=f"{now - last[0]:.1f}")
        last[0] = now
        bar.update(1)

    x = _run_sampler(sampler, stitched, x, sigmas, n_steps_each, step_lr, gen, on_level)
    bar.close()
    return x[0]
