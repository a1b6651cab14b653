"""Denoising scans with a score model: noise-level estimation, Tweedie and annealed denoising, Rician
correction, background rule, NIfTI in / NIfTI out, and self-supervised fitting (Noise2Score).

The maths, for a scan y = x + sigma n (n standard normal, x the clean scan):
- Tweedie (Efron 2011; NCSNv2's final step): E[x | y] = y + sigma^2 grad log p_sigma(y), where p_sigma is the
  law of y. One evaluation of the stitched score over the whole volume is the MMSE estimate when the score is
  exact; ``tweedie_denoise`` is the fast path and the default.
- Annealed: start the chain at y itself (already a draw from p_sigma), anneal sigma -> sigma_min, end with a
  Tweedie step. Measured on a closed-form toy (iid voxels from a two-class Gaussian mixture, means 0.2 / 0.8,
  sd 0.055, exact score, sigma 0.1, 32^3; MSE relative to one Tweedie step, which is the MMSE here):
  noisy 3.4; annealed Langevin 3.1-15 (1-5 steps per level, alpha_i = 0.01-1 sigma_i^2: small steps keep
  the noise, large ones forget the scan, since Langevin targets the marginal p_sigma_i, not p(x | y));
  reverse-diffusion predictor alone ("pc", no corrector) with 4 / 8 / 16 levels 2.5 / 2.1 / 2.0 (a posterior
  sample: 2 in theory), with one corrector step 2.4 (16 levels); 4 chains averaged 1.37 / 1.26 (theory
  1.25). So with an exact score nothing beats one Tweedie step; the samplers are for posterior samples, or
  for learned scores where a benchmark shows they help. The predictor-only chain is the default.
- Self-supervised (Noise2Score, Kim and Ye 2021): Tweedie needs only the score of p_sigma, the law of the
  noisy data, which score matching learns from noisy scans alone; see ``fit_self_supervised``.

Units: the model works in "model units" (the training volumes' ``IntensityScaler``); files are read and
written in their own intensity units, sigma is reported in both.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, special
from torch import Tensor

from volscore.data.nifti import (
    NIFTI_SUFFIXES,
    IntensityScaler,
    VolumeError,
    load_volume,
    same_file,
    save_volume,
)

PatchFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]  # (x, sigma (N,), coords | None) -> score

MAD_TO_SIGMA = 0.6745  # median |N(0, 1)| = Phi^{-1}(3/4)
RAYLEIGH_MEDIAN = math.sqrt(2 * math.log(2))  # median of Rayleigh(sigma) / sigma
SAMPLERS = ("annealed", "pc")
NOISE_MODELS = ("gaussian", "rician")
BACKGROUND_RULES = ("clamp", "none")
OBJECTIVES = ("ssm-vr", "dsm")
RECORD_NAME = "denoise_record.json"


# -- noise level ----------------------------------------------------------------------------------
def _haar_hhh(volume: np.ndarray) -> np.ndarray:
    """Finest diagonal (HHH) band of a one-level orthonormal 3D Haar transform, (X//2, Y//2, Z//2).

    Each coefficient is sum over a 2x2x2 block of (-1)^(i+j+k) v / (2 sqrt 2): unit gain for white noise,
    zero for any signal that is linear, or constant along one axis, inside the block.
    """
    v = np.asarray(volume, dtype=np.float64)
    if min(v.shape) < 2:
        raise ValueError(f"need at least 2 voxels per axis to estimate noise, got shape {v.shape}")
    v = v[: v.shape[0] // 2 * 2, : v.shape[1] // 2 * 2, : v.shape[2] // 2 * 2]
    d = v[0::2] - v[1::2]
    d = d[:, 0::2] - d[:, 1::2]
    d = d[:, :, 0::2] - d[:, :, 1::2]
    return d / (2 * math.sqrt(2))


def estimate_sigma(volume: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Gaussian noise std in the volume's own units: Donoho's wavelet MAD generalised to 3D.

    sigma = median |HHH| / 0.6745 over the diagonal band of a one-level Haar transform (``_haar_hhh``).
    Smooth anatomy barely reaches that band and edges are few, so the median ignores them. With ``mask``,
    only 2x2x2 blocks entirely inside it count: pass one when the volume holds large noise-free regions
    (e.g. zero-filled background), which would pull the median down.
    Not for Rician magnitude backgrounds (Rayleigh noise is not Gaussian): see ``estimate_sigma_rician``.
    """
    band = _haar_hhh(volume)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != np.shape(volume):
            raise ValueError(f"mask shape {m.shape} differs from volume shape {np.shape(volume)}")
        m = m[: m.shape[0] // 2 * 2, : m.shape[1] // 2 * 2, : m.shape[2] // 2 * 2]
        inside = m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2, m.shape[2] // 2, 2).all(axis=(1, 3, 5))
        band = band[inside]
    if band.size < 64:
        raise ValueError(f"only {band.size} 2x2x2 blocks to estimate the noise from (need >= 64)")
    return float(np.median(np.abs(band)) / MAD_TO_SIGMA)


def estimate_sigma_rician(magnitude: np.ndarray, background: np.ndarray | None = None) -> float:
    """Rician sigma of a magnitude MRI from its air background, where the magnitude is Rayleigh(sigma).

    sigma = median(background) / sqrt(2 ln 2), the Rayleigh median. The median rather than the mean
    (mean / sqrt(pi/2)) or the mode: a few tissue or ghosting voxels in the "air" shift a median least,
    and unlike the mode it needs no histogram binning. ``background`` defaults to everything outside
    ``foreground_mask`` (Otsu on a smoothed copy, dilated by 3 voxels so edge voxels stay out).
    Raises ValueError when there is too little background or it is noise-free (e.g. zero-filled).
    """
    m = np.asarray(magnitude, dtype=np.float32)
    bg = ~foreground_mask(m) if background is None else np.asarray(background, dtype=bool)
    values = m[bg]
    if values.size < 1000:
        raise ValueError(f"only {values.size} background voxels (need >= 1000) to estimate Rician noise")
    if (values < 0).any():
        raise ValueError("negative values in the background: not a magnitude image")
    sigma = float(np.median(values)) / RAYLEIGH_MEDIAN
    if not sigma > 0:
        raise ValueError("the background is noise-free (median 0, e.g. zero-filled): give sigma explicitly")
    return sigma


# -- foreground and background rule ------------------------------------------------------------------
def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of a histogram."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)  # voxels at or below each cut
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


def foreground_mask(volume: np.ndarray, smooth: float = 2.0, margin: float = 3.0) -> np.ndarray:
    """The head: Otsu on a Gaussian-smoothed copy (``smooth`` voxels, so noise cannot punch holes), holes
    filled (ventricles, dark CSF), dilated by ``margin`` voxels so partial-volume edges are in."""
    smoothed = ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), smooth)
    # Every 8th voxel is plenty for a 256-bin histogram of a smoothed image.
    mask = ndimage.binary_fill_holes(smoothed > otsu_threshold(smoothed[::2, ::2, ::2]))
    # Alternating 6- and 26-neighbour steps: an octagonal ball, 10x faster than a Euclidean distance map.
    for i in range(int(round(margin))):
        mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1 if i % 2 == 0 else 3))
    return mask


