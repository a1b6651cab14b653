"""Figures for runs and reports: sample grids, loss curves, volume montages and slice comparisons.

matplotlib is imported inside the functions (``import volscore`` stays light) and used through its
object-oriented API on the Agg canvas, so no global backend is switched and no pyplot figure leaks.
Every PNG is written to a temporary file in the target folder and renamed, so a reader never sees a
half-written image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from volscore.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ArrayLike = torch.Tensor | np.ndarray


def _to_numpy(x: ArrayLike | Sequence[float]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(path: Path | str, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then rename it into place."""
    return atomic_write(path, lambda tmp: write(str(tmp)))


def _save_figure(fig: Figure, path: Path | str, dpi: int = 100) -> Path:
    return _save_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _grey_range(volumes: Sequence[np.ndarray], vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """One grey scale for all volumes: min and max of the finite voxels unless given (NaNs ignored)."""
    finite = [v[np.isfinite(v)] for v in volumes]
    finite = [f for f in finite if f.size]
    lo = vmin if vmin is not None else (min(float(f.min()) for f in finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(float(f.max()) for f in finite) if finite else 1.0)
    return lo, hi if hi > lo else lo + 1.0


def save_image_grid(images: ArrayLike, path: Path | str, nrow: int = 8, padding: int = 2) -> Path:
    """Save images (N, 1, H, W) or (N, H, W) in [0, 1] as a grey grid with ``nrow`` images per row.

    Pixels are written one to one (no resampling); values are clipped to [0, 1].
    """
    x = _to_numpy(images)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {x.shape}")
        x = x[:, 0]
    if x.ndim != 3 or len(x) == 0:
        raise ValueError(f"expected images (N, 1, H, W) or (N, H, W), got shape {x.shape}")
    n, h, w = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding), 0.5, np.float32)
    for i, img in enumerate(np.clip(np.nan_to_num(x), 0.0, 1.0)):
        r, c = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = img

    def write(tmp: str) -> None:
        from matplotlib.image import imsave

        imsave(tmp, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")

    return _save_atomic(path, write)


def render_depth(occupancy: ArrayLike, threshold: float = 0.5, axis: int = 0) -> np.ndarray:
    """A shaded view of an occupancy volume (D, H, W) looking along ``axis``: the surface's nearness, in
    [0.15, 1] where the shape is (nearer is brighter), 0 where the ray misses it. A z-buffer render: enough
    to see a shape's form in a sheet of dozens, with no mesh or renderer dependency."""
    occ = np.moveaxis(_to_numpy(occupancy), axis, 0) >= threshold
    if occ.ndim != 3:
        raise ValueError(f"expected a volume (D, H, W), got shape {occ.shape}")
    hit = occ.any(0)
    depth = np.argmax(occ, axis=0).astype(np.float32) / max(occ.shape[0] - 1, 1)
    return np.where(hit, 1.0 - 0.85 * depth, 0.0).astype(np.float32)


def save_shape_sheet(volumes: ArrayLike, path: Path | str, nrow: int = 8, threshold: float = 0.5) -> Path:
    """Depth-shaded renders (``render_depth``) of occupancy volumes (N, 1, D, H, W) or (N, D, H, W)."""
    x = _to_numpy(volumes)
    if x.ndim == 5:
        x = x[:, 0]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"expected volumes (N, 1, D, H, W) or (N, D, H, W), got shape {x.shape}")
    return save_image_grid(np.stack([render_depth(v, threshold) for v in x]), path, nrow=nrow)


