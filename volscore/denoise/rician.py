"""Magnitude MRI: the Rician mean E|a + sigma (n1 + i n2)| and its inverse, which undoes the upward bias of
the magnitude after the data were denoised as Gaussian."""

from __future__ import annotations

import math

import numpy as np
from scipy import special


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
