"""ScoreUNet: one sigma-conditioned U-Net for 2D images and 3D volumes (``spatial_dims`` = 2 or 3).

Layout (per level i with ``channels[i]``; L = len(channels)):
    conv_in -> [ResBlock x num_res_blocks -> skip_i -> strided conv down] for i < L-1
            -> ResBlock x 2*num_res_blocks at the bottom
            -> [nearest up -> concat skip_i -> ResBlock x num_res_blocks] for i = L-2 .. 0
            -> GroupNorm -> SiLU -> conv_out (zero-initialised, as in EDM).
The noise level enters every ResBlock as a scale/shift of its second GroupNorm (score_sde / EDM style).
No attention, so ``torch.autograd.grad(..., create_graph=True)`` (sliced score matching) works everywhere.
Any spatial size is accepted: the input is replicate-padded to a multiple of 2^(L-1) and the output cropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from volscore.noise import append_dims

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def _conv(spatial_dims: int, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    return _CONV[spatial_dims](c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2)


def _group_norm(num_channels: int, num_groups: int) -> nn.GroupNorm:
    # Largest group count <= num_groups that divides the channels (e.g. 24 channels, 16 groups -> 12).
    groups = max(g for g in range(1, min(num_groups, num_channels) + 1) if num_channels % g == 0)
    return nn.GroupNorm(groups, num_channels)


class NoiseEmbedding(nn.Module):
    """c_noise (B,) -> sinusoidal features at fixed log-spaced frequencies -> 2-layer MLP -> (B, emb_dim).

    c_noise = ln(sigma)/4 spans about [-1.6, 1.2] for sigma in [0.002, 80]; angular frequencies from 1 to
    100 resolve sigma to a few percent while staying smooth enough to interpolate between trained sigmas.
    """

    def __init__(self, emb_dim: int, max_freq: float = 100.0) -> None:
        super().__init__()
        half = emb_dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half))
        # Deterministic, so not stored in checkpoints.
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise.float()[:, None] * self.freqs  # (B, half)
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, noise embedding as scale/shift after the second norm, 1x1 conv skip."""

    def __init__(
        self, spatial_dims: int, c_in: int, c_out: int, emb_dim: int, num_groups: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = _group_norm(c_in, num_groups)
        self.conv1 = _conv(spatial_dims, c_in, c_out)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = _group_norm(c_out, num_groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv(spatial_dims, c_out, c_out)
        self.skip = _conv(spatial_dims, c_in, c_out, kernel_size=1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # In-place SiLU only on fresh GroupNorm / addcmul outputs that nothing else holds.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        scale, shift = self.emb(emb).chunk(2, dim=1)  # (B, c_out) each
        h = torch.addcmul(append_dims(shift, h.ndim), self.norm2(h), append_dims(scale + 1, h.ndim))
        h = self.conv2(self.dropout(F.silu(h, inplace=True)))
        return self.skip(x) + h


class ScoreUNet(nn.Module):
    """Sigma-conditioned U-Net F(x, c_noise) for (B, C, *spatial) inputs, 2D or 3D, any spatial size.

    Args:
        spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W).
        in_channels: image channels C.
        out_channels: output channels; defaults to ``in_channels`` (a score has the shape of x).
        channels: feature channels per resolution level; len(channels) - 1 down-samplings by 2.
        num_res_blocks: residual blocks per level (doubled at the bottom level).
        coord_channels: if True, ``forward`` requires ``coords`` (B, spatial_dims, *spatial), concatenated
            to the input so a patch model knows where it is in the volume (PatchDDM).
        coord_frequencies: with coordinates, also sin(2^k pi c) and cos(2^k pi c) for k < this (Fourier
            features, Tancik et al. 2020): a plain ramp makes the network learn where anatomy lies only slowly
            (spectral bias), while these let it place detail down to 2^-k of the volume from the start.
        emb_dim: width of the noise embedding.
        num_groups: GroupNorm groups, clipped per layer to a divisor of its channels.
        dropout: dropout before the second conv of every residual block.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        out_channels: int | None = None,
        channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        coord_channels: bool = False,
        coord_frequencies: int = 0,
        emb_dim: int = 128,
        num_groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) < 1 or num_res_blocks < 1:
            raise ValueError("need at least one level and one residual block per level")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.coord_channels = coord_channels
        if coord_frequencies < 0:
            raise ValueError(f"coord_frequencies must be >= 0, got {coord_frequencies}")
        self.coord_frequencies = coord_frequencies if coord_channels else 0
        coord_in = spatial_dims * (1 + 2 * self.coord_frequencies) if coord_channels else 0
        self.multiple = 2 ** (len(channels) - 1)  # spatial sizes are padded to this
        ch = list(channels)
        block = partial(ResBlock, spatial_dims, emb_dim=emb_dim, num_groups=num_groups, dropout=dropout)

        self.embed = NoiseEmbedding(emb_dim)
        self.conv_in = _conv(spatial_dims, in_channels + coord_in, ch[0])
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i in range(len(ch) - 1):
            self.down_blocks.append(nn.ModuleList(block(ch[i], ch[i]) for _ in range(num_res_blocks)))
            self.downsample.append(_conv(spatial_dims, ch[i], ch[i + 1], stride=2))
        self.mid_blocks = nn.ModuleList(block(ch[-1], ch[-1]) for _ in range(2 * num_res_blocks))
        # up_blocks[i] serves level i; its first block takes up-sampled ch[i+1] concatenated with skip ch[i].
        self.up_blocks = nn.ModuleList(
            nn.ModuleList(block(ch[i + 1] + ch[i] if j == 0 else ch[i], ch[i]) for j in range(num_res_blocks))
            for i in range(len(ch) - 1)
        )
        self.norm_out = _group_norm(ch[0], num_groups)
        self.conv_out = _conv(spatial_dims, ch[0], self.out_channels)
        # Zero output at init: the preconditioner's skip term alone is then the initial denoiser (EDM).
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _coord_features(self, coords: Tensor) -> Tensor:
        """coords (B, d, *spatial) -> [coords, sin(2^k pi coords), cos(2^k pi coords), k < K] as channels."""
        if not self.coord_frequencies:
            return coords
        scales = math.pi * 2.0 ** torch.arange(
            self.coord_frequencies, device=coords.device, dtype=coords.dtype
        )
        angles = coords.unsqueeze(2) * scales.view(
            1, 1, -1, *([1] * (coords.ndim - 2))
        )  # (B, d, K, *spatial)
        angles = angles.flatten(1, 2)
        return torch.cat([coords, angles.sin(), angles.cos()], dim=1)

    def forward(self, x: Tensor, c_noise: Tensor, coords: Tensor | None = None) -> Tensor:
        """x: (B, C, *spatial); c_noise: (B,); coords: (B, spatial_dims, *spatial) iff coord_channels."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected (B, C, *spatial) with {self.spatial_dims} spatial dims, got {tuple(x.shape)}"
            )
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"c_noise must have shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
        if self.coord_channels:
            if coords is None:
                raise ValueError("coord_channels=True: pass coords of shape (B, spatial_dims, *spatial)")
            expected = (x.shape[0], self.spatial_dims, *x.shape[2:])
            if tuple(coords.shape) != expected:
                raise ValueError(f"coords must have shape {expected}, got {tuple(coords.shape)}")
            x = torch.cat([x, self._coord_features(coords).to(x.dtype)], dim=1)
        elif coords is not None:
            raise ValueError("coords given but this ScoreUNet has coord_channels=False")

        size = x.shape[2:]
        pad = [(-s) % self.multiple for s in size]
        if any(pad):
            # F.pad lists the last dim first; replicate avoids the fake edges zero padding would add.
            x = F.pad(x, [p for p_dim in reversed(pad) for p in (0, p_dim)], mode="replicate")

        emb = F.silu(self.embed(c_noise))
        h = self.conv_in(x)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsample, strict=True):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            h = down(h)
        for blk in self.mid_blocks:
            h = blk(h, emb)
        for blocks in reversed(self.up_blocks):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
        h = self.conv_out(F.silu(self.norm_out(h), inplace=True))
        return h[(..., *(slice(0, s) for s in size))]
