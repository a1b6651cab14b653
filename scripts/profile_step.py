"""Where a DSM training step spends its time: torch.profiler over bench_perf's step, by operator.

    .venv/bin/python scripts/profile_step.py --threads 2 --dtype bf16 --json scripts/results/profile_step.json

The same step as ``bench_perf.py`` (small 3D preset, patch 32^3, batch 4, the trainer's DSM loss, Adam),
warmed up, then ``--steps`` steps under ``torch.profiler`` (CPU activity, input shapes recorded). Printed:
self time per operator summed over the steps (share of the step), the time in dtype conversions
(``aten::to`` / ``_to_copy`` / ``copy_``), and the convolutions' share, which is the part a faster kernel
cannot shrink further than the measured conv3d peak allows. ``--by-layer`` also records input shapes and
prints every convolution (forward and backward separately) with its time and achieved GFLOP/s, which finds
the layers that run far from the peak.
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
    p.add_argument("--by-layer", action="store_true", help="each convolution by input shape, with GFLOP/s")
    args = p.parse_args(argv)
    return harness.run_bench("profile_step", args, lambda _: measure(args), report)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    _, step = _volscore_step("dsm")
    for _ in range(2):
        with _autocast(args.dtype):
            step(args.dtype)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_layer) as prof:
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
    out = {"dtype": args.dtype, "ms_per_step": per_step, "share": share, "ops": ops[: args.top]}
    if args.by_layer:
        out["layers"] = _layers(prof.key_averages(group_by_input_shape=True), args.steps)
    return out


def _layers(events: Any, steps: int) -> list[dict[str, Any]]:
    """Convolutions by input shape: ms per step and GFLOP/s. Forward: 2 Cin Cout k^3 N V_out; backward: twice
    that (the input's and the weight's gradients; the first layer's input needs none, so its rate is an
    upper bound). V_out comes from the backward's output-gradient shape (a strided layer's is V_in / 8)."""
    import math

    convs = [e for e in events if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward")]
    out_voxels = {}  # (input shape, weight shape) -> output voxels per sample
    for e in convs:
        if e.key == "aten::convolution_backward" and len(e.input_shapes) > 2:
            grad, x, w = e.input_shapes[:3]
            out_voxels[(tuple(x), tuple(w))] = math.prod(grad[2:])
    rows = []
    for e in convs:
        forward = e.key == "aten::mkldnn_convolution"
        x, w = e.input_shapes[0:2] if forward else e.input_shapes[1:3]
        if len(x) != 5 or len(w) != 5:
            continue
        voxels = out_voxels.get((tuple(x), tuple(w)), math.prod(x[2:]))
        calls = max(1, e.count // steps)
        flops = 2 * w[0] * w[1] * math.prod(w[2:]) * x[0] * voxels * (1 if forward else 2) * calls
        ms = e.self_cpu_time_total / 1e3 / steps
        rows.append({
            "op": "forward" if forward else "backward", "input": list(x), "weight": list(w),
            "calls_per_step": calls, "ms_per_step": ms, "gflops_per_s": flops / ms / 1e6 if ms > 0 else None,
        })  # fmt: skip
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def report(out: dict[str, Any]) -> None:
    ms = out["ms_per_step"]
    print(f"{out['dtype']}: {ms:.1f} ms of operator self time per step")
    for r in out["ops"]:
        pct = 100 * r["self_ms_per_step"] / ms
        print(f"  {r['op']:<42} {r['calls']:5d} calls  {r['self_ms_per_step']:8.2f} ms  {pct:5.1f} %")
    for r in out.get("layers", []):
        rate = "" if r["gflops_per_s"] is None else f"{r['gflops_per_s']:7.1f} GFLOP/s"
        print(f"  {r['op']:<8} input {str(r['input']):<22} weight {str(r['weight']):<20} "
              f"x{r['calls_per_step']}  {r['ms_per_step']:7.2f} ms  {rate}")  # fmt: skip
    print(
        f"convolutions {100 * out['share']['convolutions']:.1f} %, "
        f"dtype conversions {100 * out['share']['conversions']:.1f} % of the step"
    )


if __name__ == "__main__":
    main()
