"""Benchmark of volscore on 3D volumes: training memory vs volume size, stitched sampling, seams, objectives.

Runs the four experiments, each also a script of its own (same flags):
(a) ``bench_train_memory.py``: training memory and speed against volume size (64^3, 256^3);
(b) ``bench_stitch.py``: stitched sampling cost and memory at 256^3 (shift, blend, fixed);
(c) ``bench_seams.py``: seam scores of samples and of a denoiser pass, per stitching;
(d) ``bench_objectives3d.py``: DSM vs SSM-VR and FD-SSM per training step (the 64^3 setting of (a)).
The children of (a) and (d) run in the same rounds (``--rounds``), so the ratios compare runs under the
same machine load, and (d) shares (a)'s DSM child on the smallest volume; tables report medians.

Reproduce the README's tables (41 minutes measured on the 2-core CPU shared with other jobs, load about 3;
roughly 20-25 minutes on a quiet one; ``--run`` with a ``volscore demo`` run saves the 4 training minutes):

    python scripts/bench_volumes3d.py --threads 1 --json bench_volumes3d.json

``--quick`` runs a smoke version (used by tests/test_bench_volumes3d.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import bench_objectives3d  # noqa: E402
import bench_seams  # noqa: E402
import bench_stitch  # noqa: E402
import bench_train_memory  # noqa: E402
import harness  # noqa: E402

EXPERIMENTS = (bench_train_memory, bench_stitch, bench_seams, bench_objectives3d)
MODES = bench_stitch.MODES
MALLOC_ROW = bench_stitch.MALLOC_ROW
WHOLE = bench_seams.WHOLE
smooth_volume = harness.smooth_volume


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        conflict_handler="resolve",  # the experiments share --patch, --tile-batch and the training flags
        epilog="example: python scripts/bench_volumes3d.py --threads 1 --json bench_volumes3d.json",
    )
    bench_train_memory.add_arguments(p)
    bench_stitch.add_arguments(p)
    bench_seams.add_arguments(p)
    harness.add_common_flags(
        p,
        threads=1,
        threads_help="torch threads (main process and children); 1 because on a shared CPU a second OpenMP "
        "thread stalls (5-10x slower steps seen under load); use 2 on a quiet 2-core machine",
    )
    p.add_argument("--skip-training", action="store_true", help="skip (a) and (d)")
    p.add_argument("--skip-objectives", action="store_true", help="skip (d)")
    p.add_argument("--skip-sampling", action="store_true", help="skip (b)")
    p.add_argument("--skip-seams", action="store_true", help="skip (c)")
    p.add_argument("--quick", action="store_true", help="tiny budget: a smoke test, not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        for experiment in (bench_train_memory, bench_stitch, bench_seams):
            experiment.apply_quick(args)
    checked = []
    if not args.skip_training:
        checked.append(bench_train_memory)
    if not args.skip_sampling:
        checked.append(bench_stitch)
    if not args.skip_seams:
        checked.append(bench_seams)
    for experiment in checked:
        experiment.check(args, p.error)
    return args


def measure(args: argparse.Namespace, tmp: Path, log: harness.Log) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not args.skip_training:
        small = min(args.volume_sizes)
        objectives = None if args.skip_objectives else bench_objectives3d.configs(args, tmp, small)
        out["training"] = bench_train_memory.measure(args, tmp, log, also=objectives)
    if not args.skip_sampling:
        out["sampling"] = bench_stitch.measure(args, log)
    if not args.skip_seams:
        out["seams"] = bench_seams.measure(args, tmp, log)
    return out


def report(out: dict[str, Any], args: argparse.Namespace, log: harness.Log) -> None:
    if "training" in out:
        bench_train_memory.report(out["training"], args, log)
        summary, small = out["training"]["summary"], min(args.volume_sizes)
        if any(k.startswith("ssm") for k in summary):
            bench_objectives3d.report(summary, small, args, log)
    if "sampling" in out:
        bench_stitch.report(out["sampling"], args, log)
    if "seams" in out:
        bench_seams.report(out["seams"], args, log)


def main(argv: Sequence[str] | None = None, log: harness.Log = print) -> dict[str, Any]:
    args = parse_args(argv)
    return harness.run_bench(
        "bench_volumes3d", args, lambda tmp: measure(args, tmp, log), lambda out: report(out, args, log), log
    )


if __name__ == "__main__":
    main()