def save_loss_curve(
    steps: ArrayLike | Sequence[float],
    losses: ArrayLike | Sequence[float],
    path: Path | str,
    ylabel: str = "loss",
    smooth: int | None = None,
    log_x: bool = False,
) -> Path:
    """Plot raw losses (faint) and their trailing moving average over ``smooth`` points.

    ``smooth=None`` picks about a twentieth of the points; ``smooth=1`` draws no average. Non-finite
    losses are dropped (a NaN would poison the average). The y axis stays linear: score-matching
    losses such as SSM go negative.
    """
    s, y = _to_numpy(steps).astype(np.float64).ravel(), _to_numpy(losses).astype(np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"steps and losses differ in length: {s.shape} vs {y.shape}")
    keep = np.isfinite(s) & np.isfinite(y)
    s, y = s[keep], y[keep]
    window = max(1, len(y) // 20) if smooth is None else max(1, int(smooth))

    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(s, y, color="tab:blue", alpha=0.3 if window > 1 else 1.0, lw=0.8, label="raw")
    if 1 < window <= len(y):
        c = np.cumsum(np.insert(y, 0, 0.0))
        ax.plot(
            s[window - 1 :],
            (c[window:] - c[:-window]) / window,
            color="tab:blue",
            lw=1.8,
            label=f"mean of {window}",
        )
        ax.legend()
    if log_x and len(s) and s.min() > 0:
        ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def save_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path | str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    references: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """One marked line per named series of (x, y) points (e.g. quality against cost), and a dashed horizontal
    line per reference value (e.g. the competitor's or the input's figure), on one axis."""
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for label, (xs, ys) in series.items():
        x, y = _to_numpy(xs).astype(np.float64).ravel(), _to_numpy(ys).astype(np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"series {label!r}: x and y differ in length: {x.shape} vs {y.shape}")
        ax.plot(x, y, marker="o", lw=1.5, label=label)
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1.0, color=f"C{len(series) + i}", label=label)
    if log_x:
        from matplotlib.ticker import LogFormatter

        ax.set_xscale("log")
        # plain numbers (20, 50, 100), not 2 x 10^1, at the 1-2-5 ticks
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def save_montage(
    volumes: ArrayLike | Sequence[ArrayLike],
    path: Path | str,
    titles: Sequence[str] | None = None,
    axis_names: Sequence[str] = ("axial", "coronal", "sagittal"),
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Three orthogonal mid-slices per volume (D, H, W), one row per volume, one shared grey scale.

    Column k is the middle slice across axis k, named by ``axis_names``: the default assumes D runs
    inferior-superior (slices across D are axial); for an (x, y, z) RAS array pass
    ``("sagittal", "coronal", "axial")``.
    """
    vols = (
        [_to_numpy(volumes)]
        if isinstance(volumes, (torch.Tensor, np.ndarray))
        else [_to_numpy(v) for v in volumes]
    )
    for v in vols:
        if v.ndim != 3:
            raise ValueError(f"expected volumes (D, H, W), got shape {v.shape}")
    if titles is not None and len(titles) != len(vols):
        raise ValueError(f"{len(titles)} titles for {len(vols)} volumes")
    lo, hi = _grey_range(vols, vmin, vmax)

    fig = _new_figure(3 * 2.4, 2.4 * len(vols))
    axes = fig.subplots(len(vols), 3, squeeze=False)
    for r, v in enumerate(vols):
        for k in range(3):
            ax = axes[r, k]
            ax.imshow(np.take(v, v.shape[k] // 2, axis=k), cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(axis_names[k])
        if titles is not None:
            axes[r, 0].set_ylabel(titles[r])
    return _save_figure(fig, path)


def save_slices(
    named_volumes: dict[str, ArrayLike],
    path: Path | str,
    axis: int = 0,
    index: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """One slice (``index`` across ``axis``, the middle by default) of several volumes side by side.

    For before/after and method comparisons: the dict keys are the titles, and all panels share one
    grey scale so intensities compare directly.
    """
    if not named_volumes:
        raise ValueError("no volumes to plot")
    names = list(named_volumes)
    vols = [_to_numpy(named_volumes[k]) for k in names]
    for name, v in zip(names, vols, strict=True):
        if v.ndim != 3:
            raise ValueError(f"{name}: expected a volume (D, H, W), got shape {v.shape}")
    slices = []
    for name, v in zip(names, vols, strict=True):
        i = v.shape[axis] // 2 if index is None else index
        if not -v.shape[axis] <= i < v.shape[axis]:
            raise ValueError(f"{name}: index {i} outside axis {axis} of size {v.shape[axis]}")
        slices.append(np.take(v, i, axis=axis))
    lo, hi = _grey_range(slices, vmin, vmax)

    fig = _new_figure(2.6 * len(vols), 2.9)
    axes = fig.subplots(1, len(vols), squeeze=False)[0]
    for ax, name, sl in zip(axes, names, slices, strict=True):
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save_figure(fig, path)
