"""Preconditioning: a network F becomes a denoiser D(x, sigma) and a score (D - x) / sigma^2.

EDM (Karras et al. 2022, Table 1):  D = c_skip x + c_out F(c_in x, c_noise) with
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4,     sd = sigma_data.
NCSNv2 (Song & Ermon 2020) is the special case score = F / sigma, i.e. D = x + sigma F
(c_skip = 1, c_out = sigma, c_in = 1), with the same c_noise.
The coefficients, the skip sum and the output are float32 even when F runs under autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from volscore.config import PRECONDITIONERS
from volscore.noise import append_dims, as_sigma_batch


class Preconditioner(nn.Module):
    """Wrap a net F(x, c_noise[, coords]) so that ``self(x, sigma[, coords])`` is a score function."""

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, kind: str = "edm") -> None:
        super().__init__()
        if kind not in PRECONDITIONERS:
            raise ValueError(f"kind must be one of {PRECONDITIONERS}, got {kind!r}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.kind = kind

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """c_skip, c_out, c_in, c_noise for a (B,) float32 sigma, each of shape (B,)."""
        c_noise = sigma.log() / 4
        if self.kind == "ncsnv2":
            one = torch.ones_like(sigma)
            return one, sigma, one, c_noise
        sd2 = self.sigma_data**2
        root = (sigma**2 + sd2).sqrt()
        return sd2 / root**2, sigma * self.sigma_data / root, 1 / root, c_noise

    def _net_output(
        self, x: Tensor, sigma: float | Tensor, coords: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return x and F(c_in x, c_noise) in float32, and sigma as (B,)."""
        sigma = as_sigma_batch(sigma, x.shape[0], device=x.device)
        x = x.float()
        _, _, c_in, c_noise = self.coefficients(sigma)
        f = self.net(append_dims(c_in, x.ndim) * x, c_noise, coords).float()
        return x, f, sigma

    def denoise(self, x: Tensor, sigma: float | Tensor, coords: Tensor | None = None) -> Tensor:
        """D(x, sigma): an estimate of E[x_0 | x], float32, shape of x."""
        x, f, sigma = self._net_output(x, sigma, coords)
        c_skip, c_out, _, _ = self.coefficients(sigma)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * f

    def score(self, x: Tensor, sigma: float | Tensor, coords: Tensor | None = None) -> Tensor:
        """(D(x, sigma) - x) / sigma^2, float32, shape of x.

        Expanded per kind so D - x is never formed: in float32 that difference cancels at small sigma.
        """
        x, f, sigma = self._net_output(x, sigma, coords)
        if self.kind == "ncsnv2":
            return f / append_dims(sigma, x.ndim)
        # (c_skip - 1) / sigma^2 = -1 / (sigma^2 + sd^2);  c_out / sigma^2 = sd / (sigma sqrt(sigma^2 + sd^2))
        var = sigma**2 + self.sigma_data**2
        a = -1 / var
        b = self.sigma_data / (sigma * var.sqrt())
        return append_dims(a, x.ndim) * x + append_dims(b, x.ndim) * f

    forward = score

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, sigma_data={self.sigma_data}"
