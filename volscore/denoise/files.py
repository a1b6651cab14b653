"""NIfTI in, NIfTI out: ``denoise_file`` (one scan: refusals first, noise level, scaling, denoiser, background
rule, Rician correction, atomic write, a JSON-able record) and ``denoise_folder`` (same names, skips,
a record rewritten after every file)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from volscore.amp import inference_dtype
from volscore.data.nifti import (
    IntensityScaler,
    VolumeError,
    check_volume_output,
    load_volume,
    save_volume,
)
from volscore.data.sources import voxel_sizes
from volscore.denoise.background import clamp_background, foreground_mask
from volscore.denoise.check import CheckFailed, check_denoiser, shrink
from volscore.denoise.estimators import annealed_denoise, tweedie_denoise
from volscore.denoise.noise_level import estimate_sigma, estimate_sigma_rician
from volscore.denoise.rician import rician_correct
from volscore.denoise.self_supervised import fit_self_supervised
from volscore.denoise.spacing import Regrid, target_zooms, trained_zooms
from volscore.options import DenoiseOptions
from volscore.outputs import check_outputs, same_path
from volscore.run import Run

RECORD_NAME = "denoise_record.json"
SIGMA_BEYOND_TRAINED = 10.0  # a noise level this many times the run's sigma_max is refused, not warned about


def choose_scaler(
    data: np.ndarray, trained: dict | None, tolerance: float = 0.25
) -> tuple[IntensityScaler, str]:
    """The intensity scaling into model units, and where it came from ("run" or "scan").

    The run's training scaler when the scan lies in the same intensity range (its robust 0.5 / 99.5
    percentiles land within ``tolerance`` of 0 and 1 in training units): same protocol, same units, so the
    contrast the model learned is kept. Otherwise (another scanner gain, integer range, CT vs MR) the scan's
    own percentiles, measured on a copy smoothed by 1 voxel: noise pushes raw percentiles outwards (up to
    2.6 sigma at 99.5), smoothing divides that by about 6.7.
    """
    own = IntensityScaler.fit(ndimage.gaussian_filter(np.asarray(data, dtype=np.float32), 1.0))
    if trained is None:
        return own, "scan"
    run = IntensityScaler.from_dict(trained)
    lo, hi = float(run.forward(own.lo)), float(run.forward(own.hi))
    if abs(lo) <= tolerance and abs(hi - 1) <= tolerance:
        return run, "run"
    return own, "scan"


def _check_request(src: Path, dst: Path, force: bool) -> None:
    """Everything refusable without reading data: output == input (links too), wrong suffix, missing output
    folder, an existing output without ``force``. The options themselves are checked by ``validate``."""
    check_volume_output(dst, inputs=[src], force=force)


def _auto_sigma(data: np.ndarray, head: np.ndarray, noise: str, warnings: list[str]) -> tuple[float, str]:
    """Estimated sigma (input units) and the estimator's name; Rician falls back to the foreground MAD."""
    if noise == "rician":
        try:
            return estimate_sigma_rician(data, background=~head), "rayleigh-background-median"
        except ValueError as exc:
            # At the foreground's SNR the Rician noise is close to Gaussian with the same sigma.
            warnings.append(f"no Rician background estimate ({exc}); used the foreground wavelet MAD")
    try:
        return estimate_sigma(data, mask=head), "haar-hhh-mad-foreground"
    except ValueError:  # a foreground too small for 64 whole blocks
        return estimate_sigma(data), "haar-hhh-mad"


def _scan_sigma(
    src: Path, data: np.ndarray, head: np.ndarray, sigma: float | None, noise: str, warnings: list[str]
) -> tuple[float, str]:
    if sigma is not None:
        return float(sigma), "given"
    try:
        value, how = _auto_sigma(data, head, noise, warnings)
    except ValueError as exc:
        raise VolumeError(f"{src}: cannot estimate the noise level ({exc}); give sigma") from exc
    if not value > 0:
        raise VolumeError(f"{src}: estimated noise level is 0 (noise-free data?); give sigma")
    return value, how


def _scaler(src: Path, data: np.ndarray, trained: dict | None) -> tuple[IntensityScaler, str]:
    try:
        return choose_scaler(data, trained)
    except ValueError as exc:  # constant image: nothing to scale, nothing to denoise
        raise VolumeError(f"{src}: {exc}") from exc


