"""Where a DSM training step spends its time: torch.profiler over bench_perf's step, by operator.

    .venv/bin/python scripts/profile_step.py --threads 2 --dtype bf16 --json scripts/results/profile_step.json

The same step as ``bench_perf.py`` (small 3D preset, patch 32^3, batch 4, the trainer's DSM loss, Adam),
warmed up, then ``--steps`` steps under ``torch.profiler`` (CPU activity, input shapes recorded). Printed:
self time per operator summed over the steps (share of the step), the time in dtype conversions
(``aten::to`` / ``_to_copy`` / ``copy_``), and the convolutions' share, which is the part a faster kernel
cannot shrink further than the measured conv3d peak allows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402
from bench_perf import _autocast, _volscore_step  # noqa: E402

CONVERSIONS = ("aten::to", "aten::_to_copy", "aten::copy_")
CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_flags(p, threads=2, seed=False)
    p.add_argument("--steps", type=int, default=4, help="profiled steps (after 2 warm-up steps)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--top", type=int, default=25, help="operators printed")
    args = p.parse_args(argv)
    return harness.run_bench("profile_step", args, lambda _: measure(args), report)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    _, step = _volscore_step("dsm")
    for _ in range(2):
        with _autocast(args.dtype):
            step(args.dtype)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(args.steps):
            with _autocast(args.dtype):
                step(args.dtype)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(
        (
            {
                "op": e.key,
                "calls": e.count // args.steps,
                "self_ms_per_step": e.self_cpu_time_total / 1e3 / args.steps,
            }
            for e in events
        ),
        key=lambda r: -r["self_ms_per_step"],
    )
    per_step = total / 1e3 / args.steps
    share = {
        "conversions": sum(r["self_ms_per_step"] for r in ops if r["op"] in CONVERSIONS) / per_step,
        "convolutions": sum(r["self_ms_per_step"] for r in ops if r["op"] in CONVOLUTIONS) / per_step,
    }
    return {"dtype": args.dtype, "ms_per_step": per_step, "share": share, "ops": ops[: args.top]}


def report(out: dict[str, Any]) -> None:
    ms = out["ms_per_step"]
    print(f"{out['dtype']}: {ms:.1f} ms of operator self time per step")
    for r in out["ops"]:
        pct = 100 * r["self_ms_per_step"] / ms
        print(f"  {r['op']:<42} {r['calls']:5d} calls  {r['self_ms_per_step']:8.2f} ms  {pct:5.1f} %")
    print(
        f"convolutions {100 * out['share']['convolutions']:.1f} %, "
        f"dtype conversions {100 * out['share']['conversions']:.1f} % of the step"
    )


if __name__ == "__main__":
    main()
