"""Tests for volscore.jvp: each forward-mode rule gives torch's primal, tangent and reverse-mode gradients.

For an operation f with input tangent a, the quantities SSM's training needs are y = f(x), y_t = J_f a and
the gradients of L = <G, y> + <H, y_t> in x, a and the parameters. Each rule is compared with torch's
forward-mode formula (no rules active) in float64, where both are exact up to rounding (1e-12 relative),
and with gradcheck's finite differences.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from volscore.jvp import JvpRules, _GroupNormJvp, _SiLUJvp

D = torch.float64


def _jvp(op, x: torch.Tensor, a: torch.Tensor, rules: bool) -> tuple[torch.Tensor, torch.Tensor]:
    with fwAD.dual_level(), JvpRules() if rules else contextlib.nullcontext():
        return fwAD.unpack_dual(op(fwAD.make_dual(x, a)))


def _compare_with_torch(op, x: torch.Tensor, params: list[torch.Tensor], rtol: float = 1e-12) -> None:
    g = torch.Generator().manual_seed(0)
    x = x.detach().requires_grad_(True)
    a = torch.randn(x.shape, generator=g, dtype=x.dtype).requires_grad_(True)
    ours, ref = _jvp(op, x, a, rules=True), _jvp(op, x, a, rules=False)
    for mine, theirs, what in zip(ours, ref, ("primal", "tangent"), strict=True):
        assert mine.dtype == theirs.dtype, what
        assert torch.allclose(mine, theirs, rtol=rtol, atol=0), what
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in ref]
    inputs = [x, a, *params]
    grads = [
        torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, out, strict=True)), inputs)
        for out in (ours, ref)
    ]
    for mine, theirs, name in zip(
        *grads, ("x", "a", *(f"param{i}" for i in range(len(params)))), strict=True
    ):
        err = float((mine - theirs).abs().max() / theirs.abs().max())
        assert err < rtol * 100, f"gradient in {name}: relative error {err:.2e}"


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_convolution_rule_matches_torch(dims, stride):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, *([6] * dims), generator=g, dtype=D)
    w = torch.randn(4, 3, *([3] * dims), generator=g, dtype=D, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=D, requires_grad=True)
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    _compare_with_torch(lambda y: conv(y, w, b, stride=stride, padding=1), x, [w, b])
    _compare_with_torch(lambda y: conv(y, w, padding=1), x, [w])


def test_convolution_rule_runs_two_convolutions_not_three():
    # torch's own formula convolves x with an all-zero weight tangent as well (the cost the rule removes).
    from torch.profiler import profile

    x, w = torch.randn(1, 2, 8, 8, 8), torch.randn(2, 2, 3, 3, 3)
    for rules, expected in ((True, 2), (False, 3)):
        with profile() as prof:
            _jvp(lambda y: F.conv3d(y, w, padding=1), x, torch.randn_like(x), rules)
        assert sum(e.count for e in prof.key_averages() if e.key == "aten::convolution") == expected


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(
    "shape,groups", [((2, 6, 3, 4, 5), 3), ((3, 4, 5, 5), 2), ((2, 4, 7), 4), ((2, 8, 4), 1)]
)
def test_group_norm_rule_matches_torch(shape, groups, affine):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=D) * 3 + 5
    w = torch.randn(shape[1], generator=g, dtype=D, requires_grad=True) if affine else None
    b = torch.randn(shape[1], generator=g, dtype=D, requires_grad=True) if affine else None
    _compare_with_torch(lambda y: F.group_norm(y, groups, w, b), x, [w, b] if affine else [])


def test_group_norm_and_silu_rules_pass_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 3, generator=g, dtype=D, requires_grad=True)
    a = torch.randn(2, 4, 3, 3, generator=g, dtype=D, requires_grad=True)
    w = torch.randn(4, generator=g, dtype=D, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: _GroupNormJvp.apply(*t, 2, 1e-5, D), (x, a, w, b))
    assert torch.autograd.gradcheck(_SiLUJvp.apply, (x, a))


def test_group_norm_rule_is_as_accurate_as_torch_in_float32_for_a_large_mean():
    # |mean| = 1000 std: float32 sums of x * a would cancel; the rule sums (x - mean) * a instead.
    g = torch.Generator().manual_seed(4)
    x64 = torch.randn(2, 4, 6, 6, generator=g, dtype=D) + 1000.0
    a64, gt = torch.randn(x64.shape, generator=g, dtype=D), torch.randn(x64.shape, generator=g, dtype=D)

    def grad_x(dtype: torch.dtype, rules: bool) -> torch.Tensor:
        x = x64.to(dtype).requires_grad_(True)
        _, y_t = _jvp(lambda y: F.group_norm(y, 2), x, a64.to(dtype), rules)
        return torch.autograd.grad((y_t * gt.to(dtype)).sum(), x)[0].double()

    exact = grad_x(D, rules=False)
    err = {
        rules: float((grad_x(torch.float32, rules) - exact).abs().max() / exact.abs().max())
        for rules in (True, False)
    }
    assert err[True] <= 1.5 * err[False], err


def test_silu_rule_matches_torch_in_place_or_not():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(5), dtype=D)
    _compare_with_torch(F.silu, x, [])
    # inplace=True: the rule returns a new tensor (ScoreUNet uses the result); values are torch's
    _compare_with_torch(lambda y: F.silu(y * 1.0, inplace=True), x, [])


def test_only_an_input_tangent_uses_the_rules():
    # A weight with a tangent (not SSM's case) goes through torch's own formula, still correct.
    g = torch.Generator().manual_seed(6)
    x, w = torch.randn(2, 3, 5, generator=g, dtype=D), torch.randn(4, 3, 3, generator=g, dtype=D)
    w_t = torch.randn(w.shape, generator=g, dtype=D)
    with fwAD.dual_level(), JvpRules():
        _, t = fwAD.unpack_dual(F.conv1d(fwAD.make_dual(x, torch.zeros_like(x)), fwAD.make_dual(w, w_t)))
    assert torch.allclose(t, F.conv1d(x, w_t))


def test_cpu_bf16_autocast_needs_the_group_norm_rule():
    """torch 2.13's own GroupNorm formula gives a bf16 primal a float32 tangent under CPU autocast, and the
    next convolution refuses it. If torch fixes this, the first half of this test fails: the dtype part of
    the rule can then go (its speed part stays)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 6, 6, 6, generator=g)
    w1, w2 = torch.randn(4, 4, 3, 3, 3, generator=g), torch.randn(2, 4, 3, 3, 3, generator=g)
    gamma, beta = torch.randn(4, generator=g), torch.randn(4, generator=g)

    def net(y):
        return F.conv3d(F.silu(F.group_norm(F.conv3d(y, w1, padding=1), 2, gamma, beta)), w2, padding=1)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="should be the same"):
            _jvp(net, x, torch.randn_like(x), rules=False)
        y, y_t = _jvp(net, x, torch.randn_like(x), rules=True)
    assert y.dtype == y_t.dtype == torch.bfloat16


def test_channels_last_inputs():
    # torch 2.13's own GroupNorm formula fails on channels-last input ("view size is not compatible"),
    # so --channels-last needs the rule; compare with the contiguous layout instead.
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 4, 5, 6, 7, generator=g, dtype=D)
    a = torch.randn(x.shape, generator=g, dtype=D)
    w = torch.randn(4, generator=g, dtype=D)

    def op(y):
        return F.silu(F.group_norm(y, 2, w))

    last = x.to(memory_format=torch.channels_last_3d)
    with pytest.raises(RuntimeError, match="view size"):
        _jvp(op, last, a.to(memory_format=torch.channels_last_3d), rules=False)
    ours = _jvp(op, last, a.to(memory_format=torch.channels_last_3d), rules=True)
    for mine, theirs in zip(ours, _jvp(op, x, a, rules=False), strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-12, atol=1e-14)
