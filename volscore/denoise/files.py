"""NIfTI in, NIfTI out: ``denoise_file`` (one scan: refusals first, noise level, scaling, denoiser, background
rule, Rician correction, atomic write, a JSON-able record) and ``denoise_folder`` (same names, skips,
a record rewritten after every file)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from volscore.data.nifti import (
    NIFTI_SUFFIXES,
    IntensityScaler,
    VolumeError,
    load_volume,
    same_file,
    save_volume,
)
from volscore.denoise.background import clamp_background, foreground_mask
from volscore.denoise.estimators import SAMPLERS, annealed_denoise, tweedie_denoise
from volscore.denoise.noise_level import estimate_sigma, estimate_sigma_rician
from volscore.denoise.rician import rician_correct
from volscore.denoise.self_supervised import OBJECTIVES, fit_self_supervised

NOISE_MODELS = ("gaussian", "rician")
BACKGROUND_RULES = ("clamp", "none")
RECORD_NAME = "denoise_record.json"


Loaded = tuple[torch.nn.Module, dict]  # (model, checkpoint state) as returned by generate.load_run


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


def _check_request(
    src: Path, dst: Path, force: bool, sigma: str | float, noise: str, background: str
) -> None:
    """Everything refusable without reading data: bad options, output == input (links too), wrong suffix,
    missing output folder, an existing output without ``force``."""
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
    if background not in BACKGROUND_RULES:
        raise ValueError(f"background must be one of {BACKGROUND_RULES}, got {background!r}")
    if isinstance(sigma, str):
        if sigma != "auto":
            raise ValueError(f"sigma must be 'auto' or a number, got {sigma!r}")
    elif not (math.isfinite(float(sigma)) and float(sigma) > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    if not dst.name.lower().endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"{dst}: wrong extension, expected one of {', '.join(NIFTI_SUFFIXES)}")
    if src.exists() and same_file(dst, src):
        raise VolumeError(f"{dst}: refusing to overwrite the input volume {src}")
    if not dst.parent.is_dir():
        raise VolumeError(f"{dst}: output folder {dst.parent} does not exist")
    if (dst.exists() or dst.is_symlink()) and not force:
        raise FileExistsError(f"{dst}: output exists; pass force=True (--force) to replace it")


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
    src: Path, data: np.ndarray, head: np.ndarray, sigma: str | float, noise: str, warnings: list[str]
) -> tuple[float, str]:
    if sigma != "auto":
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


def _fit_for_scan(
    x: np.ndarray, sigma: float, minutes: float, objective: str, seed: int, fit_options: dict[str, Any] | None
) -> Loaded:
    """``fit_self_supervised`` in ``fit_options["out_dir"]``, or in a temporary folder removed afterwards."""
    from volscore.checkpoint import load_checkpoint

    opts = dict(fit_options or {})
    work = opts.pop("out_dir", None)
    tmp = None if work is not None else tempfile.mkdtemp(prefix="volscore_selfsup_")
    try:
        model = fit_self_supervised(x, sigma, minutes, objective, out_dir=work or tmp, seed=seed, **opts)
        return model, load_checkpoint(Path(work or tmp) / "checkpoint.pt")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def denoise_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    run: str | os.PathLike | Loaded | None = None,
    sigma: str | float = "auto",
    noise: str = "gaussian",
    steps: int = 0,
    seed: int = 0,
    force: bool = False,
    self_supervised: bool = False,
    minutes: float = 5.0,
    objective: str = "dsm",
    sampler: str = "pc",
    chains: int = 1,
    stitch: str = "blend",
    tile_batch: int = 8,
    background: str = "clamp",
    fit_options: dict[str, Any] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Denoise one NIfTI scan; return a JSON-able record (sigma in input and model units, method, timings).

    Model: a trained ``run`` directory (or its ``load_run`` result, to load it once for many files), or
    ``self_supervised=True``: fit on this scan for ``minutes`` with ``objective`` (``fit_options`` go to
    ``fit_self_supervised``), scaled by its own percentiles. ``sigma``: "auto" (``estimate_sigma`` on the
    foreground, or ``estimate_sigma_rician`` for ``noise="rician"``) or a number in input units.
    ``steps`` 0: one Tweedie step (stitched with ``stitch``); > 0: ``annealed_denoise`` with ``sampler`` and
    ``chains``, seeded by ``seed``. ``noise="rician"``: magnitude MRI, denoised as Gaussian at the same
    sigma, then ``rician_correct`` in input units. ``background="clamp"``: ``clamp_background`` outside
    ``foreground_mask``; "none" keeps the model's output everywhere (e.g. a crop inside the head).
    The output is float32 with the input's header and affine, written atomically; never over the input, and
    over an existing output only with ``force``. What can be refused is refused before any work.
    """
    t0 = time.perf_counter()
    src, dst = Path(input).expanduser(), Path(output).expanduser()
    if (run is None) == (not self_supervised):
        raise ValueError("give either a trained run or self_supervised=True (not both, not neither)")
    if self_supervised and steps:
        raise ValueError("a self-supervised model knows only the scan's noise level: use steps=0 (Tweedie)")
    if self_supervised and objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if steps < 0 or (steps and sampler not in SAMPLERS):
        raise ValueError(f"need steps >= 0 and sampler in {SAMPLERS}, got {steps}, {sampler!r}")
    _check_request(src, dst, force, sigma, noise, background)
    warnings: list[str] = []
    timings: dict[str, float] = {}

    volume = load_volume(src)
    data = volume.data
    head = foreground_mask(data)
    sigma_in, sigma_source = _scan_sigma(src, data, head, sigma, noise, warnings)
    timings["load_and_estimate"] = time.perf_counter() - t0

    t = time.perf_counter()
    if self_supervised:
        scaler, scaler_source = _scaler(src, data, None)
        sigma_model = sigma_in / (scaler.hi - scaler.lo)
        model, state = _fit_for_scan(scaler.forward(data), sigma_model, minutes, objective, seed, fit_options)
    else:
        model, state = run if isinstance(run, tuple) else _load(run, device)
        scaler, scaler_source = _scaler(src, data, ((state.get("data") or {}).get("scalers") or [None])[0])
        sigma_model = sigma_in / (scaler.hi - scaler.lo)
    timings["fit" if self_supervised else "load_model"] = time.perf_counter() - t

    cfg, meta = state.get("config", {}), state.get("data") or {}
    net = state["model_args"]["net"]
    if net.get("spatial_dims") != 3:
        raise ValueError(f"run {run}: a {net.get('spatial_dims')}D model cannot denoise volumes")
    patch_size, coords = int(cfg.get("patch_size", 32)), bool(net.get("coord_channels", False))
    sigma_min, sigma_max = float(cfg.get("sigma_min", 0.01)), cfg.get("sigma_max")
    score_sigma = None
    if meta.get("kind") == "self-supervised":  # a reused self-supervised run: its own conditioning level
        score_sigma = float(meta["score_sigma"])
        if steps:
            raise ValueError("a self-supervised run knows only its scan's noise level: use steps=0 (Tweedie)")
        if abs(sigma_model / float(meta["sigma"]) - 1) > 0.1:
            warnings.append(f"run fitted at sigma {meta['sigma']:.4g}, this scan has {sigma_model:.4g}")
    elif sigma_model < sigma_min or (sigma_max is not None and sigma_model > float(sigma_max)):
        warnings.append(f"sigma {sigma_model:.4g} (model units) outside the run's [{sigma_min}, {sigma_max}]")

    t = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(scaler.forward(data), dtype=np.float32)).to(device)
    if steps == 0:
        den = tweedie_denoise(
            model, x, sigma_model, patch_size, coords, stitch, tile_batch, generator, score_sigma
        )
    else:
        den = annealed_denoise(
            model,
            x,
            sigma_model,
            steps,
            patch_size,
            coords,
            sigma_min,
            sampler,
            chains=chains,
            tile_batch=tile_batch,
            generator=generator,
        )
    den_np, clamped = den.cpu().numpy(), 0.0
    if background == "clamp":
        den_np, clamped = clamp_background(den_np, x.cpu().numpy(), sigma_model, head)
    out = np.asarray(scaler.inverse(den_np), dtype=np.float32)
    if noise == "rician":
        out = rician_correct(out, sigma_in)
    timings["denoise"] = time.perf_counter() - t

    t = time.perf_counter()
    save_volume(dst, out, reference=volume)
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    outside = ~head
    return {
        "input": str(src),
        "output": str(dst),
        "run": None if run is None or isinstance(run, tuple) else str(run),
        "self_supervised": meta.get("kind") == "self-supervised",
        "objective": cfg.get("objective"),
        "model": {k: cfg.get(k) for k in ("preset", "patch_size", "sigma_min", "sigma_max", "precond")}
        | {"step": int(state.get("step", 0)), "coords": coords},
        "method": "tweedie" if steps == 0 else sampler,
        "steps": int(steps),
        "chains": int(chains) if steps else 1,
        "stitch": stitch if steps == 0 else "shift, final step blend",
        "seed": int(seed),
        "noise": noise,
        "sigma": {
            "input_units": sigma_in,
            "model_units": sigma_model,
            "source": sigma_source,
            "network_conditioning": sigma_model if score_sigma is None else score_sigma,
        },
        "scaler": {"source": scaler_source, **scaler.to_dict()},
        "background": {
            "rule": background,
            "mask_fraction": float(head.mean()),
            "clamped_fraction": clamped,
            # mean |value| outside the head in input units: compare with the clean scan's on a phantom
            "outside_mean_abs_output": float(np.abs(out[outside]).mean()) if outside.any() else 0.0,
            "outside_mean_abs_input": float(np.abs(data[outside]).mean()) if outside.any() else 0.0,
        },
        "shape": list(volume.shape),
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "warnings": warnings,
    }