def _fit_for_scan(x: np.ndarray, sigma: float, options: DenoiseOptions, fit_dir: str | None) -> Run:
    """``fit_self_supervised`` in ``fit_dir``, or in a temporary folder removed afterwards."""
    tmp = None if fit_dir is not None else tempfile.mkdtemp(prefix="volscore_selfsup_")
    try:
        return fit_self_supervised(
            x, sigma, options.minutes, options.objective, out_dir=fit_dir or tmp, seed=options.seed,
            init=options.init, **options.fit_overrides,
        )  # fmt: skip
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _regrid(volume: Any, options: DenoiseOptions, model: Run | None) -> Regrid | None:
    """The grid to denoise on (``denoise.spacing``), None for the scan's own: from the run's training voxel
    sizes (a self-supervised fit: its prior's, or the scan's own)."""
    rule = options.spacing if options.spacing_value is None else options.spacing_value
    zooms = target_zooms(voxel_sizes(volume.affine), [] if model is None else trained_zooms(model), rule)
    return None if zooms is None else Regrid(volume.shape, volume.affine, zooms)


def _apply_check(
    src: Path,
    options: DenoiseOptions,
    pipeline: Any,
    x: np.ndarray,
    den: np.ndarray,
    sigma_model: float,
    head: np.ndarray,
    warnings: list[str],
) -> tuple[np.ndarray, dict[str, Any]]:
    """``check_denoiser`` on the model-unit output, then ``options.check``'s action when it fails."""
    result = check_denoiser(
        lambda y: pipeline(y)[0], x, den, sigma_model, head, gaussian=options.noise == "gaussian"
    )
    result["mode"], result["action"] = options.check, "none"
    if result["passed"]:
        return den, result
    what = "; ".join(result["failures"])
    if options.check == "refuse":
        raise CheckFailed(
            f"{src}: the denoised scan failed its self-check ({what}); nothing written. Use --check warn to "
            "keep such a result, or --check shrink to mix the input back in"
        )
    if options.check == "shrink":
        a = result["sure_head"]["shrink_weight"]
        den = shrink(x, den, a, head)
        result["action"] = "shrink"
        warnings.append(
            f"self-check failed: {what}. Output mixed with the input inside the head: y - {a:.3f} (y - f), "
            f"estimated gain {result['sure_head']['shrink_gain_db']:.2f} dB"
        )
    else:
        warnings.append(f"self-check failed: {what}. Output kept (--check shrink mixes the input back in)")
    return den, result


