"""Tests for volscore.nets: ScoreUNet, Preconditioner and presets.

- shapes: 2D and 3D outputs match the input, odd sizes included, with and without coordinate channels;
  wrong or missing coords raise ValueError;
- double backward (sliced score matching) through the U-Net gives finite, nonzero second-order gradients;
- preconditioning: the EDM coefficients against closed forms, D(x, sigma) -> x as sigma -> 0 for both kinds,
  score == (D - x) / sigma^2, float/0-d/(B,) sigma;
- learning: a tiny model trained with DSM on per-pixel N(0.3, 0.1^2) 8x8 images points toward the mean;
- bf16 autocast on CPU: the net runs, the preconditioner returns float32;
- presets: model_args round-trips to the same architecture; unknown presets raise ValueError.
All on CPU, seeded, a few seconds in total.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from volscore.nets import (
    PRESETS,
    Preconditioner,
    ScoreUNet,
    build_model,
    build_model_from_args,
    count_parameters,
    model_args,
)
from volscore.noise import append_dims


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # One thread: these tensors are tiny, and on a shared 2-core machine two spinning threads are ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def tiny_net(spatial_dims: int, coord_channels: bool = False) -> ScoreUNet:
    net = ScoreUNet(spatial_dims, channels=(8, 16), emb_dim=16, num_groups=4, coord_channels=coord_channels)
    # The final conv is zero at init (EDM); give it weights so F, and the identities below, are non-trivial.
    nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 1, 13, 17), (1, 1, 13, 17, 9), (2, 1, 32, 32, 32)])
def test_output_shape_any_size(shape: tuple[int, ...]) -> None:
    net = tiny_net(len(shape) - 2)
    x = torch.randn(shape)
    out = net(x, torch.randn(shape[0]))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_three_levels_odd_volume_with_coords() -> None:
    net = ScoreUNet(3, in_channels=2, channels=(4, 8, 8), coord_channels=True, num_groups=4, emb_dim=16)
    x, coords = torch.randn(1, 2, 13, 17, 9), torch.randn(1, 3, 13, 17, 9)
    assert net(x, torch.zeros(1), coords).shape == x.shape


def test_coords_2d_and_errors() -> None:
    net = tiny_net(2, coord_channels=True)
    x, c = torch.randn(2, 1, 13, 17), torch.randn(2)
    assert net(x, c, torch.randn(2, 2, 13, 17)).shape == x.shape
    with pytest.raises(ValueError, match="coords"):
        net(x, c)
    with pytest.raises(ValueError, match="coords"):
        net(x, c, torch.randn(2, 2, 13, 16))
    with pytest.raises(ValueError, match="coord_channels=False"):
        tiny_net(2)(x, c, torch.randn(2, 2, 13, 17))
    with pytest.raises(ValueError, match="c_noise"):
        net(x, torch.randn(3), torch.randn(2, 2, 13, 17))
    with pytest.raises(ValueError, match="spatial_dims"):
        ScoreUNet(1)


@pytest.mark.parametrize("spatial_dims, amp", [(2, False), (3, False), (3, True)])
def test_double_backward(spatial_dims: int, amp: bool) -> None:
    # The sliced score matching pattern: v^T J v needs grad(..., create_graph=True) and a second backward.
    net = tiny_net(spatial_dims)
    shape = (2, 1, 7, 9) if spatial_dims == 2 else (2, 1, 7, 9, 5)
    x = torch.randn(shape, requires_grad=True)
    v = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = net(x, torch.randn(2)).float()
    (grad_x,) = torch.autograd.grad((out * v).sum(), x, create_graph=True)
    (grad_x * v).sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert net.conv_in.weight.grad.abs().sum() > 0
    assert net.embed.mlp[0].weight.grad.abs().sum() > 0  # second-order terms reach the noise embedding too
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("sigma", [0.002, 0.5, 3.0, 80.0])
def test_edm_coefficients(sigma: float) -> None:
    model = Preconditioner(tiny_net(2), sigma_data=0.5)
    c_skip, c_out, c_in, c_noise = model.coefficients(torch.tensor([sigma]))
    var = sigma**2 + 0.25
    expected = [0.25 / var, sigma * 0.5 / math.sqrt(var), 1 / math.sqrt(var), math.log(sigma) / 4]
    for got, want in zip((c_skip, c_out, c_in, c_noise), expected, strict=True):
        assert got.item() == pytest.approx(want, rel=1e-5)
    c_skip, c_out, c_in, _ = Preconditioner(tiny_net(2), kind="ncsnv2").coefficients(torch.tensor([sigma]))
    assert (c_skip.item(), c_in.item()) == (1.0, 1.0) and c_out.item() == pytest.approx(sigma)


def test_edm_denoiser_matches_formula() -> None:
    net = tiny_net(2)
    model = Preconditioner(net, sigma_data=0.5)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 2.0])
    s = append_dims(sigma, x.ndim)
    var = s**2 + 0.25
    f = net(x / var.sqrt(), sigma.log() / 4)
    torch.testing.assert_close(model.denoise(x, sigma), 0.25 / var * x + s * 0.5 / var.sqrt() * f)


@pytest.mark.parametrize("kind", ["edm", "ncsnv2"])
def test_denoiser_is_identity_at_small_sigma(kind: str) -> None:
    model = Preconditioner(tiny_net(3), kind=kind)
    x = torch.randn(2, 1, 9, 8, 7)
    d = model.denoise(x, 1e-4)
    assert (d - x).norm() / x.norm() < 1e-3
    assert (model.denoise(x, 10.0) - x).norm() / x.norm() > 1e-2  # and it does act at large sigma


@pytest.mark.parametrize("kind", ["edm", "ncsnv2"])
def test_score_is_denoiser_residual(kind: str) -> None:
    model = Preconditioner(tiny_net(2), kind=kind)
    x = torch.randn(3, 1, 10, 11)
    for sigma in (0.7, torch.tensor(0.2), torch.tensor([0.05, 1.0, 20.0])):
        s = append_dims(torch.as_tensor(sigma), x.ndim)
        want = (model.denoise(x, sigma) - x) / s**2
        atol = 1e-4 * want.abs().max().item()
        torch.testing.assert_close(model.score(x, sigma), want, rtol=1e-4, atol=atol)
    torch.testing.assert_close(model(x, 0.7), model.score(x, 0.7))
    with pytest.raises(ValueError):
        model(x, torch.ones(2))


@pytest.mark.parametrize("kind", ["edm", "ncsnv2"])
def test_dsm_training_points_toward_data_mean(kind: str) -> None:
    mu, std = 0.3, 0.1
    model = Preconditioner(ScoreUNet(2, channels=(8, 16), emb_dim=16, num_groups=4), kind=kind)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        x0 = mu + std * torch.randn(32, 1, 8, 8)
        sigma = torch.exp(torch.empty(32).uniform_(math.log(0.05), math.log(1.0)))
        eps = torch.randn_like(x0)
        s = append_dims(sigma, x0.ndim)
        # DSM with lambda = sigma^2: || sigma * score + eps ||^2 per sample.
        loss = (s * model(x0 + s * eps, sigma) + eps).square().flatten(1).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for sigma in (0.1, 0.3):
            # 0.15 lies between 0 and the mean: an untrained EDM model (D = c_skip x) points toward 0 there.
            x_vals = (-0.5, 0.15, 0.5, 1.0)
            scores = [model(torch.full((1, 1, 8, 8), x), sigma).mean().item() for x in x_vals]
            true = [(mu - x) / (std**2 + sigma**2) for x in x_vals]  # score of N(mu, std^2 + sigma^2)
            signs = [math.copysign(1, v) for v in scores]
            assert signs == [math.copysign(1, v) for v in true], (sigma, scores)
            assert scores == sorted(scores, reverse=True), (sigma, scores)  # decreasing in x, like the truth


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_autocast_returns_float32(spatial_dims: int) -> None:
    model = Preconditioner(tiny_net(spatial_dims, coord_channels=True))
    size = (12, 10) if spatial_dims == 2 else (6, 10, 8)
    x, coords = torch.randn(2, 1, *size), torch.randn(2, spatial_dims, *size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = model.net(x, torch.zeros(2), coords)
        score = model(x, torch.tensor([0.1, 1.0]), coords)
    assert f.dtype == torch.bfloat16
    assert score.dtype == torch.float32 and torch.isfinite(score).all()
    torch.testing.assert_close(score, model(x, torch.tensor([0.1, 1.0]), coords), rtol=0.1, atol=0.5)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_model_args_round_trip(preset: str) -> None:
    args = model_args(preset, 3, in_channels=1, coord_channels=True, sigma_data=0.4, kind="ncsnv2")
    model = build_model(preset, 3, coord_channels=True, sigma_data=0.4, kind="ncsnv2")
    rebuilt = build_model_from_args(args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    rebuilt.load_state_dict(model.state_dict())
    assert (rebuilt.kind, rebuilt.sigma_data) == ("ncsnv2", 0.4)
    assert count_parameters(rebuilt) == count_parameters(model) > 0
    # Plain Python types only: the checkpoint pattern loads with weights_only=True.
    buffer = io.BytesIO()
    torch.save({"model_args": args, "model": model.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    assert ckpt["model_args"] == args
    build_model_from_args(ckpt["model_args"]).load_state_dict(ckpt["model"])


def test_unknown_preset_names_known_ones() -> None:
    with pytest.raises(ValueError, match="tiny.*small.*base"):
        build_model("huge", 2)
