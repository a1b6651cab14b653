"""A denoiser's self-check without the clean scan: is the result worse than the input, and does the removed
part look like the assumed noise?

For y = x + sigma n (n white, standard normal) and an output f(y), all in model units:

- **SURE** (Stein 1981): E|f(y) - x|^2 / N = E[ |y - f(y)|^2 / N - sigma^2 + 2 sigma^2 div f(y) / N ], with
  no x on the right. The divergence (the sum of df_i/dy_i) is estimated by one more pass on a probed input
  (Ramani, Blu and Unser 2008): div f ~ b . (f(y + eps b) - f(y)) / eps with b a seeded +-1 field and
  eps = ``PROBE`` sigma; the cross terms average out over the voxels. The estimated MSE against the input's
  sigma^2 gives the estimated PSNR gain over the noisy input, with a standard error from the per-voxel terms.
- **Residual** r = y - f(y), which should hold the noise and nothing else. Its power: E r^2 = sigma^2 - MSE
  for an MMSE denoiser (Stein), so mean r^2 / sigma^2 is at most about 1; above ``MAX_RESIDUAL_POWER`` the
  output lost signal (over-smoothing) or sigma is too small. Its whiteness: the covariance of neighbours
  per sigma^2 (0 for white noise; the MMSE residual's is small). Its anatomy: the MMSE residual is orthogonal
  to every function g of the scan except through the noise, E[r g(y)] = sigma^2 E[div g] (small for a
  smooth g), so the regression of r on the smoothed output (``SMOOTH`` voxels), with the power that part
  carries per sigma^2 (``structure``), is about 0; a model that paints anatomy, shrinks contrast or
  changes the gain leaves it in r.
All statistics are per sigma^2, so a denoiser that barely changes its input (r tiny) never fails on shape
alone, only when it makes things worse. They are taken inside the head mask (where the anatomy is; the
background has its own rule, ``clamp_background``); the SURE gain over the whole volume is reported too.

When a test fails, ``DenoiseOptions.check`` decides: "warn" (the record and the command say which test and
by how much), "shrink" (``shrink_weight``: the output mixed with the input inside the head by the weight a
that minimises SURE over that mix, y - a r: the best estimate the check can make of how much of the change
to keep; 1 for a Wiener filter, below 1 for one that overshoots; 0 keeps the input), or "refuse" (nothing
written). Shrinking rather than refusing: it needs no second model, a = 1 leaves a good result unchanged,
and its SURE is never above the unmixed one's (a = 1 is among the candidates).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

PROBE = 0.1  # eps / sigma of the divergence probe: well above float32 rounding, well inside the linear range
PROBE_SEED = 1234
SMOOTH = 2.0  # voxels: the smoothed output the residual is regressed on
MIN_GAIN_DB = 0.0  # estimated PSNR gain over the input below this: worse than the input
GAIN_ROUNDING_DB = 1e-6  # ... by more than this: float64 rounding of the mean leaves a no-op at +-1e-15 dB
MAX_RESIDUAL_POWER = 1.25  # mean r^2 / sigma^2 (an MMSE denoiser's is 1 - MSE / sigma^2)
MAX_LAG_COVARIANCE = 0.1  # mean neighbour covariance of r per sigma^2, over the three axes
MAX_STRUCTURE = 0.05  # power of the smoothed output's part of r per sigma^2
MAX_GAIN_DB = 60.0  # reported instead of infinity when the estimated MSE is <= 0


class CheckFailed(ValueError):
    """The self-check failed and ``DenoiseOptions.check`` is "refuse"; nothing was written."""


def _gain_db(mse: float, sigma2: float) -> float:
    return MAX_GAIN_DB if mse <= sigma2 * 10 ** (-MAX_GAIN_DB / 10) else 10 * math.log10(sigma2 / mse)


def residual_statistics(noisy: np.ndarray, denoised: np.ndarray, sigma: float, mask: np.ndarray) -> dict:
    """Power, neighbour covariance and anatomy (``structure``) of r = noisy - denoised inside ``mask``, per
    sigma^2 (see the module docstring)."""
    y, f = np.asarray(noisy, np.float64), np.asarray(denoised, np.float64)
    m = np.asarray(mask, dtype=bool)
    r = y - f
    s2 = float(sigma) ** 2
    inside = r[m]
    lag = []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        both = m[tuple(a)] & m[tuple(b)]
        lag.append(float((r[tuple(a)][both] * r[tuple(b)][both]).mean() / s2) if both.any() else 0.0)
    smooth = ndimage.gaussian_filter(f, SMOOTH)[m]
    smooth = smooth - smooth.mean()
    centred = inside - inside.mean()
    var_s = float((smooth**2).mean())
    slope = float((centred * smooth).mean() / var_s) if var_s > 0 else 0.0
    return {
        "power": float((inside**2).mean() / s2),
        "mean": float(inside.mean() / math.sqrt(s2)),
        "lag_covariance": lag,
        "structure_slope": slope,
        "structure": slope**2 * var_s / s2,
    }


def sure(
    noisy: np.ndarray, denoised: np.ndarray, probed: np.ndarray, probe: np.ndarray,
    eps: float | np.ndarray, sigma: float, mask: np.ndarray | None = None,
) -> dict:  # fmt: skip
    """SURE over ``mask`` (all voxels if None) from the output ``denoised`` = f(y) and ``probed`` =
    f(y + eps probe) (``eps``: a number, or per voxel the step the probe actually took): the estimated MSE
    and PSNR gain over the input (dB) with their standard errors, the mean divergence, and the SURE-optimal
    mixing weight a* = sigma^2 (1 - div / N) / mean r^2 (clipped to [0, 1]) of y - a r with the SURE gain
    at a*."""
    y, f = np.asarray(noisy, np.float64), np.asarray(denoised, np.float64)
    m = np.ones(y.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    s2 = float(sigma) ** 2
    r = (y - f)[m]
    div = (np.asarray(probe, np.float64) * (np.asarray(probed, np.float64) - f) / eps)[m]
    terms = r**2 - s2 + 2 * s2 * div  # per voxel: unbiased for (f - x)^2 up to the probe's cross terms
    mse = float(terms.mean())
    se = float(terms.std() / math.sqrt(max(terms.size, 1)))
    power, mean_div = float((r**2).mean()), float(div.mean())
    a = 1.0 if power <= 0 else min(max(s2 * (1 - mean_div) / power, 0.0), 1.0)
    mse_a = a * a * power - s2 + 2 * s2 * ((1 - a) + a * mean_div)
    return {
        "mse": mse / s2,  # per sigma^2: 1 is the noisy input's
        "mse_se": se / s2,
        "gain_db": _gain_db(mse, s2),
        "gain_se_db": 10 / math.log(10) * se / max(mse, 1e-12 * s2),
        "divergence": mean_div,
        "shrink_weight": a,
        "shrink_gain_db": _gain_db(mse_a, s2),
    }


def check_denoiser(
    denoise: Callable[[np.ndarray], np.ndarray],
    noisy: np.ndarray,
    denoised: np.ndarray,
    sigma: float,
    mask: np.ndarray,
    gaussian: bool = True,
) -> dict[str, Any]:
    """The self-check of ``denoised`` = ``denoise(noisy)``: one more call of ``denoise`` on the probed scan
    (the function must be deterministic: reseed it inside), then ``sure`` inside ``mask`` (and over the
    whole volume when the noise is ``gaussian`` everywhere; Rician air is not) and ``residual_statistics``.
    Returns the statistics, the failed tests (``failures``: one sentence each) and ``passed``."""
    y = np.asarray(noisy, np.float32)
    rng = np.random.default_rng(PROBE_SEED)
    probe = rng.integers(0, 2, size=y.shape).astype(np.float32) * 2 - 1
    eps = PROBE * float(sigma)
    moved = (y + eps * probe).astype(np.float32)
    # The step each voxel actually took, eps up to float32 rounding: dividing by it rather than by eps makes
    # the divergence exact for pointwise linear maps (the identity: exactly 1, a gain of exactly 0 dB), where
    # the rounding of y + eps b, biased by y's binade, would otherwise tip a no-op below 0 dB.
    step = probe.astype(np.float64) * (moved.astype(np.float64) - y.astype(np.float64))
    step = np.where(step > 0, step, eps)
    probed = np.asarray(denoise(moved), np.float32)
    head = sure(y, denoised, probed, probe, step, sigma, mask)
    whole = sure(y, denoised, probed, probe, step, sigma) if gaussian else None
    residual = residual_statistics(y, denoised, sigma, mask)
    failures = []
    if head["gain_db"] < MIN_GAIN_DB - GAIN_ROUNDING_DB:
        failures.append(
            f"worse than the input inside the head: estimated gain {head['gain_db']:.2f} "
            f"+- {head['gain_se_db']:.2f} dB (SURE)"
        )
    if whole is not None and whole["gain_db"] < MIN_GAIN_DB - GAIN_ROUNDING_DB:
        failures.append(
            f"worse than the input over the volume: estimated gain {whole['gain_db']:.2f} "
            f"+- {whole['gain_se_db']:.2f} dB (SURE)"
        )
    if residual["power"] > MAX_RESIDUAL_POWER:
        failures.append(
            f"the removed part has {residual['power']:.2f} sigma^2 of power (noise alone: <= 1): the output "
            "lost signal (over-smoothing), or sigma is too small"
        )
    lag = float(np.mean(residual["lag_covariance"]))
    if abs(lag) > MAX_LAG_COVARIANCE:
        failures.append(f"the removed part is not white: neighbour covariance {lag:.2f} sigma^2")
    if residual["structure"] > MAX_STRUCTURE:
        failures.append(
            f"the removed part holds anatomy: {residual['structure']:.2f} sigma^2 of it follows the smoothed "
            f"output (slope {residual['structure_slope']:.3f})"
        )
    return {
        "passed": not failures,
        "failures": failures,
        "sure_head": head,
        "sure_volume": whole,
        "residual": residual,
        "probe": {"eps_over_sigma": PROBE, "seed": PROBE_SEED},
    }


def shrink(noisy: np.ndarray, denoised: np.ndarray, weight: float, mask: np.ndarray) -> np.ndarray:
    """y - a (y - f) inside ``mask`` (f outside), float32: the input mixed back in by 1 - a."""
    y, f = np.asarray(noisy, np.float32), np.asarray(denoised, np.float32)
    return np.where(np.asarray(mask, dtype=bool), y - np.float32(weight) * (y - f), f).astype(np.float32)
