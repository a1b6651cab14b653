"""Tests for volscore.objectives: the lecture's identities checked against closed-form Gaussians.

Each identity holds in expectation; we compare sample means of per-sample differences with zero (or
with the closed-form constant) within 4 Monte Carlo standard errors of that same difference, so a
wrong sign or a factor of 2 moves the mean by many standard errors (the assertions say how far).
Everything runs in float64 with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

from volscore.densities import Gaussian
from volscore.objectives import dsm_loss, esm_loss, ism_loss, ssm_loss

N = 20000


@pytest.fixture(autouse=True)
def _float64():
    """This module's maths runs in float64; restore the default so other test modules are unaffected."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _gaussian(d: int = 3, event_shape=None) -> Gaussian:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(d, d, generator=g) * 0.4
    cov = a @ a.T + 0.5 * torch.eye(d)
    mean = torch.linspace(-0.5, 0.5, d)
    return Gaussian(mean, cov, event_shape)


def _linear_score(d: int):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(d, d, generator=g) * 0.5 - torch.eye(d)  # tr(A) clearly negative
    b = torch.randn(d, generator=g) * 0.3

    def score(x):
        return (x.reshape(x.shape[0], -1) @ a.T + b).reshape(x.shape)

    return score, a


def _tanh_score(d: int):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(d, d, generator=g)
    c = torch.randn(d, generator=g)

    def score(x):
        return (torch.tanh(x.reshape(x.shape[0], -1) @ w.T) * c - 0.7 * x.reshape(x.shape[0], -1)).reshape(
            x.shape
        )

    return score


def _assert_mean(values: torch.Tensor, expected: float, what: str) -> None:
    values = values.detach()
    se = float(values.std()) / math.sqrt(values.numel())
    err = float(values.mean()) - expected
    assert abs(err) < 4 * se + 1e-12, f"{what}: mean off by {err:.4g}, {abs(err) / max(se, 1e-300):.1f} SE"


@pytest.mark.parametrize("which", ["linear", "tanh"])
def test_ism_equals_esm_minus_fisher(which):
    p = _gaussian()
    x = p.sample(N, torch.Generator().manual_seed(0))
    score = _linear_score(3)[0] if which == "linear" else _tanh_score(3)
    true = p.score(x)
    diff = ism_loss(score, x) - (esm_loss(score, x, true) - (true**2).sum(1))
    _assert_mean(diff, 0.0, "ISM - (ESM - E|grad log p|^2)")
    # The check has teeth: dropping the factor 2 on the divergence moves the mean by E[div s],
    # which is more than 20 standard errors away here.
    x_req = x.clone().requires_grad_(True)
    s = score(x_req)
    div = sum(torch.autograd.grad(s[:, i].sum(), x_req, retain_graph=True)[0][:, i] for i in range(3))
    se = float(diff.detach().std()) / math.sqrt(N)
    assert abs(float(div.mean())) > 20 * se


def test_optimal_ism_is_negative():
    p = _gaussian()
    x = p.sample(N, torch.Generator().manual_seed(4))
    ism = ism_loss(p.score, x)
    # At the true score ISM = -E|grad log p|^2 = -tr(cov^{-1}) < 0 (the lecture's remark).
    _assert_mean(ism, -p.expected_sq_score_norm(), "ISM at the true score")
    assert float(ism.mean()) < 0


def test_dsm_minus_esm_is_the_same_closed_form_constant():
    p = _gaussian()
    sigma = 0.5
    ps = p.perturbed(sigma)
    g = torch.Generator().manual_seed(5)
    x0 = p.sample(N, g)
    eps = torch.randn(x0.shape, generator=g)
    x_noisy = x0 + sigma * eps
    # E|grad log p(x~|x0)|^2 - E|grad log p_sigma|^2 = d / sigma^2 - tr((cov + sigma^2 I)^{-1}).
    const = 3 / sigma**2 - ps.expected_sq_score_norm()
    diffs = []
    for score in (_linear_score(3)[0], _tanh_score(3)):
        dsm = dsm_loss(lambda x, s, f=score: f(x), x0, sigma, noise=eps)
        esm = esm_loss(score, x_noisy, ps.score(x_noisy))
        diffs.append(dsm - esm)
        _assert_mean(dsm - esm, const, "DSM - ESM on p_sigma")
    # The same constant for both score functions (paired on the same noise, so the SE is small).
    _assert_mean(diffs[0] - diffs[1], 0.0, "constant differs between score functions")


