"""Analytic densities with exact log p and score: test fixtures and toy benchmarks.

Both classes work on flattened vectors of dimension d; ``event_shape`` lets samples and scores take
the shape of images (1, H, W) or volumes (1, D, H, W) so the same fixtures exercise every rank.
``perturbed(sigma)`` is the density convolved with N(0, sigma^2 I), again in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class Gaussian:
    """N(mean, cov) with cov either a (d,) diagonal or a full (d, d) matrix."""

    def __init__(self, mean: Tensor, cov: Tensor, event_shape: Sequence[int] | None = None) -> None:
        self.mean = mean.reshape(-1)
        d = self.mean.numel()
        self.diagonal = cov.ndim == 1
        if self.diagonal and cov.shape != (d,) or not self.diagonal and cov.shape != (d, d):
            raise ValueError(f"cov must be ({d},) or ({d}, {d}), got {tuple(cov.shape)}")
        self.cov = cov
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold {d} values")
        if not self.diagonal:
            self._chol = torch.linalg.cholesky(cov)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def log_prob(self, x: Tensor) -> Tensor:
        diff = self._flat(x) - self.mean
        if self.diagonal:
            maha = (diff**2 / self.cov).sum(1)
            logdet = torch.log(self.cov).sum()
        else:
            z = torch.linalg.solve_triangular(self._chol, diff.T, upper=False)
            maha = (z**2).sum(0)
            logdet = 2 * torch.log(torch.diagonal(self._chol)).sum()
        return -0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def score(self, x: Tensor) -> Tensor:
        """grad log p(x) = -cov^{-1} (x - mean)."""
        diff = self._flat(x) - self.mean
        if self.diagonal:
            s = -diff / self.cov
        else:
            s = -torch.cholesky_solve(diff.T, self._chol).T
        return s.reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        x = self.mean + (z * self.cov.sqrt() if self.diagonal else z @ self._chol.T)
        return x.reshape(n, *self.event_shape)

    def perturbed(self, sigma: float) -> Gaussian:
        """N(mean, cov + sigma^2 I): the law of x + sigma * eps."""
        s2 = sigma**2
        cov = self.cov + s2 if self.diagonal else self.cov + s2 * torch.eye(self.dim, dtype=self.cov.dtype)
        return Gaussian(self.mean, cov, self.event_shape)

    def expected_sq_score_norm(self) -> float:
        """E |grad log p|^2 = tr(cov^{-1}) (the Fisher information's trace)."""
        if self.diagonal:
            return float((1 / self.cov).sum())
        return float(torch.cholesky_inverse(self._chol).trace())


class GaussianMixture:
    """sum_k w_k N(means_k, covs_k), covs either (K, d) diagonals or (K, d, d) full matrices."""

    def __init__(
        self, weights: Tensor, means: Tensor, covs: Tensor, event_shape: Sequence[int] | None = None
    ) -> None:
        if weights.ndim != 1 or means.shape[0] != weights.shape[0] or covs.shape[0] != weights.shape[0]:
            raise ValueError("weights (K,), means (K, d) and covs (K, ...) must agree on K")
        if not torch.allclose(weights.sum(), torch.ones((), dtype=weights.dtype)):
            raise ValueError(f"weights must sum to one, got {float(weights.sum())}")
        self.weights = weights
        self.components = [Gaussian(m, c, event_shape) for m, c in zip(means, covs, strict=True)]
        self.event_shape = self.components[0].event_shape

        self._diagonal = all(c.diagonal for c in self.components)
        if self._diagonal:  # vectorised over components: the samplers call score() thousands of times
            self._means = torch.stack([c.mean for c in self.components])  # (K, d)
            self._vars = torch.stack([c.cov for c in self.components])  # (K, d)

    @property
    def dim(self) -> int:
        return self.components[0].dim

    def _log_joint(self, x: Tensor) -> Tensor:  # (N, K): log w_k + log N_k(x)
        if self._diagonal:
            diff = x.reshape(x.shape[0], 1, -1) - self._means  # (N, K, d)
            logdet = torch.log(self._vars).sum(1)
            log_n = -0.5 * ((diff**2 / self._vars).sum(2) + logdet + self.dim * math.log(2 * math.pi))
            return log_n + torch.log(self.weights)
        return torch.stack([c.log_prob(x) for c in self.components], 1) + torch.log(self.weights)

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._log_joint(x), 1)

    def responsibilities(self, x: Tensor) -> Tensor:
        return torch.softmax(self._log_joint(x), 1)

    def score(self, x: Tensor) -> Tensor:
        """grad log p = sum_k r_k(x) grad log N_k(x), with r_k the posterior responsibilities."""
        r = self.responsibilities(x)  # (N, K)
        if self._diagonal:
            diff = x.reshape(x.shape[0], 1, -1) - self._means
            return -(r.unsqueeze(-1) * diff / self._vars).sum(1).reshape(x.shape)
        scores = torch.stack([c.score(x).reshape(x.shape[0], -1) for c in self.components], 1)  # (N, K, d)
        return (r.unsqueeze(-1) * scores).sum(1).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        draws = torch.stack([c.sample(n, generator).reshape(n, -1) for c in self.components], 1)
        return draws[torch.arange(n), k].reshape(n, *self.event_shape)

    def perturbed(self, sigma: float) -> GaussianMixture:
        comps = [c.perturbed(sigma) for c in self.components]
        means = torch.stack([c.mean for c in comps])
        covs = torch.stack([c.cov for c in comps])
        return GaussianMixture(self.weights, means, covs, self.event_shape)
