"""Stitched sampling cost and memory: one Langevin step over a 256^3 volume through ``StitchedScore``.

The (untrained: the cost is the same) small 3D model under ``torch.no_grad()``: peak RSS of a child process
taking a few annealed-Langevin steps with ``StitchedScore(stitch=..., tile_batch=8)``, and the time of one
step relative to one plain batched pass of the same model over as many voxels (512 tiles of 32^3 in batches
of 8, no tiling bookkeeping), the two timed alternately. Targets for shift: peak RSS <= 2 GiB,
step / plain <= 1.2. Blend (overlap 0.5) and fixed for context, and shift again with glibc's mmap threshold
fixed (``MALLOC_MMAP_THRESHOLD_``): every new tile shape otherwise leaves freed activations in a fragmented
heap, so RSS grows step by step. One child process per row; peak RSS is its own (VmHWM).

    python scripts/bench_stitch.py --threads 1 --json bench_stitch.json

``--quick`` runs a smoke version (tests/test_bench_stitch.py). Part (b) of ``bench_volumes3d.py``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

from volscore.sampling.settings import STITCH_MODES as MODES  # noqa: E402

SAMPLE_RSS_TARGET_GIB = 2.0  # peak RSS of shift sampling at 256^3
STEP_RATIO_TARGET = 1.2  # shift step / plain batched pass
MALLOC_ROW = "shift, MALLOC_MMAP_THRESHOLD_=131072"
MIB = 1024.0  # MiB per GiB


def stitched_steps(spec: dict[str, Any]) -> dict[str, Any]:
    """(Child side.) Alternately one plain batched pass and one annealed-Langevin step with the stitched
    score, ``spec["rounds"]`` times."""
    import torch

    from volscore.data.patches import coordinate_patch
    from volscore.nets import build_model
    from volscore.sampling.langevin import annealed_langevin
    from volscore.sampling.stitch import StitchedScore

    rss_start = harness.rss_mib()
    n, p, tb = spec["size"], spec["patch"], spec["tile_batch"]
    torch.manual_seed(spec["seed"])
    model = build_model("small", 3, coord_channels=True).eval().requires_grad_(False)
    calls = {"calls": 0, "voxels": 0}
    shapes: set[tuple[int, ...]] = set()  # distinct batch shapes so far (each new one: new oneDNN primitives)

    def patch_fn(x: torch.Tensor, sigma: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
        calls["calls"] += 1
        calls["voxels"] += x[:, 0].numel()
        shapes.add(tuple(x.shape))
        return model(x, sigma, coords)

    g = torch.Generator().manual_seed(spec["seed"])
    stitched = StitchedScore(
        patch_fn,
        p,
        stitch=spec["stitch"],
        tile_batch=tb,
        overlap=spec["overlap"],
        generator=torch.Generator().manual_seed(spec["seed"] + 1),
    )
    sigma = 1.0
    x = sigma * torch.randn((1, 1, n, n, n), generator=g)  # (B, C, D, H, W)
    # The plain pass: as many voxels as the volume, in full batches of tb tiles of p^3, one batch reused.
    n_batches = math.ceil(n**3 / p**3 / tb)
    xb = torch.randn((tb, 1, p, p, p), generator=g)
    cb = torch.stack([coordinate_patch((n, n, n), (32 * i % n, 0, 0), p) for i in range(tb)])
    sb = torch.full((tb,), sigma)
    timings: dict[str, list[float]] = {"plain": [], "step": []}
    per_step = []
    with torch.no_grad():
        model(xb, sb, cb)  # warm-up: oneDNN primitives for the patch shape
        for _ in range(spec["rounds"]):
            t = time.perf_counter()
            for _ in range(n_batches):
                model(xb, sb, cb)
            timings["plain"].append(time.perf_counter() - t)
            calls.update(calls=0, voxels=0)
            t = time.perf_counter()
            # One raw Langevin step (no final denoising step): the stitched score is called exactly once.
            x = annealed_langevin(
                stitched, x, torch.tensor([sigma]), 1, step_lr=1e-4, denoise=False, generator=g
            )
            timings["step"].append(time.perf_counter() - t)
            per_step.append(
                dict(calls, offset=stitched.offset, shapes_so_far=len(shapes), rss_mib=harness.rss_mib())
            )
    plain, step = statistics.median(timings["plain"]), statistics.median(timings["step"])
    return {
        "plain_s": plain,
        "step_s": step,
        "ratio": step / plain,
        "ratios": [s / q for s, q in zip(timings["step"], timings["plain"], strict=True)],
        "timings": timings,
        "per_step": per_step,
        "voxel_factor": per_step[-1]["voxels"] / n**3,
        "plain_batches": n_batches,
        "finite": bool(torch.isfinite(x).all()),
        "rss_start_mib": rss_start,
        "peak_rss_mib": harness.peak_rss_mib(),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patch", type=int, default=32, help="patch edge")
    p.add_argument("--sample-size", type=int, default=256, help="volume edge")
    p.add_argument("--sample-rounds", type=int, default=3, help="shift: plain pass + Langevin step pairs")
    p.add_argument("--context-rounds", type=int, default=1, help="blend, fixed: pairs")
    p.add_argument("--sample-modes", nargs="+", default=list(MODES), choices=MODES, help="which stitchings")
    p.add_argument("--tile-batch", type=int, default=8, help="tiles per model call")
    p.add_argument("--overlap", type=float, default=0.5, help="blend window overlap")
    p.add_argument(
        "--malloc-row",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also shift with glibc's mmap threshold fixed (the RSS growth of changing tile shapes)",
    )


def apply_quick(args: argparse.Namespace) -> None:
    args.sample_size, args.sample_rounds, args.context_rounds = 64, 1, 1


def check(args: argparse.Namespace, error: Callable[[str], None]) -> None:
    if args.sample_size < args.patch:
        error("the volume must be at least one patch per axis")
    if min(args.sample_rounds, args.context_rounds) < 1:
        error("--sample-rounds and --context-rounds must be >= 1")


def measure(args: argparse.Namespace, log: harness.Log) -> dict[str, Any]:
    out = {}
    rows: list[tuple[str, str, dict[str, str] | None]] = [
        (m, m, None) for m in MODES if m in args.sample_modes
    ]
    if args.malloc_row and "shift" in args.sample_modes:
        # glibc raises its mmap threshold (up to 32 MiB) after freeing large blocks; later tensors of new
        # sizes then come from the heap and fragment it. Shift's ever-changing tile shapes make RSS grow
        # with every step; a fixed threshold returns freed tensors to the OS.
        rows.insert(1, (MALLOC_ROW, "shift", {"MALLOC_MMAP_THRESHOLD_": "131072"}))
    for name, mode, env in rows:
        spec = dict(
            stitch=mode,
            size=args.sample_size,
            patch=args.patch,
            tile_batch=args.tile_batch,
            overlap=args.overlap,
            rounds=args.sample_rounds if mode == "shift" else args.context_rounds,
            seed=args.seed,
        )
        r = out[name] = harness.run_child(stitched_steps, spec, threads=args.threads, env=env, name=name)
        log(
            f"  (b) {name}: step {r['step_s']:.1f} s, plain {r['plain_s']:.1f} s, "
            f"ratio {r['ratio']:.2f}, peak RSS {r['peak_rss_mib'] / MIB:.2f} GiB"
        )
    return out


def table(sampling: dict[str, Any]) -> str:
    rows = []
    for name, r in sampling.items():
        per_round = ", ".join(f"{v:.2f}" for v in r["ratios"])
        last = r["per_step"][-1]
        rows.append([
            name, last["calls"], f"{r['voxel_factor']:.2f}", last["shapes_so_far"], f"{r['step_s']:.1f}",
            f"{r['plain_s']:.1f}", f"{r['ratio']:.2f} ({per_round})", f"{r['peak_rss_mib'] / MIB:.2f}",
        ])  # fmt: skip
    header = ["stitching", "model calls / step", "voxels evaluated / volume", "batch shapes seen",
              "Langevin step (s)", "plain pass (s)", "step / plain", "peak RSS (GiB)"]  # fmt: skip
    return harness.markdown_table(header, rows)


def report(sampling: dict[str, Any], args: argparse.Namespace, log: harness.Log) -> None:
    n_tiles = args.sample_size**3 // args.patch**3
    log(
        f"(b) Stitched annealed-Langevin sampling of a {args.sample_size}^3 volume, small 3D model"
        f" (fp32, no_grad), tile_batch {args.tile_batch}; plain pass = {n_tiles} tiles of {args.patch}^3"
        f" in batches of {args.tile_batch}; step / plain: median (per round); blend overlap"
        f" {args.overlap}:\n"
    )
    log(table(sampling) + "\n")
    shift = sampling.get("shift")
    if shift is not None:
        rss_ok = shift["peak_rss_mib"] / MIB <= SAMPLE_RSS_TARGET_GIB
        log(
            f"shift: peak RSS {shift['peak_rss_mib'] / MIB:.2f} GiB (target <= {SAMPLE_RSS_TARGET_GIB}) "
            f"{harness.mark(rss_ok)}; step / plain {shift['ratio']:.2f} (target <= {STEP_RATIO_TARGET}) "
            f"{harness.mark(shift['ratio'] <= STEP_RATIO_TARGET)}\n"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return harness.parse_quick_args(__doc__, argv, add_arguments, apply_quick, check)


def main(argv: Sequence[str] | None = None, log: harness.Log = print) -> dict[str, Any]:
    args = parse_args(argv)
    return harness.run_bench(
        "bench_stitch",
        args,
        lambda _: {"sampling": measure(args, log)},
        lambda out: report(out["sampling"], args, log),
        log,
    )


if __name__ == "__main__":
    main()
