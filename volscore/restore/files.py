"""NIfTI in, NIfTI out: ``restore_file`` super-resolves a thick-slice scan or fills in a masked region with a
trained prior (refusals first, intensity scaling, measurement noise, the operator, the restoration, the
self-check against the classical estimate, atomic writes, a JSON-able record)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from volscore.amp import inference_dtype
from volscore.data.nifti import Volume, VolumeError, check_volume_output, load_volume, save_volume
from volscore.data.sources import voxel_sizes
from volscore.denoise.background import foreground_mask
from volscore.denoise.files import choose_scaler
from volscore.denoise.noise_level import estimate_sigma
from volscore.denoise.spacing import trained_zooms
from volscore.options import RestoreOptions
from volscore.outputs import check_outputs
from volscore.restore.estimate import restore_volume
from volscore.restore.geometry import (
    fill_missing,
    fine_affine,
    interpolate_slices,
    slice_factor,
    thick_axis,
)
from volscore.restore.operators import Mask, SliceProfile
from volscore.run import Run, run_files
from volscore.sampling.settings import SamplerSettings

PathLike = str | os.PathLike


def default_std_path(output: PathLike) -> Path:
    """OUTPUT's name with _std before the NIfTI suffix: where --n-samples > 1 writes the sd map."""
    out = Path(output)
    stem, suffix = (out.name[:-7], ".nii.gz") if out.name.lower().endswith(".nii.gz") else (out.stem, ".nii")
    return out.with_name(f"{stem}_std{suffix}")


def _noise(
    src: Path, data: np.ndarray, known: np.ndarray | None, options: RestoreOptions, warnings: list[str]
):
    """The measurement's noise sd in input units and where it came from."""
    if options.noise_value is not None:
        return options.noise_value, "given"
    head = foreground_mask(data)
    region = head if known is None else head & known
    try:
        return estimate_sigma(data, mask=region), "haar-hhh-mad-foreground"
    except ValueError:
        try:
            return estimate_sigma(data), "haar-hhh-mad"
        except ValueError as exc:
            warnings.append(f"{src}: no noise estimate ({exc}); the measurement is taken as noise-free")
            return 0.0, "none"


def _mask(path: Path, volume: Volume, options: RestoreOptions) -> np.ndarray:
    """The voxels to fill in (bool), checked against the input's grid."""
    mask = load_volume(path, None)
    if mask.shape != volume.shape:
        raise VolumeError(f"{path}: mask shape {mask.shape} differs from the input's {volume.shape}")
    if not np.allclose(mask.affine, volume.affine, atol=1e-3):
        raise VolumeError(f"{path}: the mask's affine differs from the input's (another grid)")
    missing = mask.data != 0
    if not missing.any():
        raise VolumeError(f"{path}: the mask marks no voxel to fill in (all zero)")
    if missing.all():
        raise VolumeError(f"{path}: the mask marks every voxel: nothing is known to restore from")
    return missing


def _superres_geometry(volume: Volume, options: RestoreOptions) -> tuple[int, int]:
    zooms = voxel_sizes(volume.affine)
    axis = thick_axis(zooms) if options.slice_axis == "auto" else int(options.slice_axis)
    factor = slice_factor(zooms, axis) if options.factor == "auto" else int(options.factor)
    if volume.shape[axis] < 2:
        raise VolumeError(f"{volume.path}: one slice along axis {axis}: nothing to interpolate between")
    return axis, factor