def test_dsm_minimiser_is_the_perturbed_score():
    # At the true perturbed score, DSM equals the constant alone: ESM on p_sigma is zero there.
    p = _gaussian()
    sigma = 0.3
    ps = p.perturbed(sigma)
    g = torch.Generator().manual_seed(6)
    x0 = p.sample(N, g)
    dsm = dsm_loss(lambda x, s: ps.score(x), x0, sigma, generator=g)
    _assert_mean(dsm, 3 / sigma**2 - ps.expected_sq_score_norm(), "DSM at the perturbed score")


def test_dsm_per_sample_sigma_and_weighting():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 4, generator=g)
    eps = torch.randn(6, 4, generator=g)
    sigma = torch.tensor([0.1, 0.2, 0.5, 1.0, 2.0, 5.0])
    zero_score = lambda x, s: torch.zeros_like(x)  # noqa: E731
    plain = dsm_loss(zero_score, x, sigma, noise=eps)
    # With s = 0 the loss is |eps|^2 / sigma^2 exactly; lambda = sigma^2 makes it |eps|^2.
    assert torch.allclose(plain, (eps**2).sum(1) / sigma**2)
    weighted = dsm_loss(zero_score, x, sigma, weighting="sigma2", noise=eps)
    assert torch.allclose(weighted, (eps**2).sum(1))
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(zero_score, x, sigma, weighting="sigma")


EXACT_METHODS = ["exact", "forward"]  # the two ways ssm_loss differentiates v^T J v exactly


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduced", [False, True])
@pytest.mark.parametrize("which", ["linear", "tanh"])
def test_ssm_is_unbiased_for_ism(projection, variance_reduced, which, method):
    p = _gaussian()
    x = p.sample(N, torch.Generator().manual_seed(8))
    score = _linear_score(3)[0] if which == "linear" else _tanh_score(3)
    ssm = ssm_loss(
        score,
        x,
        projection=projection,
        variance_reduced=variance_reduced,
        method=method,
        generator=torch.Generator().manual_seed(9),
    )
    _assert_mean(ssm - ism_loss(score, x), 0.0, f"SSM({projection}, vr={variance_reduced}, {method}) - ISM")


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
def test_hutchinson_estimator_is_unbiased(projection, method):
    # For a linear score s = A x the Jacobian is A, so the 2 v^T J v term estimates 2 tr(A).
    score, a = _linear_score(5)
    x = torch.zeros(N, 5)  # s(0) = b: isolate the trace term with VR (|s|^2 = |b|^2 exactly)
    ssm = ssm_loss(
        score,
        x,
        projection=projection,
        variance_reduced=True,
        method=method,
        generator=torch.Generator().manual_seed(10),
    )
    trace_term = (ssm - (score(x) ** 2).sum(1)) / 2
    _assert_mean(trace_term, float(torch.trace(a)), f"Hutchinson ({projection})")
    if projection == "rademacher":
        # Rademacher's estimator has no variance from the diagonal: smaller spread than Gaussian's.
        gauss = ssm_loss(
            score,
            x,
            projection="gaussian",
            variance_reduced=True,
            method=method,
            generator=torch.Generator().manual_seed(10),
        )
        assert float(ssm.var()) < float(gauss.var())


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_more_projections_reduce_variance(method):
    p = _gaussian()
    x = p.sample(4000, torch.Generator().manual_seed(11))
    score = _tanh_score(3)
    one = ssm_loss(score, x, n_projections=1, method=method, generator=torch.Generator().manual_seed(12))
    four = ssm_loss(score, x, n_projections=4, method=method, generator=torch.Generator().manual_seed(12))
    assert one.shape == four.shape == (4000,)
    assert float(four.var()) < float(one.var())


