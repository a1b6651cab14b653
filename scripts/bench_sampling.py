"""Sampling throughput and what bf16 sampling does to sample quality, measured side by side in one run.

    .venv/bin/python scripts/bench_sampling.py --threads 2 --json scripts/results/bench_sampling.json

(a) Throughput: seconds per megavoxel per network evaluation (NFE) of one stitched score over a whole volume
    (``StitchedScore``, shift mode, the way ``volscore sample`` calls it) against a plain batched pass of the
    same model over as many voxels (ceil(voxels / p^3) full tiles in batches of at most 8, no stitching), in
    fp32 and under bf16 autocast, for several ``tile_batch`` sizes and with several volumes in one call.
    Every row is timed ``--rounds`` times in turn with the others (so all see the same load); medians.
(b) Quality under bf16: the same samples drawn in fp32 and in bf16 from the same seeds with the default
    sampler, scored as ``bench_samplers.py`` scores them: the bundled MNIST model (``--n`` digits: confident
    fraction, classes, Frechet distance against the test split) and the bundled 3D prior (one volume at the
    template's shape: SSIM, noise ratio and histogram distance against the training volume). A second fp32
    seed gives the seed-to-seed difference, the yardstick for "unchanged".
The model of (a) is the bundled 3D prior (``pretrained:mni152-prior``: small preset, coordinates with
Fourier features), under ``torch.no_grad()``. ``--quick`` is a smoke run on tiny sizes (the tests).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

DTYPES = ("fp32", "bf16")
PLAIN_BATCH = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--volume-run", default="pretrained:mni152-prior", help="3D patch run for (a) and (b)")
    p.add_argument("--mnist-run", default="pretrained:mnist", help="MNIST run for (b); '' skips it")
    p.add_argument("--shape", nargs=3, type=int, default=None, help="(a): volume shape (default: the run's)")
    p.add_argument("--tile-batches", nargs="+", type=int, default=[2, 4, 8, 16])
    p.add_argument("--volumes", type=int, default=2, help="(a): volumes in one stitched call (a row)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=500, help="(b): MNIST samples per row")
    p.add_argument("--skip-quality", action="store_true", help="only (a)")


def apply_quick(args: argparse.Namespace) -> None:
    args.shape, args.tile_batches, args.rounds, args.n = [20, 20, 20], [2, 8], 1, 8
    args.mnist_run = ""  # the classifier would be trained on first use: minutes


def check(args: argparse.Namespace, error: Callable[[str], Any]) -> None:
    if args.rounds < 1 or args.volumes < 1 or args.n < 1 or min(args.tile_batches) < 1:
        error("--rounds, --volumes, --n and --tile-batches must be >= 1")


def _dtype(name: str):
    """The autocast dtype of a ``DTYPES`` row name (its "fp32" is ``--amp off``)."""
    from volscore.amp import inference_dtype

    return inference_dtype("off" if name == "fp32" else name)


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def throughput(run: Any, shape: list[int], tile_batches: list[int], volumes: int, rounds: int) -> list[dict]:
    """(a): one row per (dtype, kind); s per megavoxel per NFE, medians over ``rounds``."""
    import torch

    from volscore.amp import autocast
    from volscore.data.patches import coordinate_patch
    from volscore.sampling.stitch import StitchedScore

    p = run.patch_size
    voxels = math.prod(shape)
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.5])
    x1 = torch.randn(1, run.channels, *shape, generator=g)
    xv = torch.randn(volumes, run.channels, *shape, generator=g)
    n_tiles = -(-voxels // p**3)
    tiles = torch.randn(PLAIN_BATCH, run.channels, p, p, p, generator=g)
    tile_coords = (
        torch.stack([coordinate_patch(shape, (0, 0, 0), (p, p, p))] * PLAIN_BATCH) if run.coords else None
    )

    rows: dict[str, Callable[[], Any]] = {}
    for dt in DTYPES:
        model = autocast(run.model, _dtype(dt))

        def plain(model=model) -> None:  # ceil(voxels / p^3) full tiles in batches of at most 8
            for i in range(0, n_tiles, PLAIN_BATCH):
                k = min(PLAIN_BATCH, n_tiles - i)
                model(tiles[:k], sigma.expand(k), None if tile_coords is None else tile_coords[:k])

        rows[f"{dt} plain batched pass"] = plain
        for tb in tile_batches:
            score = StitchedScore(model, p, stitch="shift", tile_batch=tb, coords=run.coords,
                                  generator=torch.Generator().manual_seed(1))  # fmt: skip
            rows[f"{dt} stitched, tile_batch {tb}"] = lambda s=score: s(x1, sigma)
        if volumes > 1:
            score = StitchedScore(model, p, stitch="shift", tile_batch=8, coords=run.coords,
                                  generator=torch.Generator().manual_seed(1))  # fmt: skip
            rows[f"{dt} stitched, {volumes} volumes per call, tile_batch 8"] = lambda s=score: s(
                xv, sigma.expand(volumes)
            )
    times: dict[str, list[float]] = {k: [] for k in rows}
    with torch.no_grad():
        for fn in rows.values():  # warm-up: oneDNN primitives for each shape and dtype
            fn()
        for _ in range(rounds):
            for name, fn in rows.items():
                times[name].append(_timed(fn))
    out = []
    for name, ts in times.items():
        n_vol = volumes if "volumes per call" in name else 1
        sec = statistics.median(ts)
        out.append(
            {"row": name, "seconds_per_nfe": sec, "s_per_megavoxel_per_nfe": sec / (n_vol * voxels / 1e6)}
        )
    ref = next(r for r in out if r["row"] == "fp32 plain batched pass")["s_per_megavoxel_per_nfe"]
    for r in out:
        r["vs_fp32_plain"] = r["s_per_megavoxel_per_nfe"] / ref
    return out


def quality(args: argparse.Namespace) -> dict[str, list[dict]]:
    """(b): fp32 seed s, fp32 seed s + offset (the yardstick), bf16 seed s; default sampler."""
    import torch
    from bench_samplers import score_mnist

    from volscore.generate import sample_run_tensor
    from volscore.metrics.volumes import volume_sample_quality
    from volscore.run import Run
    from volscore.sampling.settings import SamplerSettings

    settings = SamplerSettings()
    cases = [("fp32", args.seed), ("fp32", args.seed + 10_000), ("bf16", args.seed)]
    out: dict[str, list[dict]] = {"mnist": [], "volume": []}
    if args.mnist_run:
        run = Run.load(args.mnist_run)
        for dt, seed in cases:
            amp = _dtype(dt)
            t0 = time.perf_counter()
            x = sample_run_tensor(run, settings, n=args.n, seed=seed, progress=False, amp=amp)
            seconds = time.perf_counter() - t0
            m = score_mnist(x)
            out["mnist"].append({"dtype": dt, "seed": seed, "seconds": seconds, **m})
            print(f"mnist {dt} seed {seed}: confident {100 * m['confident_fraction']:.1f} % FD {m['fd']:.2f} "
                  f"{seconds:.0f} s", flush=True)  # fmt: skip
    run = Run.load(args.volume_run)
    reference = run.training_volume()
    shape = args.shape if args.quick else None
    for dt, seed in cases:
        t0 = time.perf_counter()
        x = sample_run_tensor(run, settings, n=1, shape=shape, seed=seed, progress=False, amp=_dtype(dt))[
            0, 0
        ]
        seconds = time.perf_counter() - t0
        q = volume_sample_quality(x.numpy(), reference) if shape is None else {}
        row = {"dtype": dt, "seed": seed, "seconds": seconds, "finite": bool(torch.isfinite(x).all())}
        row |= {k: q[k] for k in ("ssim", "noise_ratio", "histogram_distance") if k in q}
        out["volume"].append(row)
        print(f"volume {dt} seed {seed}: {row}", flush=True)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from volscore.run import Run

    run = Run.load(args.volume_run)
    shape = list(args.shape) if args.shape else list(run.sample_shape)
    result: dict[str, Any] = {"shape": shape, "patch": run.patch_size}
    result["throughput"] = throughput(run, shape, args.tile_batches, args.volumes, args.rounds)
    if not args.skip_quality:
        result["quality"] = quality(args)
    return result


def report(out: dict[str, Any]) -> None:
    shape = "x".join(map(str, out["shape"]))
    print(f"(a) one network evaluation over a {shape} volume, patch {out['patch']}^3:")
    rows = [
        [
            r["row"],
            f"{r['seconds_per_nfe']:.2f}",
            f"{r['s_per_megavoxel_per_nfe']:.2f}",
            f"{r['vs_fp32_plain']:.2f}",
        ]
        for r in out["throughput"]
    ]
    print(harness.markdown_table(["", "s / NFE", "s / megavoxel / NFE", "vs fp32 plain pass"], rows))
    q = out.get("quality")
    if not q:
        return
    if q["mnist"]:
        print("\n(b) MNIST, default sampler:")
        rows = [
            [f"{r['dtype']}, seed {r['seed']}", f"{100 * r['confident_fraction']:.1f} %", f"{r['fd']:.2f}",
             f"{100 * r['class_range'][0]:.1f}-{100 * r['class_range'][1]:.1f} %", f"{r['seconds']:.0f}"]
            for r in q["mnist"]
        ]  # fmt: skip
        print(harness.markdown_table(["", "confident", "FD", "classes", "s"], rows))
    print("\n(b) 3D prior, default sampler, one volume:")
    rows = [
        [f"{r['dtype']}, seed {r['seed']}", *(f"{r[k]:.3f}" if k in r else "-" for k in
         ("ssim", "noise_ratio", "histogram_distance")), f"{r['seconds']:.0f}"]
        for r in q["volume"]
    ]  # fmt: skip
    print(harness.markdown_table(["", "SSIM", "noise ratio", "histogram distance", "s"], rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = harness.parse_quick_args(__doc__, argv, add_arguments, apply_quick, check, threads=2)
    return harness.run_bench("bench_sampling", args, lambda _: measure(args), report)


if __name__ == "__main__":
    main()