def restore_file(
    input: PathLike,
    output: PathLike,
    options: RestoreOptions,
    run: Run | None = None,
    force: bool = False,
    std_out: PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Restore one NIfTI scan into ``output``; return a JSON-able record.

    ``superres``: the thick axis and the factor from the header (or given); the output has factor x the
    slices along that axis and ``fine_affine`` (same world coordinates and extent). ``inpaint``: voxels where
    ``options.mask`` is nonzero are filled in; every other voxel of the output is the input's, bit for bit.
    The prior works in its training units (``choose_scaler``), from the classical estimate (cubic B-spline
    between the slices, or the biharmonic fill), with ``options.method``. ``n_samples`` > 1: OUTPUT is the
    mean of the draws and ``std_out`` (default OUTPUT_std.nii.gz) their per-voxel sd in input units.
    Never over the input, the mask or the run's files, nor over an existing output without ``force``; all
    refused before any work.
    """
    t0 = time.perf_counter()
    options.validate()
    src, dst = Path(input).expanduser(), Path(output).expanduser()
    mask_path = None if options.mask is None else Path(options.mask).expanduser()
    inputs = [src] + ([mask_path] if mask_path else []) + run_files(options.run)
    std_path = None
    if options.n_samples > 1:
        std_path = Path(std_out).expanduser() if std_out is not None else default_std_path(dst)
    for out in [dst] + ([std_path] if std_path else []):
        check_volume_output(out, inputs=inputs, force=force)
    check_outputs([dst] + ([std_path] if std_path else []), inputs=inputs, force=force)
    warnings: list[str] = []

    volume = load_volume(src, options.volume_index)
    data = volume.data
    missing = None if mask_path is None else _mask(mask_path, volume, options)
    if options.task == "superres":
        axis, factor = _superres_geometry(volume, options)
    run = run if run is not None else Run.load(options.run, device=options.device)
    if run.spatial_dims != 3:
        raise ValueError(f"run {run.name}: a {run.spatial_dims}D model cannot restore volumes")
    known = None if missing is None else ~missing
    sigma_in, sigma_source = _noise(src, data, known, options, warnings)
    trained = run.data.get("scalers")
    try:
        scaler, scaler_source = choose_scaler(
            data if known is None else data[known], trained[0] if trained else None
        )
    except ValueError as exc:
        raise VolumeError(f"{src}: {exc}") from exc
    x = np.asarray(scaler.forward(data), dtype=np.float32)
    span = scaler.hi - scaler.lo
    noise_model = sigma_in / span

    if options.task == "superres":
        n_fine = volume.shape[axis] * factor
        operator = SliceProfile(n_fine, axis, factor, options.profile)
        init = interpolate_slices(x, axis, factor, order=3)
        y = torch.from_numpy(x)[None, None]
        fine_shape = list(volume.shape)
        fine_shape[axis] = n_fine
        affine = fine_affine(volume.affine, axis, factor)
        zooms = voxel_sizes(affine)
    else:
        assert known is not None
        operator = Mask(torch.from_numpy(known))
        init = fill_missing(x, known)
        y = torch.from_numpy(np.where(known, x, 0).astype(np.float32))[None, None]
        fine_shape, affine, zooms = list(volume.shape), volume.affine, voxel_sizes(volume.affine)
    sizes = sorted({min(t) for t in trained_zooms(run)})
    if sizes and min(abs(np.log(min(zooms) / z)) for z in sizes) > np.log(1.5):
        warnings.append(
            f"the output's voxel size {min(zooms):.3g} mm is far from the prior's training sizes {sizes} mm: "
            "its patches show anatomy at another scale"
        )

    steps, hi, lo = options.levels()
    method = options.method
    if method == "pnp":
        from volscore.noise import geometric_sigmas

        sigmas = geometric_sigmas(hi, lo, steps) if steps > 1 else torch.tensor([hi])
        how: str | SamplerSettings = "pnp"
    else:  # the sampler table's own levels: EDM's rho-schedule or geometric, by sampler
        from volscore.sampling.table import sampling_sigmas

        how = SamplerSettings(sampler=method, steps=steps, sigma_max=hi, sigma_min=lo)
        sigmas = sampling_sigmas(how, lo, hi, steps)
    amp = inference_dtype(options.amp)
    t = time.perf_counter()
    restored = restore_volume(
        run.model, operator, y.to(options.device), torch.from_numpy(init).to(options.device), noise_model,
        sigmas, how, run.model.sigma_data, run.patch_size or run.sample_shape[0], run.coords, fine_shape,
        n_samples=options.n_samples, seed=options.seed, tile_batch=options.tile_batch, amp=amp,
        progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - t
    est = restored.mean.cpu().numpy()
    out = np.asarray(scaler.inverse(est), dtype=np.float32)
    baseline = np.asarray(scaler.inverse(init), dtype=np.float32)
    if known is not None:
        out = np.where(known, data, out).astype(np.float32)  # known voxels bit for bit
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise FloatingPointError(f"{src}: the restoration produced {bad} non-finite voxels (nothing written)")
    check = self_check(operator, y, est, init, noise_model, missing)
    if not check["passed"]:
        warnings.append(check["message"])

    if options.task == "superres":
        save_volume(dst, out, volume, affine=affine)
    else:
        save_volume(dst, out, reference=volume)
    if std_path is not None and restored.std is not None:
        std = restored.std.cpu().numpy() * span
        if known is not None:
            std = np.where(known, 0.0, std)
        if options.task == "superres":
            save_volume(std_path, std, volume, affine=affine)
        else:
            save_volume(std_path, std, reference=volume)
    return {
        "input": str(src),
        "output": str(dst),
        "std_output": None if std_path is None else str(std_path),
        "task": options.task,
        "run": run.name,
        "method": method,
        "levels": {"n": int(len(sigmas)), "sigma_max": float(sigmas[0]), "sigma_min": float(sigmas[-1])},
        "nfe_per_sample": restored.nfe,
        "n_samples": options.n_samples,
        "seed": options.seed,
        "superres": None
        if options.task != "superres"
        else {"axis": axis, "factor": factor, "profile": options.profile, "voxel_mm": zooms},
        "inpaint": None
        if missing is None
        else {"mask": str(mask_path), "voxels": int(missing.sum()), "fraction": float(missing.mean())},
        "noise": {"input_units": sigma_in, "model_units": noise_model, "source": sigma_source},
        "scaler": {"source": scaler_source, **scaler.to_dict()},
        "input_shape": list(volume.shape),
        "output_shape": list(out.shape),
        "check": check,
        "seconds": {"restore": round(seconds, 3), "total": round(time.perf_counter() - t0, 3)},
        "warnings": warnings,
        "baseline_rms_change": float(np.sqrt(np.mean((out - baseline) ** 2))),
    }


def self_check(
    operator: Any,
    y: torch.Tensor,
    est: np.ndarray,
    init: np.ndarray,
    noise: float,
    missing: np.ndarray | None,
) -> dict[str, Any]:
    """What can be checked without the truth, in model units.

    Data consistency: the restored volume seen through the operator must match the measurement ``y`` within
    its noise, no worse than the classical estimate does (rms residual <= max(2 noise, 0.01, the classical
    estimate's)). Inpainting also: the gradient across the hole's border relative to that of the known
    voxels beside it (``border_gradient_ratio``; a seam raises it), at most 1.5 x the classical fill's.
    """

    target = y if missing is None else operator.forward(y)  # a mask's measurement: the known voxels

    def residual(v: np.ndarray) -> float:
        r = operator.forward(torch.from_numpy(np.asarray(v, np.float32))[None, None].to(y)) - target
        return float(r.double().pow(2).mean().sqrt())

    res, res_init = residual(est), residual(init)
    limit = max(2 * noise, 0.01, res_init)
    result: dict[str, Any] = {"residual": res, "residual_classical": res_init, "limit": limit}
    failures = []
    if res > limit:
        failures.append(f"its residual against the measurement ({res:.4g}) exceeds {limit:.4g}")
    if missing is not None:
        ratio, ratio_init = border_gradient_ratio(est, missing), border_gradient_ratio(init, missing)
        result["border_gradient_ratio"], result["border_gradient_ratio_classical"] = ratio, ratio_init
        if ratio > 1.5 * max(ratio_init, 1.0):
            failures.append(
                f"the gradient across the mask's border is {ratio:.2f}x the known voxels' (a seam)"
            )
    result["passed"] = not failures
    result["message"] = (
        "self-check passed"
        if not failures
        else "self-check failed: " + "; ".join(failures) + " (compare with the classical estimate)"
    )
    return result


def border_gradient_ratio(volume: np.ndarray, missing: np.ndarray) -> float:
    """Mean gradient magnitude on the hole's inner border over that on the known voxels just outside it
    (1 means the border is as smooth as the surroundings, larger a seam)."""
    from scipy import ndimage

    grad = np.sqrt(sum(g**2 for g in np.gradient(np.asarray(volume, np.float64))))
    inner = missing & ~ndimage.binary_erosion(missing)
    outer = ndimage.binary_dilation(missing, iterations=2) & ~missing
    if not inner.any() or not outer.any():
        return 1.0
    return float(grad[inner].mean() / max(grad[outer].mean(), 1e-12))
