"""Score-matching objectives: ESM, ISM, DSM, SSM and SSM-VR as unreduced per-sample losses.

Conventions follow the lecture (no factor 1/2): for a score model s and data density p,

    ESM = E |s(x) - grad log p(x)|^2
    ISM = E [ |s(x)|^2 + 2 div s(x) ]          = ESM - E |grad log p|^2
    DSM = E |s(x~) + (x~ - x) / sigma^2|^2      = ESM on p_sigma + const
    SSM = E [ (v^T s)^2 + 2 v^T J_s v ],  SSM-VR = E [ |s|^2 + 2 v^T J_s v ],  E[v v^T] = I

Every loss takes a score function and a batch of shape (B, ...) (vectors, images or volumes) and
returns a tensor of shape (B,) in at least float32; the caller reduces. ``score_fn`` is called as
``score_fn(x)``, or ``score_fn(x, sigma)`` when a ``sigma`` is given. Reductions run in float32 even
when the network runs under autocast, because the sums over many voxels lose digits in bf16.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from volscore.jvp import JvpRules
from volscore.noise import append_dims, as_sigma_batch, randn

ScoreFn = Callable[..., Tensor]


def _acc(t: Tensor) -> Tensor:
    """Accumulation precision: at least float32 (bf16/fp16 outputs are promoted, float64 kept)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _score(score_fn: ScoreFn, x: Tensor, sigma: Tensor | None) -> Tensor:
    out = score_fn(x) if sigma is None else score_fn(x, sigma)
    if out.shape != x.shape:
        raise ValueError(f"score_fn returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    return _acc(out)


def _sum_per_sample(t: Tensor) -> Tensor:
    return _acc(t).flatten(1).sum(1)


def esm_loss(score_fn: ScoreFn, x: Tensor, true_score: Tensor, sigma: Tensor | float | None = None) -> Tensor:
    """Explicit score matching |s(x) - grad log p(x)|^2 per sample (needs the true score)."""
    sig = None if sigma is None else as_sigma_batch(sigma, x.shape[0], x.device)
    s = _score(score_fn, x, sig)
    return _sum_per_sample((s - _acc(true_score)) ** 2)


def ism_loss(score_fn: ScoreFn, x: Tensor, sigma: Tensor | float | None = None) -> Tensor:
    """Implicit score matching |s|^2 + 2 div s with the exact divergence.

    The divergence costs one backward pass per input dimension, so this is for small d only
    (toy densities, d up to a few hundred); use ``ssm_loss`` beyond that.
    """
    sig = None if sigma is None else as_sigma_batch(sigma, x.shape[0], x.device)
    x = x.detach().requires_grad_(True)
    s = _score(score_fn, x, sig)
    s_flat = s.flatten(1)
    d = s_flat.shape[1]
    div = torch.zeros(x.shape[0], dtype=s.dtype, device=x.device)
    for i in range(d):
        # Samples are independent, so d(sum_b s_b,i)/dx_b,i is the i-th diagonal entry of each J_b.
        g = torch.autograd.grad(s_flat[:, i].sum(), x, create_graph=True)[0]
        div = div + _acc(g.flatten(1)[:, i])
    return _sum_per_sample(s**2) + 2.0 * div


def dsm_loss(
    score_fn: ScoreFn,
    x: Tensor,
    sigma: Tensor | float,
    weighting: str = "none",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Denoising score matching |s(x~, sigma) + (x~ - x) / sigma^2|^2 with x~ = x + sigma * eps.

    ``sigma`` is a float or per-sample (B,) tensor. ``weighting="sigma2"`` multiplies by
    lambda(sigma) = sigma^2 (NCSN), which makes every noise level an O(1) noise-prediction error
    |sigma * s + eps|^2 and balances the levels.
    """
    sig = as_sigma_batch(sigma, x.shape[0], x.device)
    eps = randn(x.shape, generator, x.device, x.dtype) if noise is None else noise
    sig_b = append_dims(sig, x.ndim).to(x.dtype)
    x_noisy = x + sig_b * eps
    s = _score(score_fn, x_noisy, sig)
    target = -_acc(eps) / append_dims(sig, x.ndim).to(s.dtype)  # = -(x~ - x) / sigma^2
    loss = _sum_per_sample((s - target) ** 2)
    if weighting == "sigma2":
        loss = loss * sig.to(loss.dtype) ** 2
    elif weighting != "none":
        raise ValueError(f"unknown weighting {weighting!r}; use 'none' or 'sigma2'")
    return loss


def _projections(
    shape: torch.Size, kind: str, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    if kind == "gaussian":
        return randn(shape, generator, device, dtype)
    if kind == "rademacher":
        gen_device = generator.device if generator is not None else device
        return (torch.randint(0, 2, shape, generator=generator, device=gen_device) * 2 - 1).to(device, dtype)
    raise ValueError(f"unknown projection {kind!r}; use 'gaussian' or 'rademacher'")


def _score_and_jvp(score_fn: ScoreFn, x: Tensor, sigma: Tensor | None, v: Tensor) -> tuple[Tensor, Tensor]:
    """s(x) and J_s(x) v from one forward pass that carries the tangent v (forward-mode AD).

    Both come out as ordinary tensors whose autograd graph runs through the tangent computation, so the
    training backward differentiates the jvp in the parameters (reverse over forward).
    """
    with fwAD.dual_level(), JvpRules():
        s, jv = fwAD.unpack_dual(_score(score_fn, fwAD.make_dual(x, v), sigma))
    # No tangent means s does not depend on x: J = 0.
    return s, torch.zeros_like(s) if jv is None else jv


def ssm_loss(
    score_fn: ScoreFn,
    x: Tensor,
    n_projections: int = 1,
    projection: str = "gaussian",
    variance_reduced: bool = False,
    sigma: Tensor | float | None = None,
    method: str = "exact",
    fd_eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced score matching (Song et al. 2019), an unbiased estimate of ISM without the divergence.

    ``method`` says how v^T J v is computed:
    - ``"exact"``: a vector-Jacobian product grad_x (v . s) = J^T v, then dot with v, with
      ``create_graph=True`` so training back-propagates through it (reverse over reverse, a double
      backward);
    - ``"forward"``: the Jacobian-vector product J v by forward-mode AD, s and J v from one forward pass
      carrying the tangent v, then v . (J v); training back-propagates through the tangent computation
      (reverse over forward). The same number as "exact" up to rounding; no backward pass is recorded
      and then differentiated, and ``volscore.jvp`` gives convolutions, GroupNorm and SiLU cheaper rules
      than torch's, which makes it the faster of the two on CPU (``scripts/bench_perf.py``). Every
      operation of ``score_fn`` needs a forward-mode formula (torch's operators have them; a custom
      ``autograd.Function`` needs a ``jvp``);
    - ``"fd"``: see below.
    ``variance_reduced=True`` (SSM-VR) replaces (v^T s)^2 by its expectation |s|^2.
    ``method="fd"`` is FD-SSM (Pang et al. 2020): v^T J v ~ v . (s(x + eps v) - s(x - eps v)) / (2 eps)
    from two forward passes and no double backward; its bias is O(eps^2) (zero for a linear score).
    Projections are averaged over ``n_projections`` copies of the batch.
    """
    b = x.shape[0]
    sig = None if sigma is None else as_sigma_batch(sigma, b, x.device)
    xr = x.detach().repeat_interleave(n_projections, dim=0)  # (B * M, ...)
    sig_r = None if sig is None else sig.repeat_interleave(n_projections)
    v = _projections(xr.shape, projection, generator, x.device, x.dtype)
    if method == "exact":
        xr.requires_grad_(True)
        s = _score(score_fn, xr, sig_r)
        jv = torch.autograd.grad((s * v).sum(), xr, create_graph=True)[0]  # J^T v
        vjv = _sum_per_sample(v * jv)
    elif method == "forward":
        s, jv = _score_and_jvp(score_fn, xr, sig_r, v)
        vjv = _sum_per_sample(v * _acc(jv))
    elif method == "fd":
        # Both evaluations in one batch: one forward over 2BM samples.
        pair = torch.cat([xr + fd_eps * v, xr - fd_eps * v])
        sig_pair = None if sig_r is None else torch.cat([sig_r, sig_r])
        s_plus, s_minus = _score(score_fn, pair, sig_pair).chunk(2)
        vjv = _sum_per_sample(v * (s_plus - s_minus)) / (2 * fd_eps)
        s = 0.5 * (s_plus + s_minus)  # s(x) up to O(eps^2)
    else:
        raise ValueError(f"unknown method {method!r}; use 'exact', 'forward' or 'fd'")
    norm = _sum_per_sample(s**2) if variance_reduced else _sum_per_sample(v * s) ** 2
    loss = norm + 2.0 * vjv
    return loss.view(b, n_projections).mean(1)
