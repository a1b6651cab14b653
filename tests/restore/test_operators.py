"""Tests for volscore.restore.operators: adjointness, the slice profiles, the mask and the proximal step."""

from __future__ import annotations

import pytest
import torch

from volscore.restore.operators import SLICE_PROFILES, Identity, Mask, SliceProfile, slice_profile_matrix

G = torch.Generator().manual_seed(0)


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def _operators(shape=(10, 12, 15)):
    known = torch.rand(shape, generator=G) < 0.6
    ops = [Identity(), Mask(known)]
    ops += [SliceProfile(shape[a], a, f, p) for a, f in ((0, 2), (1, 4), (2, 5)) for p in SLICE_PROFILES]
    return ops


@pytest.mark.parametrize("op", _operators(), ids=lambda o: f"{type(o).__name__}{getattr(o, 'axis', '')}")
def test_adjoint(op) -> None:
    """<A x, y> = <x, A^T y> to float64 rounding."""
    x = _rand(2, 1, 10, 12, 15)
    y = _rand(*op.forward(x).shape)
    lhs = (op.forward(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", _operators(), ids=lambda o: f"{type(o).__name__}{getattr(o, 'axis', '')}")
def test_prox_is_the_minimiser(op) -> None:
    """The gradient of |y - A u|^2 / nv + |u - x0|^2 / pv vanishes at prox; nv = 0 meets A u = y."""
    x0 = _rand(1, 1, 10, 12, 15)
    y = op.forward(_rand(1, 1, 10, 12, 15))
    nv, pv = 0.3, 0.7
    u = op.prox(x0, y, nv, pv)
    grad = op.adjoint(op.forward(u) - y) / nv + (u - x0) / pv
    assert grad.abs().max() < 1e-10
    exact = op.prox(x0, y, 0.0, pv)
    torch.testing.assert_close(op.forward(exact), y, rtol=0, atol=1e-10)


def test_box_profile_is_the_mean_of_factor_slices() -> None:
    m = slice_profile_matrix(10, 5, "box")
    expected = torch.zeros(2, 10, dtype=torch.float64)
    expected[0, :5] = expected[1, 5:] = 0.2
    torch.testing.assert_close(m, expected)


def test_gaussian_profile_is_centred_with_fwhm_of_the_thickness() -> None:
    m = slice_profile_matrix(40, 4, "gaussian")
    torch.testing.assert_close(m.sum(1), torch.ones(10, dtype=torch.float64))
    j = torch.arange(40, dtype=torch.float64)
    row = m[5]  # an inner slice, centred on 5 * 4 + 1.5 = 21.5
    torch.testing.assert_close((row * j).sum(), torch.tensor(21.5, dtype=torch.float64))
    # half maximum at +- 2 fine slices (FWHM 4): the weights at 19.5 and 23.5 would be half the peak's
    s = 4 / 2.3548200450309493
    assert abs(float(torch.exp(torch.tensor(-0.5 * (2 / s) ** 2))) - 0.5) < 1e-6
    assert float(row[21]) == pytest.approx(float(row[22]))


def test_factor_that_does_not_divide_is_refused() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        slice_profile_matrix(10, 4)
    with pytest.raises(ValueError, match="profile"):
        slice_profile_matrix(10, 5, "sinc")


def test_mask_keeps_known_voxels_bit_for_bit() -> None:
    known = torch.rand(6, 7, 8, generator=G) < 0.5
    y = torch.rand(1, 1, 6, 7, 8, generator=G) * 1000 + 1e-3
    x0 = torch.rand(1, 1, 6, 7, 8, generator=G)
    u = Mask(known).prox(x0, y, 0.0, 0.01)
    assert torch.equal(u[0, 0][known], y[0, 0][known])
    assert torch.equal(u[0, 0][~known], x0[0, 0][~known])


def test_negative_variances_are_refused() -> None:
    with pytest.raises(ValueError, match="noise_var"):
        Identity().prox(torch.zeros(1), torch.zeros(1), -1.0, 1.0)
    with pytest.raises(ValueError, match="noise_var"):
        Identity().prox(torch.zeros(1), torch.zeros(1), 1.0, 0.0)
