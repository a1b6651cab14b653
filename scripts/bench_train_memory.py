"""Training memory against volume size: does a patch model's RSS depend on the volume it trains on?

Training at patch 32 (preset small, batch 4, bf16 autocast, coordinate channels, DSM) on synthetic smooth
random volumes of 64^3 and 256^3, written as NIfTI and read through the ordinary data path (``open_source``
inside ``Trainer``): median seconds per step, training voxels/s and peak RSS, each run in its own child
process with the same number of steps, round-robin over ``--rounds`` so that ratios compare runs under the
same machine load. Target: RSS(256^3) / RSS(64^3) <= 1.1. sigma_max is given (NCSNv2's estimate draws
1000 patches once, a transient that would hide how memory scales), except in one extra run that measures
that default path. Peak RSS is each child's own (VmHWM), one measurement per child.

    python scripts/bench_train_memory.py --threads 1 --json bench_train_memory.json

``--quick`` runs a smoke version (tests/test_bench_train_memory.py). Part (a) of ``bench_volumes3d.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

RSS_RATIO_TARGET = 1.1  # RSS(largest volume) / RSS(smallest volume)


def training_config(args: argparse.Namespace, data: Path, out: Path, objective: str, estimate: bool = False):
    """The 3D training setting of this experiment and of ``bench_objectives3d`` (one volume, patches)."""
    from volscore.config import TrainConfig

    return TrainConfig(
        data=[str(data)],
        out=str(out),
        objective=objective,
        preset="small",
        steps=args.warmup + args.steps,
        batch_size=args.batch,
        amp="bf16",
        patch_size=args.patch,
        coords=True,
        seed=args.seed,
        sigma_max=None if estimate else 10.0,  # fixed unless measuring the estimate's transient
        num_sigmas=None if estimate else 100,
        device="cpu",
    )


def run_name(name: str) -> str:
    return "run_" + name.replace(" ", "_").replace("^", "")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the 3D training setting (shared with ``bench_objectives3d``)."""
    p.add_argument("--patch", type=int, default=32, help="patch edge")
    p.add_argument("--batch", type=int, default=4, help="training batch")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per child")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="round-robin repetitions of every child")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_arguments(p)
    p.add_argument("--volume-sizes", type=int, nargs="+", default=[64, 256], help="synthetic volume edges")


def apply_quick(args: argparse.Namespace) -> None:
    args.volume_sizes, args.steps, args.warmup, args.rounds = [40, 48], 2, 1, 1


def check(args: argparse.Namespace, error: Callable[[str], None]) -> None:
    if min(args.volume_sizes) < args.patch:
        error("volumes must be at least one patch per axis")
    if min(args.steps, args.rounds) < 1:
        error("--steps and --rounds must be >= 1")


def measure(
    args: argparse.Namespace, tmp: Path, log: harness.Log, also: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The children of every volume size, plus ``also`` (other named ``TrainConfig``s, e.g. the objectives of
    ``bench_objectives3d``) in the same rounds; once, after the first round, the default sigma estimate."""
    files = {n: harness.smooth_volume_file(tmp, n, args.seed + n) for n in args.volume_sizes}
    small, large = min(args.volume_sizes), max(args.volume_sizes)
    configs = {
        f"dsm {n}^3": training_config(args, files[n], tmp / run_name(f"dsm {n}^3"), "dsm")
        for n in args.volume_sizes
    }
    configs |= also or {}
    estimated: dict[str, Any] = {}

    def estimate(r: int) -> None:
        if r == 0:  # once: the default path, with NCSNv2's sigma_max estimate at start-up
            cfg = training_config(args, files[small], tmp / "run_estimate", "dsm", estimate=True)
            estimated.update(harness.run_child(harness.timed_training, cfg, args.warmup, args.steps,
                                               threads=args.threads, name="estimate"))  # fmt: skip
            log(f"  (a) dsm {small}^3 with sigma estimate: peak RSS {estimated['peak_rss_mib']:.0f} MiB")

    runs = harness.time_training_rounds(
        configs, args.rounds, args.warmup, args.steps, args.threads, log, estimate, prefix="(a) "
    )
    summary = harness.summarize_runs(runs)
    ratio = summary[f"dsm {large}^3"]["peak_rss_mib"] / summary[f"dsm {small}^3"]["peak_rss_mib"]
    return {"runs": runs, "summary": summary, "estimated": estimated, "rss_ratio": ratio}


def table(train: dict[str, Any], sizes: Sequence[int]) -> str:
    s = train["summary"]
    base = s[f"dsm {min(sizes)}^3"]["peak_rss_mib"]

    def row(name: str, r: dict[str, float]) -> list[str]:
        return [
            name, f"{r['sec_per_step']:.3f}", f"{r['voxels_per_s'] / 1e3:.0f} k", f"{r['rss_start_mib']:.0f}",
            f"{r['rss_after_setup_mib']:.0f}", f"{r['peak_rss_mib']:.0f}", f"{r['peak_rss_mib'] / base:.2f}",
        ]  # fmt: skip

    rows = [row(f"{n}^3", s[f"dsm {n}^3"]) for n in sorted(sizes)]
    if train.get("estimated"):
        rows.append(row(f"{min(sizes)}^3, sigma_max estimated (default)", train["estimated"]))
    header = ["volume", "s / step", "training voxels/s", "RSS at start (MiB)", "after data + model (MiB)",
              "peak RSS (MiB)", "peak / smallest"]  # fmt: skip
    return harness.markdown_table(header, rows)


def report(train: dict[str, Any], args: argparse.Namespace, log: harness.Log) -> None:
    sizes = args.volume_sizes
    log(
        f"(a) Training, patch {args.patch}, preset small, batch {args.batch}, bf16 autocast, coordinates,"
        f" DSM, on synthetic smooth NIfTI volumes through open_source/Trainer; {args.steps} timed steps "
        f"after {args.warmup} per child process, medians of {args.rounds} round(s); sigma_max fixed "
        "except in the last row:\n"
    )
    log(table(train, sizes) + "\n")
    ratio = train["rss_ratio"]
    log(
        f"RSS({max(sizes)}^3) / RSS({min(sizes)}^3) = {ratio:.2f} "
        f"(target <= {RSS_RATIO_TARGET}) {harness.mark(ratio <= RSS_RATIO_TARGET)}\n"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return harness.parse_quick_args(__doc__, argv, add_arguments, apply_quick, check)


def main(argv: Sequence[str] | None = None, log: harness.Log = print) -> dict[str, Any]:
    args = parse_args(argv)
    return harness.run_bench(
        "bench_train_memory",
        args,
        lambda tmp: {"training": measure(args, tmp, log)},
        lambda out: report(out["training"], args, log),
        log,
    )


if __name__ == "__main__":
    main()