def denoise_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    options: DenoiseOptions,
    run: Run | None = None,
    force: bool = False,
    fit_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Denoise one NIfTI scan; return a JSON-able record (sigma in input and model units, method, timings).

    Model: ``run`` (a loaded ``Run``; loaded from ``options.run`` if not given, so a folder of scans loads it
    once), or ``options.self_supervised``: fit on this scan for ``options.minutes`` with ``options.objective``
    (in ``fit_dir`` if given, else a temporary folder), scaled by its own percentiles, or in the units of
    the prior ``options.init`` when fine-tuning one. ``options.sigma``: "auto" (``estimate_sigma`` on the
    foreground, or ``estimate_sigma_rician`` for Rician noise) or a number in input units.
    ``options.spacing``: the grid to denoise on (``denoise.spacing``: resampled there and back, the noise
    level scaled by the resampling's ``noise_factor``). ``steps`` 0: one Tweedie step (stitched with
    ``stitch`` and ``overlap``, averaged over ``ensemble`` flips and tilings, under ``amp``); > 0:
    ``annealed_denoise`` with ``sampler`` and ``chains``, seeded by ``seed``. Rician noise: magnitude MRI,
    denoised as Gaussian at the same sigma, then ``rician_correct`` in input units. ``background="clamp"``:
    ``clamp_background`` outside ``foreground_mask``; "none" keeps the model's output everywhere (e.g. a crop
    inside the head). ``check`` (unless "off"): ``check_denoiser`` on the result in model units, which costs
    one more pass, and its action on failure (``denoise.check``); the record holds its statistics.
    The output is float32 with the input's header and affine, written atomically; never over the input, and
    over an existing output only with ``force``. What can be refused is refused before any work.
    """
    t0 = time.perf_counter()
    options.validate()
    src, dst = Path(input).expanduser(), Path(output).expanduser()
    _check_request(src, dst, force)
    warnings: list[str] = []
    timings: dict[str, float] = {}

    volume = load_volume(src, options.volume_index)
    data = volume.data
    head = foreground_mask(data)
    sigma_in, sigma_source = _scan_sigma(src, data, head, options.sigma_value, options.noise, warnings)
    timings["load_and_estimate"] = time.perf_counter() - t0

    t = time.perf_counter()
    prior = None
    if options.self_supervised:
        prior = None if options.init is None else Run.load(options.init, device=options.device)
        trained = None if prior is None else prior.data.get("scalers")
    else:
        run = run if run is not None else Run.load(str(options.run), device=options.device)
        trained = run.data.get("scalers")
    scaler, scaler_source = _scaler(src, data, trained[0] if trained else None)
    sigma_model = sigma_in / (scaler.hi - scaler.lo)
    x_np = np.asarray(scaler.forward(data), dtype=np.float32)
    regrid = _regrid(volume, options, prior if options.self_supervised else run)
    # the noise level on the grid the model sees
    sigma_grid = sigma_model if regrid is None else sigma_model * regrid.noise_factor
    if options.self_supervised:
        fitted = regrid.forward(x_np) if regrid is not None else scaler.forward(data)
        run = _fit_for_scan(fitted, sigma_grid, options, None if fit_dir is None else str(fit_dir))
    assert run is not None
    timings["fit" if options.self_supervised else "load_model"] = time.perf_counter() - t

    if run.spatial_dims != 3:
        raise ValueError(f"run {run.name}: a {run.spatial_dims}D model cannot denoise volumes")
    patch_size, coords = run.patch_size or run.sample_shape[0], run.coords
    sigma_min, sigma_max = run.config.sigma_min, run.config.sigma_max
    score_sigma = None
    if run.kind == "self-supervised":  # a self-supervised run: evaluated at its own conditioning level
        score_sigma = float(run.data["score_sigma"])
        if options.steps:
            raise ValueError("a self-supervised run knows only its scan's noise level: use steps=0 (Tweedie)")
        if abs(sigma_grid / float(run.data["sigma"]) - 1) > 0.1:
            warnings.append(f"run fitted at sigma {run.data['sigma']:.4g}, this scan has {sigma_grid:.4g}")
    elif sigma_max is not None and sigma_grid > SIGMA_BEYOND_TRAINED * float(sigma_max):
        # Far above training the network returns its guess of a mean volume: finite, and not the scan.
        raise ValueError(
            f"{src}: sigma {sigma_in:.4g} ({sigma_source}; {sigma_grid:.4g} in model units) is over "
            f"{SIGMA_BEYOND_TRAINED:g}x the largest noise level the run {run.name} was trained at "
            f"({sigma_max}); its output would not be this scan denoised. Check --sigma (input units)"
        )
    elif sigma_grid < sigma_min or (sigma_max is not None and sigma_grid > float(sigma_max)):
        warnings.append(f"sigma {sigma_grid:.4g} (model units) outside the run's [{sigma_min}, {sigma_max}]")
    amp = inference_dtype(options.amp)

    def pipeline(y: np.ndarray) -> tuple[np.ndarray, float]:
        """Model units on the scan's grid -> denoised (background rule applied), and the clamped share."""
        generator = torch.Generator().manual_seed(options.seed)
        z = y if regrid is None else regrid.forward(y)
        xt = torch.from_numpy(np.asarray(z, dtype=np.float32)).to(options.device)
        if options.steps == 0:
            den = tweedie_denoise(
                run.model, xt, sigma_grid, patch_size, coords, options.stitch, options.tile_batch, generator,
                score_sigma, ensemble=options.ensemble, flip_axes=options.ensemble_axes,
                overlap=options.overlap, amp=amp,
            )  # fmt: skip
        else:
            den = annealed_denoise(
                run.model, xt, sigma_grid, options.steps, patch_size, coords, sigma_min, options.sampler,
                chains=options.chains, tile_batch=options.tile_batch, generator=generator,
                overlap=options.overlap,
            )  # fmt: skip
        den_np = den.cpu().numpy()
        if regrid is not None:
            den_np = regrid.back(den_np)
        if options.background == "clamp":
            return clamp_background(den_np, y, sigma_model, head)
        return den_np, 0.0

    t = time.perf_counter()
    den_np, clamped = pipeline(x_np)
    timings["denoise"] = time.perf_counter() - t
    check = None
    if options.check != "off":
        t = time.perf_counter()
        den_np, check = _apply_check(src, options, pipeline, x_np, den_np, sigma_model, head, warnings)
        timings["check"] = time.perf_counter() - t
    out = np.asarray(scaler.inverse(den_np), dtype=np.float32)
    if options.noise == "rician":
        out = rician_correct(out, sigma_in)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise FloatingPointError(
            f"{src}: the denoiser produced {bad} non-finite voxels (nothing written); "
            f"check the run {run.name} and sigma {sigma_in:.4g}"
        )

    t = time.perf_counter()
    save_volume(dst, out, reference=volume)
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    outside = ~head
    cfg = run.config
    return {
        "input": str(src),
        "output": str(dst),
        "run": None if options.self_supervised else run.name,
        "self_supervised": run.kind == "self-supervised",
        "init": options.init,
        "objective": cfg.objective,
        "model": {k: getattr(cfg, k) for k in ("preset", "patch_size", "sigma_min", "sigma_max", "precond")}
        | {"step": run.step, "coords": coords},
        "method": "tweedie" if options.steps == 0 else options.sampler,
        "steps": int(options.steps),
        "chains": int(options.chains) if options.steps else 1,
        "stitch": options.stitch if options.steps == 0 else "shift, final step blend",
        "overlap": float(options.overlap),
        "ensemble": {"passes": int(options.ensemble), "axes": list(options.ensemble_axes)},
        "amp": options.amp,
        "seed": int(options.seed),
        "noise": options.noise,
        "sigma": {
            "input_units": sigma_in,
            "model_units": sigma_model,
            "source": sigma_source,
            "network_conditioning": sigma_grid if score_sigma is None else score_sigma,
        },
        "spacing": {"rule": options.spacing, "resampled": regrid is not None}
        | ({} if regrid is None else regrid.record() | {"sigma_model_units": sigma_grid}),
        "scaler": {"source": scaler_source, **scaler.to_dict()},
        "background": {
            "rule": options.background,
            "mask_fraction": float(head.mean()),
            "clamped_fraction": clamped,
            # mean |value| outside the head in input units: compare with the clean scan's on a phantom
            "outside_mean_abs_output": float(np.abs(out[outside]).mean()) if outside.any() else 0.0,
            "outside_mean_abs_input": float(np.abs(data[outside]).mean()) if outside.any() else 0.0,
        },
        "check": check,
        "shape": list(volume.shape),
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "warnings": warnings,
    }