def test_fd_ssm_matches_exact():
    p = _gaussian()
    x = p.sample(500, torch.Generator().manual_seed(13))
    lin, _ = _linear_score(3)
    for vr in (False, True):
        exact = ssm_loss(lin, x, variance_reduced=vr, generator=torch.Generator().manual_seed(14))
        fd = ssm_loss(lin, x, variance_reduced=vr, method="fd", generator=torch.Generator().manual_seed(14))
        assert torch.allclose(exact, fd, atol=1e-8)  # exact for a linear score
    tanh = _tanh_score(3)
    exact = ssm_loss(tanh, x, generator=torch.Generator().manual_seed(14))
    fd = ssm_loss(tanh, x, method="fd", fd_eps=1e-3, generator=torch.Generator().manual_seed(14))
    assert torch.allclose(exact, fd, atol=1e-4, rtol=1e-5)  # O(eps^2) truncation error


def test_losses_are_differentiable_in_parameters():
    w = torch.nn.Parameter(torch.eye(3) * -0.5)
    score = lambda x: x @ w.T  # noqa: E731
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(15))
    for loss in (
        ism_loss(score, x),
        ssm_loss(score, x, variance_reduced=True),
        ssm_loss(score, x, variance_reduced=True, method="forward"),
    ):
        (g,) = torch.autograd.grad(loss.mean(), w)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("event_shape", [(8,), (1, 2, 4), (1, 2, 2, 2)])
def test_every_rank_works_and_ism_identity_holds(event_shape):
    p = Gaussian(torch.zeros(8), torch.linspace(0.5, 2.0, 8), event_shape)
    x = p.sample(N, torch.Generator().manual_seed(16))
    assert x.shape == (N, *event_shape)
    score = _tanh_score(8)
    for loss in (
        esm_loss(score, x, p.score(x)),
        ism_loss(score, x),
        dsm_loss(lambda y, s: score(y), x, 0.2, generator=torch.Generator().manual_seed(17)),
        ssm_loss(score, x, generator=torch.Generator().manual_seed(18)),
        ssm_loss(score, x, method="forward", generator=torch.Generator().manual_seed(18)),
        ssm_loss(score, x, variance_reduced=True, method="fd"),
    ):
        assert loss.shape == (N,) and loss.dtype == torch.float32 or loss.dtype == torch.float64
    true = p.score(x)
    diff = ism_loss(score, x) - esm_loss(score, x, true) + (true**2).flatten(1).sum(1)
    _assert_mean(diff, 0.0, f"ISM identity at event shape {event_shape}")


def test_losses_reduce_in_float32_under_bf16():
    x = torch.randn(4, 1, 4, 4, 4, generator=torch.Generator().manual_seed(19)).float()
    score = lambda y, s=None: (-y).to(torch.bfloat16)  # noqa: E731
    assert dsm_loss(score, x, 0.5).dtype == torch.float32
    assert ssm_loss(lambda y: -y.to(torch.bfloat16), x, method="fd").dtype == torch.float32
    assert ssm_loss(lambda y: -y.to(torch.bfloat16), x, method="forward").dtype == torch.float32


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="score_fn returned shape"):
        esm_loss(lambda x: x[:, :2], torch.ones(3, 4), torch.ones(3, 4))


# -- method="forward" (forward-mode J v) against method="exact" (reverse over reverse) -------------------


@pytest.mark.parametrize("variance_reduced", [False, True])
@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
def test_forward_mode_gives_the_exact_values_for_closed_form_scores(projection, variance_reduced):
    x = _gaussian().sample(200, torch.Generator().manual_seed(20))
    for score in (_linear_score(3)[0], _tanh_score(3)):
        losses = [
            ssm_loss(
                score,
                x,
                n_projections=3,
                projection=projection,
                variance_reduced=variance_reduced,
                method=method,
                generator=torch.Generator().manual_seed(21),
            )
            for method in EXACT_METHODS
        ]
        assert torch.allclose(losses[0], losses[1], rtol=1e-12, atol=1e-12)