def clamp_background(
    denoised: np.ndarray,
    noisy: np.ndarray,
    sigma: float,
    mask: np.ndarray,
    width: float = 2.0,
    k: float = 3.0,
) -> tuple[np.ndarray, float]:
    """Outside ``mask``, keep the model's output only where the data support it; return (out, clamped share).

    Rule: outside the head the output may differ from the local mean of the measured data, m = G_width * y,
    by at most ``k`` standard errors of that mean, se = sigma sqrt(sum g^2); it is clipped to [m - k se,
    m + k se]. A linear smoother cannot invent structure, and within k se of it the output is statistically
    indistinguishable from what the data say, so signal the model paints into the air (a "hallucinated"
    skull, tissue from its prior) is removed while the air is still denoised (to about m). Inside the
    mask the model's output is kept unchanged. ``sigma`` is in the units of ``noisy``.
    """
    noisy = np.asarray(noisy, dtype=np.float32)
    local_mean = ndimage.gaussian_filter(noisy, width)
    delta = np.zeros(2 * int(4 * width + 0.5) + 1)
    delta[len(delta) // 2] = 1
    g = ndimage.gaussian_filter1d(delta, width)  # scipy's own discrete kernel (truncate 4)
    band = k * sigma * float((g**2).sum()) ** 1.5  # separable: sum of g^2 over 3D = (sum over 1D)^3
    clipped = np.clip(denoised, local_mean - band, local_mean + band)
    outside = ~np.asarray(mask, dtype=bool)
    changed = outside & (clipped != denoised)
    out = np.where(outside, clipped, denoised).astype(np.float32)
    return out, float(changed.sum() / max(outside.sum(), 1))


# -- Rician magnitude ----------------------------------------------------------------------------------
def rician_mean(a: np.ndarray | float, sigma: float) -> np.ndarray:
    """E[M] for M = |a + sigma (n1 + i n2)|: sigma sqrt(pi/2) L_{1/2}(-a^2 / 2 sigma^2) (scaled Bessels)."""
    z = (np.asarray(a, dtype=np.float64) / sigma) ** 2 / 4
    return sigma * math.sqrt(math.pi / 2) * ((1 + 2 * z) * special.i0e(z) + 2 * z * special.i1e(z))


_NU = np.linspace(0.0, 60.0, 6001)  # a / sigma grid for inverting rician_mean
_F_NU = rician_mean(_NU, 1.0)  # increasing from sqrt(pi/2) to 60 + 1/120


def rician_correct(denoised: np.ndarray, sigma: float) -> np.ndarray:
    """Undo the Rician bias of a Gaussian-denoised magnitude image (input units, sigma in the same units).

    A Gaussian denoiser removes the zero-mean fluctuation M - E[M] but keeps the Rician mean
    E[M] = f(A) = sigma sqrt(pi/2) L_{1/2}(-A^2 / 2 sigma^2) > A (air: sqrt(pi/2) sigma instead of 0).
    We invert f (first-moment method): A = f^{-1}(D(M)), 0 where D(M) <= sqrt(pi/2) sigma, and
    sqrt(D^2 - sigma^2) beyond A = 60 sigma (f(A)^2 = A^2 + sigma^2 + O(sigma^4 / A^2)). The second-moment
    rule sqrt(D^2 - 2 sigma^2) is exact only for an average of M^2 (E[M^2] = A^2 + 2 sigma^2); applied to
    a denoised M it over-corrects: A = 3 sigma comes back as 2.84 sigma.
    """
    ratio = np.asarray(denoised, dtype=np.float64) / sigma
    nu = np.interp(ratio, _F_NU, _NU)  # clamps to 0 below sqrt(pi/2)
    far = ratio > _F_NU[-1]
    nu[far] = np.sqrt(ratio[far] ** 2 - 1)
    return (nu * sigma).astype(np.float32)


# -- denoisers on tensors in model units ----------------------------------------------------------------
def _as_batch(noisy: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(np.asarray(noisy) if not isinstance(noisy, Tensor) else noisy, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(x.shape)}")
    return x[None, None]  # (1, 1, D, H, W)


@torch.no_grad()
def tweedie_denoise(
    model: PatchFn,
    noisy: Tensor,
    sigma: float,
    patch_size: int | Sequence[int],
    coords: bool,
    stitch: str = "blend",
    tile_batch: int = 8,
    generator: torch.Generator | None = None,
    score_sigma: float | None = None,
) -> Tensor:
    """One Tweedie step D(y) = y + sigma^2 s(y, sigma) over a whole (D, H, W) volume in model units.

    ``model(x, sigma, coords)`` is a patch score function (e.g. ``Preconditioner``), stitched over the
    volume: ``"blend"`` (Gaussian-weighted overlap: deterministic, no seams) or ``"shift"`` (one random grid,
    ``generator``). ``score_sigma`` is the noise level the network is conditioned on, if not ``sigma``:
    self-supervised models are evaluated at their tiny training level (``fit_self_supervised``).
    """
    from volscore.sampling.stitch import StitchedScore

    x = _as_batch(noisy)
    score_fn = StitchedScore(
        model, _patch(patch_size), mode=stitch, tile_batch=tile_batch, coords=coords, generator=generator
    )
    s = score_fn(x, float(sigma if score_sigma is None else score_sigma))
    return (x + float(sigma) ** 2 * s)[0, 0]


def _patch(patch_size: int | Sequence[int]) -> int | tuple[int, ...]:
    return int(patch_size) if isinstance(patch_size, (int, np.integer)) else tuple(int(p) for p in patch_size)


def denoise_sigmas(sigma: float, sigma_min: float, steps: int) -> Tensor:
    """``steps`` geometric levels from the scan's sigma down to sigma_min (just [sigma] if steps == 1)."""
    from volscore.noise import geometric_sigmas

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1 or sigma <= sigma_min:
        return torch.tensor([float(sigma)])
    return geometric_sigmas(float(sigma), float(sigma_min), steps)


@torch.no_grad()
def annealed_denoise(
    model: PatchFn,
    noisy: Tensor,
    sigma: float,
    steps: int,
    patch_size: int | Sequence[int],
    coords: bool,
    sigma_min: float,
    sampler: str = "pc",
    n_steps_each: int | None = None,
    step_lr: float | None = None,
    snr: float = 0.16,
    chains: int = 1,
    stitch: str = "shift",
    tile_batch: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Start at the scan (x = y, already at level sigma), anneal down to sigma_min, finish with Tweedie.

    Levels: ``denoise_sigmas(sigma, sigma_min, steps)``. ``sampler="pc"`` (default): reverse-diffusion
    predictor sigma_i -> sigma_{i+1}, which started from y is the VE-SDE posterior sampler for p(x | y),
    with ``n_steps_each`` Langevin corrector steps per level (snr rule; default 0, the best on the toy of the
    module docstring). ``"annealed"``: NCSN annealed Langevin, ``n_steps_each`` (default 1) steps with
    alpha_i = step_lr sigma_i^2 / sigma_L^2 (default step_lr 0.05 sigma_L^2); it barely denoises (see above).
    The chain's score uses ``stitch`` (default shift: one evaluation per voxel, the grid moves each step);
    the final Tweedie step at sigma_L uses blend (no seams). ``chains`` independent chains are averaged:
    one chain is a posterior sample, the average tends to the posterior mean. Reproducible per generator.
    """
    from volscore.sampling.langevin import annealed_langevin, predictor_corrector
    from volscore.sampling.stitch import StitchedScore

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if chains < 1:
        raise ValueError(f"chains must be >= 1, got {chains}")
    sigmas = denoise_sigmas(sigma, sigma_min, steps)
    sigma_last = float(sigmas[-1])
    lr = 0.05 * sigma_last**2 if step_lr is None else float(step_lr)
    each = (1 if sampler == "annealed" else 0) if n_steps_each is None else int(n_steps_each)
    score_fn = StitchedScore(
        model, _patch(patch_size), mode=stitch, tile_batch=tile_batch, coords=coords, generator=generator
    )
    y = _as_batch(noisy)
    total = torch.zeros_like(y[0, 0])
    for _ in range(chains):
        if sampler == "annealed":
            x = annealed_langevin(score_fn, y, sigmas, each, lr, denoise=False, generator=generator)
        else:
            x = predictor_corrector(score_fn, y, sigmas, each, snr, denoise=False, generator=generator)
        total += tweedie_denoise(model, x[0, 0], sigma_last, patch_size, coords, "blend", tile_batch)
    return total / chains


# -- self-supervised ---------------------------------------------------------------------------------
def self_supervised_levels(sigma: float, objective: str = "ssm-vr") -> tuple[float, float]:
    """(t_min, t_max) of the extra training noise t for ``fit_self_supervised``; the score is used at t_min.

    ssm-vr: t in [0.05, 0.2] sigma (SSM needs no noise at all; a little keeps the conditioning defined),
    evaluated where sqrt(sigma^2 + t^2) = 1.001 sigma. dsm: t in [0.2, 2] sigma (DSM's target variance grows
    as 1/t^2, so it cannot train at t -> 0; the net shares what it learns across t), evaluated at
    sqrt(1 + 0.04) sigma = 1.02 sigma.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    lo, hi = (0.05, 0.2) if objective == "ssm-vr" else (0.2, 2.0)
    return lo * float(sigma), hi * float(sigma)


def fit_self_supervised(
    noisy: np.ndarray | Tensor,
    sigma: float,
    minutes: float | None = 5.0,
    objective: str = "dsm",
    patch_size: int = 32,
    preset: str = "small",
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    steps: int | None = None,
    progress: bool = False,
    **overrides: Any,
) -> torch.nn.Module:
    """Fit a score model to patches of one noisy scan (model units) and return its EMA model (eval mode).

    Maths (Noise2Score). The scan is y = x + sigma_0 n, a draw from p_{sigma_0} = p_x * N(0, sigma_0^2), and
    Tweedie needs s_{p_{sigma_0}}(y). The trainer perturbs each patch again, z = y + t eps, and conditions
    the network on t. Both objectives then learn the score of the law of z, which is p_x convolved with
    N(0, sigma_0^2 + t^2): at conditioning t the network approximates grad log p_{sqrt(sigma_0^2 + t^2)}, not
    grad log p_t as it would on clean data. So we train only at small t (``self_supervised_levels``) and
    denoise with y + sigma_0^2 s(y, t_min): the score is that of p_{sigma_0 sqrt(1 + (t_min/sigma_0)^2)},
    a relative level error of 0.1 % (ssm-vr) or 2 % (dsm).
    - ssm-vr: sliced score matching learns the score of whatever density the samples come from (no clean
      target needed), exactly p_{sqrt(sigma_0^2 + t^2)}; t may be tiny.
    - dsm: |s(z, t) + eps / t|^2 is minimised by the score of the law of z as well (Vincent 2011 holds for any
      p_x, here the noisy scan's law), but its variance grows as t -> 0, so t stays >= 0.2 sigma_0; this is
      Noise2Score's AR-DAE recipe with t kept away from 0 instead of annealed to it.
    Measured on a 48^3 MNI crop, sigma 0.05 (noisy 26.0 dB, best Gaussian filter 31.6), preset small, patch
    24, on the busy 2-core CPU. DSM 3 min (120 steps): 32.9 dB reading the network at t_min = 0.2 sigma_0,
    31.3 at sigma_0, 28.9 at 2 sigma_0. SSM-VR 6 min (only 40 steps, loss still falling): 29.2 dB at
    t_min = 0.05 sigma_0, 28.9 at 0.2 sigma_0, 26.3 at sigma_0. So t_min is the right reading for both;
    fits this short cannot rank the objectives.
    The run (checkpoint, metrics) goes to ``out_dir``; None: a temporary folder, removed once the model is
    loaded. ``overrides`` are further ``TrainConfig`` fields (batch_size, lr, amp, ...). Short fits: the EMA
    decay defaults to 0.99 (0.999 would still be mostly the initial weights after a few hundred steps).
    """
    from volscore.config import TrainConfig
    from volscore.data.patches import PatchSampler
    from volscore.data.sources import Source
    from volscore.generate import load_run
    from volscore.train import Trainer

    t_min, t_max = self_supervised_levels(sigma, objective)
    volume = np.ascontiguousarray(np.asarray(noisy, dtype=np.float32))
    # Half of the patches anywhere: the air is denoised too, so the model must see it.
    sampler = PatchSampler([volume], patch_size, coords=True, foreground_fraction=0.5)
    meta = {
        "kind": "self-supervised",
        "sigma": float(sigma),
        "objective": objective,
        "score_sigma": t_min,
        "shapes": [list(volume.shape)],
    }
    settings = dict(
        data=["self-supervised"],
        objective=objective,
        preset=preset,
        minutes=minutes,
        steps=steps,
        batch_size=4,
        lr=1e-3,
        warmup=20,
        ema_decay=0.99,
        sigma_min=t_min,
        sigma_max=t_max,
        num_sigmas=2,
        patch_size=int(patch_size),
        coords=True,
        seed=seed,
        log_every=10,
    )
    settings.update(overrides)
    meta["score_sigma"] = float(settings["sigma_min"])  # the level denoising must condition on
    tmp = tempfile.mkdtemp(prefix="volscore_selfsup_") if out_dir is None else None
    settings["out"] = str(out_dir or tmp)
    try:
        trainer = Trainer(TrainConfig(**settings), progress=progress, source=Source(sampler, 3, meta))
        trainer.run()
        model, _ = load_run(settings["out"])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return model


# -- files ----------------------------------------------------------------------------------------------
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


__all__ = [
    "annealed_denoise",
    "choose_scaler",
    "clamp_background",
    "denoise_file",
    "denoise_folder",
    "denoise_sigmas",
    "estimate_sigma",
    "estimate_sigma_rician",
    "fit_self_supervised",
    "foreground_mask",
    "otsu_threshold",
    "rician_correct",
    "rician_mean",
    "self_supervised_levels",
    "tweedie_denoise",
]
