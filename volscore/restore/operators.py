"""Linear measurement operators y = A x + n of the restoration tasks, with their adjoints and the proximal
step the posterior sampler uses for data consistency.

Every operator acts on the last ``spatial_dims`` axes of a (B, C, *spatial) tensor, so the samplers' batches
pass through unchanged:

- ``Identity``: denoising (y = x + n); the posterior mean under it is Tweedie's estimate.
- ``Mask``: inpainting; ``known`` voxels are measured, the others are missing (A = diag(known)).
- ``SliceProfile``: thick slices along one axis, each the weighted mean of ``factor`` fine slices (``box``:
  equal weights; ``gaussian``: a Gaussian slice profile whose full width at half maximum is the slice
  thickness), A = a small (n_thick x n_fine) matrix applied along that axis.

``prox(x0, y, noise_var, prior_var)`` = argmin_u |y - A u|^2 / noise_var + |u - x0|^2 / prior_var, in closed
form: u = x0 + A^T (A A^T + lam I)^-1 (y - A x0) with lam = noise_var / prior_var. For masks A A^T is
diagonal; for slice profiles it is an n_thick x n_thick matrix, solved once per call for every line along
the axis. noise_var = 0 is the projection onto {u : A u = y}.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

SLICE_PROFILES = ("box", "gaussian")


class Operator(Protocol):
    """A linear measurement operator on (B, C, *spatial) tensors."""

    def forward(self, x: Tensor) -> Tensor: ...

    def adjoint(self, y: Tensor) -> Tensor: ...

    def prox(self, x0: Tensor, y: Tensor, noise_var: float, prior_var: float) -> Tensor: ...


def _check_vars(noise_var: float, prior_var: float) -> None:
    if not (noise_var >= 0 and prior_var > 0 and math.isfinite(noise_var) and math.isfinite(prior_var)):
        raise ValueError(f"need noise_var >= 0 and prior_var > 0, got {noise_var}, {prior_var}")


class Identity:
    """y = x + n: denoising as the special case of restoration."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def prox(self, x0: Tensor, y: Tensor, noise_var: float, prior_var: float) -> Tensor:
        _check_vars(noise_var, prior_var)
        w = prior_var / (prior_var + noise_var)  # the measurement's share
        return w * y + (1 - w) * x0


class Mask:
    """y = known * x (+ n): the ``known`` voxels are measured, the others are to be filled in.

    ``known`` is a bool tensor of the spatial shape (or broadcastable to x). Missing entries of y are
    ignored. With noise_var = 0 the known voxels of ``prox`` are y's, bit for bit.
    """

    def __init__(self, known: Tensor) -> None:
        self.known = known.bool()

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(self.known, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def adjoint(self, y: Tensor) -> Tensor:
        return self.forward(y)

    def prox(self, x0: Tensor, y: Tensor, noise_var: float, prior_var: float) -> Tensor:
        _check_vars(noise_var, prior_var)
        if noise_var == 0:
            return torch.where(self.known, y, x0)
        w = prior_var / (prior_var + noise_var)
        return torch.where(self.known, w * y + (1 - w) * x0, x0)


def slice_profile_matrix(n_fine: int, factor: int, profile: str = "box") -> Tensor:
    """The (n_fine / factor, n_fine) float64 matrix of thick slices: row k is the slice profile of thick
    slice k, centred on fine coordinate k f + (f - 1) / 2, its weights summing to 1.

    ``box``: 1/f on the f fine slices the thick slice covers. ``gaussian``: exp(-d^2 / 2 s^2) with FWHM = f
    fine slices (s = f / 2.3548), cut at 3 s and renormalised (rows at the ends lose their outer tail).
    """
    if profile not in SLICE_PROFILES:
        raise ValueError(f"profile must be one of {SLICE_PROFILES}, got {profile!r}")
    if factor < 1 or n_fine < factor or n_fine % factor:
        raise ValueError(f"the factor {factor} does not divide the {n_fine} fine slices")
    n_thick = n_fine // factor
    j = torch.arange(n_fine, dtype=torch.float64)
    centres = torch.arange(n_thick, dtype=torch.float64) * factor + (factor - 1) / 2
    d = j[None, :] - centres[:, None]
    if profile == "box":
        m = (d.abs() <= (factor - 1) / 2 + 1e-9).double()
    else:
        s = factor / (2 * math.sqrt(2 * math.log(2)))
        m = torch.exp(-0.5 * (d / s) ** 2) * (d.abs() <= 3 * s)
    return m / m.sum(dim=1, keepdim=True)


class SliceProfile:
    """y = M x along spatial axis ``axis``: each of the n_fine / ``factor`` thick slices is the weighted mean
    of the fine slices under its ``profile`` (``slice_profile_matrix``)."""

    def __init__(self, n_fine: int, axis: int, factor: int, profile: str = "box", spatial_dims: int = 3):
        if not 0 <= axis < spatial_dims:
            raise ValueError(f"axis must be in [0, {spatial_dims}), got {axis}")
        self.axis, self.factor, self.profile, self.spatial_dims = axis, factor, profile, spatial_dims
        self.matrix = slice_profile_matrix(n_fine, factor, profile)
        self.gram = self.matrix @ self.matrix.T  # A A^T, n_thick x n_thick

    @property
    def n_fine(self) -> int:
        return int(self.matrix.shape[1])

    def _along(self, x: Tensor, m: Tensor) -> Tensor:
        """x with its ``axis`` multiplied by m (rows out, columns in)."""
        dim = x.ndim - self.spatial_dims + self.axis
        moved = x.movedim(dim, -1)
        return (moved @ m.T.to(dtype=x.dtype, device=x.device)).movedim(-1, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self._along(x, self.matrix)

    def adjoint(self, y: Tensor) -> Tensor:
        return self._along(y, self.matrix.T)

    def prox(self, x0: Tensor, y: Tensor, noise_var: float, prior_var: float) -> Tensor:
        _check_vars(noise_var, prior_var)
        lam = noise_var / prior_var
        inverse = torch.linalg.inv(self.gram + lam * torch.eye(len(self.gram), dtype=torch.float64))
        return x0 + self.adjoint(self._along(y - self.forward(x0), inverse))