def _load(run: str | os.PathLike, device: str) -> Loaded:
    from volscore.generate import load_run

    return load_run(run, device=device)


def denoise_folder(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    run: str | os.PathLike | None = None,
    force: bool = False,
    device: str = "cpu",
    **options: Any,
) -> dict[str, Any]:
    """Denoise every NIfTI file of ``in_dir`` into ``out_dir``, same names; ``options`` as ``denoise_file``.

    Existing outputs are skipped (listed with status "skipped") unless ``force``; a file that cannot be used
    (``VolumeError``) is listed as "failed" and the others go on. ``out_dir/denoise_record.json`` is rewritten
    atomically after every file, so it always describes what is on disk. The run is loaded once; with
    ``self_supervised`` each scan gets its own fit (in ``fit_options["out_dir"]/<file name>`` if given).
    """
    from volscore.atomic import atomic_write_json
    from volscore.data.nifti import resolve_paths

    src_dir, dst_dir = Path(in_dir).expanduser(), Path(out_dir).expanduser()
    if (run is None) == (not options.get("self_supervised")):
        raise ValueError("give either a trained run or self_supervised=True (not both, not neither)")
    if not src_dir.is_dir():
        raise VolumeError(f"{src_dir}: not a folder")
    if dst_dir.exists() and same_file(dst_dir, src_dir):
        raise VolumeError(f"{dst_dir}: output folder is the input folder; outputs would replace the inputs")
    paths = resolve_paths(src_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    loaded = _load(run, device) if run is not None else None
    fit_dir = (options.get("fit_options") or {}).get("out_dir")
    record: dict[str, Any] = {"in_dir": str(src_dir), "out_dir": str(dst_dir), "run": run and str(run)}
    files: list[dict[str, Any]] = []
    for path in paths:
        out = dst_dir / path.name
        entry = {"input": str(path), "output": str(out)}
        if out.exists() and not force:
            files.append({**entry, "status": "skipped", "reason": "output exists (use force)"})
        else:
            opts = dict(options)
            if fit_dir is not None:  # one run directory per scan: the trainer refuses to reuse one
                opts["fit_options"] = {**opts["fit_options"], "out_dir": str(Path(fit_dir) / path.name)}
            try:
                rec = denoise_file(path, out, run=loaded, force=force, device=device, **opts)
                files.append({**rec, "run": record["run"], "status": "done"})
            except VolumeError as exc:
                files.append({**entry, "status": "failed", "error": str(exc)})
        record["files"] = files
        record.update({f"n_{s}": sum(f["status"] == s for f in files) for s in ("done", "skipped", "failed")})
        atomic_write_json(dst_dir / RECORD_NAME, record)
    return record
