"""DSM vs SSM-VR and FD-SSM on 3D patches: seconds per training step and peak RSS.

The setting of ``bench_train_memory`` on its smallest volume (patch 32, preset small, batch 4, bf16
autocast, coordinate channels, a synthetic smooth 64^3 NIfTI volume): each objective trains in its own child
process, round-robin over ``--rounds``, so that the ratios to DSM compare runs under the same load; the
table reports medians.

    python scripts/bench_objectives3d.py --threads 1 --json bench_objectives3d.json

``--quick`` runs a smoke version (tests/test_bench_objectives3d.py). Part (d) of ``bench_volumes3d.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402
from bench_train_memory import add_training_arguments, run_name, training_config  # noqa: E402

OBJECTIVES = ("dsm", "ssm-vr", "ssm-fd")


def configs(args: argparse.Namespace, tmp: Path, size: int, objectives: Sequence[str] = OBJECTIVES):
    """The named ``TrainConfig`` of each objective on the ``size``^3 volume (same names as
    ``bench_train_memory``'s, so a combined run shares the DSM child)."""
    data = harness.smooth_volume_file(tmp, size, args.seed + size)
    names = {obj: f"{obj} {size}^3" for obj in objectives}
    return {name: training_config(args, data, tmp / run_name(name), obj) for obj, name in names.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_arguments(p)
    p.add_argument("--volume-size", type=int, default=64, help="synthetic volume edge")


def apply_quick(args: argparse.Namespace) -> None:
    args.volume_size, args.steps, args.warmup, args.rounds = 40, 2, 1, 1


def check(args: argparse.Namespace, error: Callable[[str], None]) -> None:
    if args.volume_size < args.patch:
        error("the volume must be at least one patch per axis")
    if min(args.steps, args.rounds) < 1:
        error("--steps and --rounds must be >= 1")


def measure(args: argparse.Namespace, tmp: Path, log: harness.Log) -> dict[str, Any]:
    named = configs(args, tmp, args.volume_size)
    runs = harness.time_training_rounds(
        named, args.rounds, args.warmup, args.steps, args.threads, log, prefix="(d) "
    )
    return {"runs": runs, "summary": harness.summarize_runs(runs)}


def table(summary: dict[str, dict[str, float]], size: int) -> str:
    dsm = summary[f"dsm {size}^3"]
    rows = []
    for obj in OBJECTIVES:
        r = summary.get(f"{obj} {size}^3")
        if r is None:
            continue
        rows.append([
            obj.upper(), f"{r['sec_per_step']:.3f}", f"{r['sec_per_step'] / dsm['sec_per_step']:.2f}x",
            f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] / dsm['peak_rss_mib']:.2f}x",
        ])  # fmt: skip
    return harness.markdown_table(["objective", "s / step", "vs DSM", "peak RSS (MiB)", "vs DSM"], rows)


def report(
    summary: dict[str, dict[str, float]], size: int, args: argparse.Namespace, log: harness.Log
) -> None:
    log(f"(d) Objectives, same setting ({size}^3 volume), medians of {args.rounds} round(s):\n")
    log(table(summary, size) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return harness.parse_quick_args(__doc__, argv, add_arguments, apply_quick, check)


def main(argv: Sequence[str] | None = None, log: harness.Log = print) -> dict[str, Any]:
    args = parse_args(argv)
    return harness.run_bench(
        "bench_objectives3d",
        args,
        lambda tmp: {"objectives": measure(args, tmp, log)},
        lambda out: report(out["objectives"]["summary"], args.volume_size, args, log),
        log,
    )


if __name__ == "__main__":
    main()