def _unet_score(dims: int, batch: int, size: int, seed: int):
    """A tiny ScoreUNet in float64 as a score function of (x, sigma), every weight nonzero.

    The bare network, not the preconditioned model, whose coefficients run in float32. Coordinate
    channels in 3D (the patch model's cat); an odd size exercises the replicate padding and the crop.
    """
    from volscore.nets import ScoreUNet

    torch.manual_seed(seed)  # the initial weights
    g = torch.Generator().manual_seed(seed)
    net = ScoreUNet(
        dims, channels=(8, 16), num_res_blocks=1, emb_dim=16, num_groups=4, coord_channels=dims == 3
    ).double()
    with torch.no_grad():  # conv_out starts at zero (EDM): without this no gradient reaches the rest
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    coords = torch.rand(batch, dims, *([size] * dims), generator=g, dtype=D) if dims == 3 else None

    def score(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c = None if coords is None else coords.repeat_interleave(y.shape[0] // batch, dim=0)
        return net(y, sigma.log() / 4, c)

    return net, score


D = torch.float64


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("variance_reduced", [False, True])
@pytest.mark.parametrize("projection,n_projections", [("gaussian", 1), ("rademacher", 1), ("gaussian", 3)])
def test_forward_mode_matches_exact_on_a_unet(dims, variance_reduced, projection, n_projections):
    """Loss and every parameter gradient agree to float64 rounding: GroupNorm, SiLU in place, strided and
    1x1 convolutions, nearest up-sampling, cat, addcmul, replicate padding and the crop, all in one net."""
    batch, size = 2, 7
    x = torch.randn(batch, 1, *([size] * dims), generator=torch.Generator().manual_seed(22), dtype=D)
    sigma = torch.tensor([0.3, 2.0], dtype=D)
    results = []
    for method in EXACT_METHODS:
        net, score = _unet_score(dims, batch, size, seed=23)
        loss = ssm_loss(
            score,
            x,
            n_projections=n_projections,
            projection=projection,
            variance_reduced=variance_reduced,
            sigma=sigma,
            method=method,
            generator=torch.Generator().manual_seed(24),
        )
        loss.sum().backward()
        results.append((loss.detach(), {k: p.grad for k, p in net.named_parameters()}))
    (exact, g_exact), (forward, g_forward) = results
    assert torch.allclose(forward, exact, rtol=1e-12, atol=0), (forward, exact)
    assert all(g is not None for g in g_exact.values())
    for name, g in g_exact.items():
        err = float((g_forward[name] - g).abs().max() / g.abs().max())
        assert err < 1e-11, f"{name}: relative gradient error {err:.2e}"


def test_forward_mode_under_cpu_bf16_autocast_is_as_accurate_as_exact():
    """The trainer's CPU default (--amp auto is bf16). Both methods round differently in bf16, so each is
    compared with the float32 exact loss and gradients: forward mode's error must be about exact's (bf16
    rounding alone moves the loss by up to a few percent here, a wrong formula by far more)."""
    from volscore.nets import build_model

    torch.manual_seed(25)
    g = torch.Generator().manual_seed(26)
    x = torch.rand(2, 1, 12, 12, 12, generator=g, dtype=torch.float32)
    coords = torch.rand(2, 3, 12, 12, 12, generator=g, dtype=torch.float32)
    sigma = torch.tensor([0.2, 1.5], dtype=torch.float32)
    model = build_model("tiny", 3, coord_channels=True).float()  # this module's default dtype is float64
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    results = {}
    for method, bf16 in (("exact", False), ("exact", True), ("forward", True)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = ssm_loss(
                lambda y, s: model(y, s, coords),
                x,
                variance_reduced=True,
                sigma=sigma,
                method=method,
                generator=torch.Generator().manual_seed(27),
            )
        assert loss.dtype == torch.float32
        loss.sum().backward()
        results[method, bf16] = (loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    ref_loss, ref_grad = results["exact", False]
    errors = {}
    for method in EXACT_METHODS:
        loss, grad = results[method, True]
        errors[method] = (
            float(((loss - ref_loss).abs() / ref_loss.abs()).max()),
            float((grad - ref_grad).norm() / ref_grad.norm()),
        )
    (loss_exact, grad_exact), (loss_forward, grad_forward) = errors["exact"], errors["forward"]
    assert loss_forward <= 2 * loss_exact + 1e-2, errors
    assert grad_forward <= 1.5 * grad_exact + 1e-3, errors


def test_forward_mode_of_a_score_that_ignores_x():
    # No tangent reaches the output: J = 0, so SSM-VR is |s|^2 (the exact method cannot differentiate it).
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(28))
    loss = ssm_loss(lambda y: torch.ones_like(y), x, variance_reduced=True, method="forward")
    assert torch.equal(loss, torch.full((5,), 3.0))
    with pytest.raises(ValueError, match="'forward'"):
        ssm_loss(lambda y: y, x, method="backward")
