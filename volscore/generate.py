"""Sampling from a trained run: images in batches, volumes of any size through the stitched score, and
``sample_run``, which writes a run's samples to files (grid PNG + NPY, NIfTI + montage, or a shape folder).

The sampler is any entry of the sampler table (``volscore.sampling.table``); for volumes its score function
is a ``StitchedScore`` over patches, so the chain is one global chain with one global noise draw per step.
Sample i uses its own generator (seed + i), so it does not depend on the batch size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from volscore.amp import autocast, inference_dtype
from volscore.options import SampleOptions
from volscore.outputs import OutputError, check_outputs
from volscore.run import Run, run_files
from volscore.sampling.langevin import randn_like
from volscore.sampling.settings import SamplerSettings
from volscore.sampling.table import run_sampler, sampling_sigmas

IMAGE_BATCH = 64  # whole images or shapes sampled at once
# Stitched volumes sampled in one chain. One: on the 2-core CPU two volumes per call cost 1.0-1.2x per voxel
# (scripts/bench_sampling.py); larger batches may pay on GPUs (unmeasured).
VOLUME_BATCH = 1
# What a chain holds, for the memory estimate (float32): SAMPLE_COPIES sample-sized tensors (x, score, noise,
# the previous step, the stitcher's sums and weights), and per batch item ACTIVATION_COPIES feature maps of
# the network's first level for each of its channels.
SAMPLE_COPIES = 8
ACTIVATION_COPIES = 4


def sample_memory_bytes(
    run: Run, n: int, size: Sequence[int], tile_batch: int = 8, volume_batch: int = VOLUME_BATCH
) -> int:
    """About how much memory sampling ``n`` samples of spatial ``size`` from ``run`` holds at its peak
    (volumes: ``volume_batch`` of them in one chain)."""
    voxels = run.channels * math.prod(size)
    width = int(run.model_args["net"].get("channels", [1])[0])
    if run.patch_size is None:  # whole samples, IMAGE_BATCH at a time; every sample is kept
        return 4 * voxels * (n + min(n, IMAGE_BATCH) * (SAMPLE_COPIES + ACTIVATION_COPIES * width))
    tiles = tile_batch * run.patch_size ** len(size) * ACTIVATION_COPIES * width
    return 4 * (voxels * (n + min(n, volume_batch) * SAMPLE_COPIES) + tiles)


def check_sample_memory(
    run: Run, n: int, size: Sequence[int], tile_batch: int = 8, volume_batch: int = VOLUME_BATCH
) -> None:
    """Refuse, with the estimate, a request that cannot fit in the memory available now."""
    from volscore.machine import available_memory_bytes

    need = sample_memory_bytes(run, n, size, tile_batch, volume_batch)
    available = available_memory_bytes()
    if available is not None and need > available:
        many, voxels = f" x {n} samples" if n > 1 else "", " x ".join(map(str, [run.channels, *size]))
        raise ValueError(
            f"--shape {' '.join(map(str, size))}{many}: sampling needs about {need / 2**30:.1f} GiB of "
            f"memory ({SAMPLE_COPIES} float32 copies of {voxels} voxels and more), "
            f"{available / 2**30:.1f} GiB available; ask for a smaller --shape or fewer --n"
        )


def run_sigmas(run: Run, settings: SamplerSettings) -> Tensor:
    """The sampling levels for ``run``: ``settings``' own range and steps where given, else the run's."""
    settings = settings.for_kind(run.kind)
    sigma_min, sigma_max = run.sigma_range
    return sampling_sigmas(settings, sigma_min, sigma_max, run.num_sigmas)


def sample_images(
    model: Callable[..., Tensor],
    n: int,
    shape: Sequence[int],
    settings: SamplerSettings,
    sigmas: Tensor,
    seed: int = 0,
    batch_size: int = IMAGE_BATCH,
    progress: bool = True,
) -> Tensor:
    """n samples of ``shape`` (C, *spatial) from a score model ``model(x, sigma)``, in batches."""
    from tqdm.auto import tqdm

    out = []
    bar = tqdm(total=n * len(sigmas), disable=not progress, desc="sample", unit="img-level")
    for start in range(0, n, batch_size):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, min(n, start + batch_size))]
        x = float(sigmas[0]) * randn_like(torch.empty(len(gens), *shape), gens)
        k = len(gens)
        x = run_sampler(settings, model, x, sigmas, generator=gens, callback=lambda _: bar.update(k))  # noqa: B023
        out.append(x)
    bar.close()
    return torch.cat(out)


def sample_volumes(
    model: Callable[..., Tensor],
    n: int,
    shape: Sequence[int],
    patch_size: int,
    coords: bool,
    settings: SamplerSettings,
    sigmas: Tensor,
    seed: int = 0,
    stitch: str = "shift",
    tile_batch: int = 8,
    channels: int = 1,
    progress: bool = True,
) -> Tensor:
    """``n`` volumes of any ``shape`` (D, H, W) in one chain with the patch-stitched score: (n, C, D, H, W).

    Volume i draws its noise from seed + i; the tile offsets come from seed + 1 and are shared by the n
    volumes, so their tiles have the same shapes and go through the network together (bigger batches; on
    the 2-core CPU no faster per voxel: README, sampling speed). With n = 1 this is one volume's chain, and
    volume 0 of a joint chain is that volume.
    """
    from tqdm.auto import tqdm

    from volscore.sampling.stitch import StitchedScore

    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    stitched = StitchedScore(
        model,
        patch_size,
        stitch=stitch,
        tile_batch=tile_batch,
        coords=coords,
        generator=torch.Generator().manual_seed(seed + 1),
        blend_offset=True,  # a chain: move the blend windows at every step, as shift moves its grid
    )
    x = float(sigmas[0]) * randn_like(torch.empty(n, channels, *shape), gens)
    bar = tqdm(total=len(sigmas), disable=not progress, desc="sample", unit="level")
    last = [time.monotonic()]

    def on_level(info: dict) -> None:
        now = time.monotonic()
        bar.set_postfix(sigma=f"{info['sigma']:.3g}", s_per_level=f"{now - last[0]:.1f}")
        last[0] = now
        bar.update(1)

    x = run_sampler(settings, stitched, x, sigmas, generator=gens, callback=on_level)
    bar.close()
    return x


def sample_run_tensor(
    run: Run, settings: SamplerSettings, n: int = 1, shape: Sequence[int] | None = None, seed: int = 0,
    stitch: str = "shift", tile_batch: int = 8, progress: bool = True, amp: torch.dtype | None = None,
    volume_batch: int = VOLUME_BATCH,
) -> Tensor:  # fmt: skip
    """``n`` samples of a run in model units, (n, C, *spatial): whole images or shapes in batches, or
    stitched volumes (one seed each), ``volume_batch`` at a time in one chain (``sample_volumes``), for a
    patch model. ``amp``: the network under autocast to this dtype (``volscore.amp.autocast``; the sampler's
    arithmetic stays float32)."""
    from tqdm.auto import tqdm

    settings.validate()
    settings = settings.for_kind(run.kind)  # "auto": the measured best sampler for this kind of run
    size = list(shape) if shape else run.sample_shape
    if len(size) != run.spatial_dims or any(s < 1 for s in size):
        raise ValueError(f"shape must be {run.spatial_dims} positive sizes, got {size}")
    if volume_batch < 1:
        raise ValueError(f"volume_batch must be >= 1, got {volume_batch}")
    check_sample_memory(run, n, size, tile_batch, volume_batch)
    sigmas = run_sigmas(run, settings)
    model = autocast(run.model, amp)
    if run.patch_size is None:  # a model of whole samples
        return sample_images(model, n, (run.channels, *size), settings, sigmas, seed=seed, progress=progress)
    one = progress and n == 1  # one volume: a bar per level; several: a bar per chain
    starts = range(0, n, volume_batch)
    vols = [
        sample_volumes(model, min(volume_batch, n - i), size, run.patch_size, run.coords, settings,
                       sigmas, seed=seed + i, stitch=stitch, tile_batch=tile_batch, channels=run.channels,
                       progress=one)
        for i in tqdm(starts, desc="volumes", unit="chain", disable=not progress or n == 1)
    ]  # fmt: skip
    return torch.cat(vols)


def _outputs(run: Run, out: Path, options: SampleOptions) -> dict[str, Path]:
    """The files ``sample_run`` will write, by role, so that all of them are checked before sampling."""
    if run.kind == "shapes":
        if out.suffix in (".png", ".gz", ".nii", ".npy") or (out.exists() and not out.is_dir()):
            raise OutputError(f"{out}: a shape run samples into a folder (e.g. --out shapes/), not a file")
        n = options.count(run.kind)
        files = {f"shape_{i:03d}": out / f"shape_{i:03d}.nii.gz" for i in range(n)}
        files |= {"npy": out / "samples.npy", "png": out / "shapes.png"}
        if options.mesh:
            files |= {f"mesh_{i:03d}": out / f"shape_{i:03d}.obj" for i in range(n)}
        return files
    if run.spatial_dims == 2:
        png = out if out.suffix == ".png" else out.with_suffix(".png")
        return {"png": png, "npy": png.with_suffix(".npy")}
    nii = out if out.name.endswith((".nii", ".nii.gz")) else out.with_suffix(".nii.gz")
    stem, suffix = nii.name.split(".")[0], nii.name[len(nii.name.split(".")[0]) :]
    n = options.count(run.kind)
    if n == 1:
        return {"nii": nii, "png": nii.with_name(stem + ".png")}
    # several volumes: OUT_000.nii.gz, OUT_000.png, ...
    names = {f"{i:03d}": f"{stem}_{i:03d}" for i in range(n)}
    files = {f"nii_{k}": nii.with_name(name + suffix) for k, name in names.items()}
    return files | {f"png_{k}": nii.with_name(name + ".png") for k, name in names.items()}


def sample_run(run: Run, options: SampleOptions, settings: SamplerSettings) -> dict[str, Any]:
    """Sample ``run`` to files as ``options`` says; return a record (files, seconds, NFE per sample)."""
    options.validate()
    settings.validate()
    settings = settings.for_kind(run.kind)
    out = Path(options.out).expanduser()
    files = _outputs(run, out, options)
    check_outputs(files.values(), inputs=run_files(run.name), force=options.force)  # before any work
    if options.mesh:
        from volscore.mesh import require_mesh_support

        require_mesh_support()
    t0 = time.monotonic()
    n = options.count(run.kind)
    x = sample_run_tensor(
        run, settings, n, options.shape, options.seed, options.stitch, options.tile_batch,
        amp=inference_dtype(options.amp), volume_batch=options.volume_batch,
    )  # fmt: skip
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise FloatingPointError(
            f"{run.name}: the sampler produced {bad} non-finite values (nothing written); "
            "try fewer --steps of a smaller size, another --sampler, or check the checkpoint"
        )
    seconds = time.monotonic() - t0
    from volscore.plots import save_image_grid, save_montage

    no_surface: list[str] = []
    if run.kind == "shapes":
        no_surface = _write_shapes(x, out, files, options.mesh)
    elif run.spatial_dims == 2:
        save_image_grid(x.clamp(0, 1), files["png"], nrow=int(np.ceil(np.sqrt(n))))
        write_npy(files["npy"], x.numpy())
    else:
        from volscore.data.nifti import save_nifti

        scaler = run.scaler()
        for i in range(n):
            key = "" if n == 1 else f"_{i:03d}"
            vol = x[i, 0].numpy()
            save_nifti(files[f"nii{key}"], (scaler.inverse(vol) if scaler else vol).astype(np.float32),
                       np.diag([*run.zooms, 1.0]))  # fmt: skip
            # NIfTI arrays are (x, y, z): slicing x gives a sagittal view.
            save_montage(vol.clip(0, 1), files[f"png{key}"], axis_names=("sagittal", "coronal", "axial"))
    levels = len(run_sigmas(run, settings))
    return {
        "run": run.name,
        "files": {k: str(v) for k, v in files.items() if v.exists()},
        "n": n,
        "shape": list(x.shape[2:]),
        "sampler": settings.sampler,
        "levels": levels,
        "nfe": settings.network_evaluations(levels),
        "amp": options.amp,
        "volume_batch": options.volume_batch if run.kind == "nifti" else None,
        "seconds": round(seconds, 2),
        "no_surface": no_surface,
    }


def _write_shapes(x: Tensor, out: Path, files: dict[str, Path], mesh: bool) -> list[str]:
    """Write the shape folder; return the shapes without a surface at 0.5 (no mesh written for them)."""
    from volscore.data.nifti import save_nifti
    from volscore.plots import save_shape_sheet

    occupancy = x.clamp(0, 1).numpy().astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(occupancy):
        save_nifti(files[f"shape_{i:03d}"], v[0])
    write_npy(files["npy"], occupancy)
    save_shape_sheet(occupancy, files["png"], nrow=int(np.ceil(np.sqrt(len(occupancy)))))
    empty = []
    if mesh:
        from volscore.mesh import marching_cubes, save_obj

        for i, v in enumerate(occupancy):
            try:
                save_obj(files[f"mesh_{i:03d}"], *marching_cubes(v[0]))
            except ValueError:  # no surface at 0.5: nothing to mesh
                empty.append(f"shape_{i:03d}")
    return empty


def write_npy(path: Path, array: np.ndarray) -> None:
    from volscore.atomic import atomic_write

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def describe_record(record: dict[str, Any]) -> str:
    """One line for the CLI: what was written, how, in how long."""
    names = ", ".join(v for k, v in record["files"].items() if not k.startswith(("shape_", "mesh_")))
    extra = " (+ shape_*.nii.gz)" if any(k.startswith("shape_") for k in record["files"]) else ""
    text = (
        f"{record['n']} sample(s) {tuple(record['shape'])} in {record['seconds']:.0f} s with "
        f"{record['sampler']} ({record['levels']} levels, {record['nfe']} network evaluations each): "
        f"{names}{extra}"
    )
    if record["no_surface"]:
        text += f"\nno surface (no mesh written): {', '.join(record['no_surface'])}"
    return text
