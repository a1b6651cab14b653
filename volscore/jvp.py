"""Forward-mode rules for a score network's Jacobian-vector product J v (``ssm_loss(method="forward")``).

Within ``JvpRules()`` (inside an open ``torch.autograd.forward_ad.dual_level``), three functionals use the
rules below instead of torch's forward-mode formulas (torch 2.13), when only their input carries a
tangent, which is the case in SSM. The primal and the tangent are the same as torch's, and the training
backward through them gives the same gradients (tests/test_jvp.py compares them with torch's formulas in
float64; tests/test_objectives.py compares whole networks with reverse over reverse):

- ``conv1d/2d/3d``: torch's formula is conv(x_t, W) + conv(x, W_t, b_t), and a weight without a tangent
  enters it as a zero tensor, so every layer runs a third, all-zero convolution, in the forward pass and
  again in the backward (a third of the convolutions of a training step). Here conv(x, W, b) and
  conv(x_t, W) are joined with ``make_dual``; the tangent keeps its autograd history.
- ``group_norm``: torch's tangent formula records about ten full-size operations; with their backward a
  GroupNorm cost six times its plain forward and backward, a quarter of the SSM step on a CPU.
  ``_GroupNormJvp`` computes the tangent with GroupNorm's own backward kernel and differentiates it in
  closed form (about three times a plain GroupNorm). It also avoids two failures of torch's formula:
  under CPU autocast GroupNorm keeps a bf16 input with float32 weights and returns bf16, but the formula
  gives that bf16 primal a float32 tangent, and the next autocast convolution, which casts by the
  primal's dtype, fails ("Input type (torch.FloatTensor) and weight type (CPUBFloat16Type) should be the
  same"); and on channels-last input the formula fails ("view size is not compatible").
- ``silu``: torch's tangent is a five-operation composite (recorded, so the backward differentiates each
  one); ``_SiLUJvp`` uses the fused SiLU backward kernel for the tangent and writes silu'' out in its
  backward. It returns a new tensor even for ``inplace=True``: callers must use the result, as every
  ``F.silu(h, inplace=True)`` in ``ScoreUNet`` does.
Every other operation (interpolate, cat, addcmul, replicate padding, linear, slicing) keeps torch's own
formula: each is linear or cheap, computes the right tangent and is differentiable in reverse mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

_CONVS = (F.conv1d, F.conv2d, F.conv3d)


def _tangent(t: Any) -> Tensor | None:
    return fwAD.unpack_dual(t).tangent if isinstance(t, Tensor) else None


def _only_input_has_tangent(x: Tensor, *params: Any) -> bool:
    return _tangent(x) is not None and all(_tangent(p) is None for p in params)


def _conv(func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    x, weight, *rest = args
    bias = rest.pop(0) if rest else kwargs.pop("bias", None)
    if not _only_input_has_tangent(x, weight, bias):
        return func(x, weight, bias, *rest, **kwargs)
    x_p, x_t = fwAD.unpack_dual(x)
    return fwAD.make_dual(func(x_p, weight, bias, *rest, **kwargs), func(x_t, weight, None, *rest, **kwargs))


def _group_norm(func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    names = ("input", "num_groups", "weight", "bias", "eps")  # F.group_norm's parameters
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    x, weight, bias = bound["input"], bound.get("weight"), bound.get("bias")
    if not _only_input_has_tangent(x, weight, bias):
        return func(*args, **kwargs)
    x_p, x_t = fwAD.unpack_dual(x)
    # CUDA autocast runs group_norm in float32; CPU autocast and plain calls return the input's dtype.
    upcast = x_p.device.type == "cuda" and torch.is_autocast_enabled("cuda")
    out_dtype = torch.promote_types(x_p.dtype, torch.float32) if upcast else x_p.dtype
    groups, eps = int(bound["num_groups"]), float(bound.get("eps", 1e-5))
    return fwAD.make_dual(*_GroupNormJvp.apply(x_p, x_t, weight, bias, groups, eps, out_dtype))


def _silu(func: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    x = args[0] if args else kwargs["input"]
    if not _only_input_has_tangent(x):
        return func(*args, **kwargs)
    return fwAD.make_dual(*_SiLUJvp.apply(*fwAD.unpack_dual(x)))


_RULES = {**{conv: _conv for conv in _CONVS}, F.group_norm: _group_norm, F.silu: _silu}


class JvpRules(TorchFunctionMode):
    """Context manager: this module's forward-mode rules for the code inside (within ``fwAD.dual_level``)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        rule = _RULES.get(func)
        return func(*args, **(kwargs or {})) if rule is None else rule(func, args, dict(kwargs or {}))