def denoise_folder(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: DenoiseOptions,
    force: bool = False,
    fit_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Denoise every NIfTI file of ``in_dir`` into ``out_dir``, same names, with ``options``.

    Existing outputs are skipped (listed with status "skipped") unless ``force``; a file that fails is listed
    as "failed" with its error, and the others go on. ``out_dir/denoise_record.json`` is rewritten atomically
    after every file, so it always describes what is on disk. The run is loaded once; with
    ``self_supervised`` each scan gets its own fit (in ``fit_dir/<file name>`` if given).
    """
    from volscore.atomic import atomic_write_json
    from volscore.data.nifti import resolve_paths

    options.validate()
    src_dir, dst_dir = Path(in_dir).expanduser(), Path(out_dir).expanduser()
    if not src_dir.is_dir():
        raise VolumeError(f"{src_dir}: not a folder")
    if same_path(dst_dir, src_dir):
        raise VolumeError(f"{dst_dir}: output folder is the input folder; outputs would replace the inputs")
    paths = resolve_paths(src_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    run = None if options.self_supervised else Run.load(str(options.run), device=options.device)
    record: dict[str, Any] = {"in_dir": str(src_dir), "out_dir": str(dst_dir), "run": options.run}
    files: list[dict[str, Any]] = []
    for path in paths:
        out = dst_dir / path.name
        entry = {"input": str(path), "output": str(out)}
        if out.exists() and not force:
            files.append({**entry, "status": "skipped", "reason": "output exists (use force)"})
        else:
            # one run folder per scan: the trainer refuses to reuse one
            scan_fit_dir = None if fit_dir is None else Path(fit_dir) / path.name
            try:
                check_outputs([out], inputs=paths, force=True)  # no output over any input of the folder
                rec = denoise_file(path, out, options, run=run, force=force, fit_dir=scan_fit_dir)
                files.append({**rec, "run": record["run"], "status": "done"})
            except Exception as exc:  # whatever one file does, it is recorded and the others go on
                files.append({**entry, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        record["files"] = files
        record.update({f"n_{s}": sum(f["status"] == s for f in files) for s in ("done", "skipped", "failed")})
        atomic_write_json(dst_dir / RECORD_NAME, record)
    return record