def _group_sum(per_channel: Tensor, groups: int) -> Tensor:
    """(N, C) per-channel values summed over each group's channels: (N, G)."""
    return per_channel.reshape(per_channel.shape[0], groups, -1).sum(-1)


def _channels(per_group: Tensor, like: Tensor) -> Tensor:
    """(N, G) per-group values repeated for each channel of the group, shaped (N, C, 1, ...) like ``like``."""
    n, c = like.shape[:2]
    return per_group.repeat_interleave(c // per_group.shape[1], dim=1).reshape(n, c, *([1] * (like.ndim - 2)))


def _dots(a: Tensor, b: Tensor) -> Tensor:
    """Sums of a * b over space per sample and channel: (N, C)."""
    return torch.linalg.vecdot(a.flatten(2), b.flatten(2))


class _GroupNormJvp(torch.autograd.Function):
    """(x, a) -> (GroupNorm(x), its tangent in direction a), with a closed-form backward.

    Per sample and group of M elements: x^ = (x - mu) r, r = (var + eps)^-1/2, y = w x^ + b. Its tangent
    is x^_t = r P(a) with P(a) = a - mean(a) - x^ mean(x^ a), the same (symmetric) map as GroupNorm's
    backward with unit weight, so the tangent is one backward kernel call; y_t = w x^_t. With dL/dy = G,
    dL/dy_t = H and h = w H (sums and means over a group, sums per channel for w and b):
        dL/da = r P(h)                                    GroupNorm's backward of H
        dL/db = sum G,  dL/dw = sum G x^ + sum H x^_t      GroupNorm's backward of G, plus sum H x^_t
        dL/dx = r P(w G) - r^2 P(k h + m a) - r mean(h x^_t) x^,   k = mean(x^ a), m = mean(h x^)
    where r P(w G) is GroupNorm's backward of G and the other two terms expand to
    -r^2 k h - r^2 m a + (2 r^2 k m - r mean(h x^_t)) x^ + r^2 (k mean(h) + m mean(a)),
    needing only per-channel sums of a, H, H a, H (x - mu) and a (x - mu).
    Computed in float32 at least (the weights' dtype); y and y_t returned in ``out_dtype``, the gradients
    in the dtypes of x and a.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        a: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        groups: int,
        eps: float,
        out_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        n, c = x.shape[:2]
        size = x[0, 0].numel()
        dtype = torch.promote_types(x.dtype, torch.float32 if weight is None else weight.dtype)
        with torch.autocast(x.device.type, enabled=False):
            xc, ac = x.to(dtype), a.to(dtype)
            y, mean, rstd = torch.ops.aten.native_group_norm(xc, weight, bias, n, c, size, groups, eps)
            mask = [True, False, False]
            u = torch.ops.aten.native_group_norm_backward(ac, xc, mean, rstd, None, n, c, size, groups, mask)[
                0
            ]
            y_t = u if weight is None else u * weight.reshape(1, c, *([1] * (x.ndim - 2)))
        ctx.save_for_backward(xc, ac, weight, mean, rstd)
        ctx.groups, ctx.dtypes = groups, (x.dtype, a.dtype)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: its terms are skipped
        return y.to(out_dtype), y_t.to(out_dtype)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor | None, grad_t: Tensor | None) -> tuple[Tensor | None, ...]:
        x, a, weight, mean, rstd = ctx.saved_tensors
        groups = ctx.groups
        n, c = x.shape[:2]
        size = x[0, 0].numel()
        _, _, want_w, want_b, *_ = ctx.needs_input_grad
        with torch.autocast(x.device.type, enabled=False):
            grad_y = torch.zeros_like(x) if grad_y is None else grad_y.to(x.dtype)
            dx, dw, db = torch.ops.aten.native_group_norm_backward(
                grad_y, x, mean, rstd, weight, n, c, size, groups, [True, want_w, want_b]
            )
            da = None
            if grad_t is not None:
                h = grad_t.to(x.dtype)
                mask = [True, False, False]
                da = torch.ops.aten.native_group_norm_backward(
                    h, x, mean, rstd, weight, n, c, size, groups, mask
                )[0]
                w = torch.ones(c, dtype=x.dtype, device=x.device) if weight is None else weight
                centred = x - _channels(mean, x)  # sums of (x - mu) products: no cancellation if |mu| >> std
                per_group = size * c // groups
                r = rstd
                sum_a, sum_h = a.flatten(2).sum(-1), h.flatten(2).sum(-1)
                hx, ha = _dots(h, centred), _dots(h, a)
                mean_a = _group_sum(sum_a, groups) / per_group
                mean_h = _group_sum(sum_h * w, groups) / per_group
                k = r * _group_sum(_dots(centred, a), groups) / per_group  # mean(x^ a)
                m = r * _group_sum(hx * w, groups) / per_group  # mean(h x^)
                # per-channel sums of H x^_t, with x^_t = r (a - mean(a) - k r (x - mu))
                hu = _channels(r, ha) * (ha - _channels(mean_a, ha) * sum_h - _channels(k * r, ha) * hx)
                m_hu = _group_sum(hu * w, groups) / per_group  # mean(h x^_t)
                dx.addcmul_(_channels(-r * r * k, x) * w.reshape(1, c, *([1] * (x.ndim - 2))), h)
                dx.addcmul_(_channels(-r * r * m, x), a)
                dx.addcmul_(_channels((2 * r * k * m - m_hu) * r * r, x), centred)
                dx.add_(_channels(r * r * (k * mean_h + m * mean_a), x))
                if want_w:
                    dw = dw + hu.sum(0)
        x_dtype, a_dtype = ctx.dtypes
        return dx.to(x_dtype), None if da is None else da.to(a_dtype), dw, db, None, None, None


class _SiLUJvp(torch.autograd.Function):
    """(x, a) -> (silu(x), silu'(x) a), with silu'' written out in the backward:
    dL/dx = silu'(x) G + silu''(x) a H,  dL/da = silu'(x) H,
    silu''(x) = s (1 - s) (2 + x (1 - 2 s)),  s = sigmoid(x).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        a = a.to(x.dtype)
        ctx.save_for_backward(x, a)
        ctx.set_materialize_grads(False)
        return F.silu(x), torch.ops.aten.silu_backward(a, x)

    @staticmethod
    def backward(
        ctx: Any, grad_y: Tensor | None, grad_t: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        x, a = ctx.saved_tensors
        dx = None if grad_y is None else torch.ops.aten.silu_backward(grad_y, x)
        if grad_t is None:
            return dx, None
        s = torch.sigmoid(x)
        # In place on fresh tensors: silu''(x) a H in four full-size temporaries fewer.
        second = s.mul(-2).add_(1).mul_(x).add_(2).mul_(s).mul_(s.neg_().add_(1)).mul_(grad_t).mul_(a)
        dx = second if dx is None else dx.add_(second)
        return dx, torch.ops.aten.silu_backward(grad_t, x)
