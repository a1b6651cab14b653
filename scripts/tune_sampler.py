"""How the MNIST sampler's constants were chosen: a coordinate search on one model and one seed, chosen by the
Frechet distance to the *training* split, then reported on another seed against the test split.

    .venv/bin/python scripts/tune_sampler.py --run pretrained:mnist --threads 1 \
        --json scripts/results/samplers/tune_sampler.json

For ``--sampler`` (EDM's stochastic sampler by default) at ``--levels`` noise levels (18: 35 network
evaluations), each constant of ``GRID`` is varied alone from the current setting on ``--tune-seed``'s samples;
every constant whose best value lowers ``fd_train`` is taken, then the combined setting is checked on the
same samples and kept only if it is better than each single change. The default and the chosen setting are
then drawn with ``--report-seed`` (other noise, never looked at while choosing) and scored against the test
split, on ``--run`` and on each of ``--also`` (models the choice was not made on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

# Values tried for each constant, beside the current one (SamplerSettings' defaults; sigma_max None = the
# run's own, 15.16 for the bundled MNIST model).
GRID: dict[str, list[Any]] = {
    "rho": [3.0, 5.0, 10.0],
    "sigma_min": [0.002, 0.03, 0.06],
    "sigma_max": [40.0, 80.0],
    "s_tmin": [0.01, 0.2],
    "s_tmax": [1.0, 5.0, 15.0],
    "s_noise": [1.0, 1.007],
}
KEYS = ("confident_fraction", "fd", "fd_train", "fd_floor", "class_range", "nfe", "seconds")


def quality(run: Any, sampler: str, levels: int, extra: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    from bench_samplers import mnist_quality, settings_for

    r = mnist_quality(run, settings_for(sampler, levels, **extra), n, seed)
    return {"extra": dict(extra), **{k: r[k] for k in KEYS}}


def search(run: Any, args: argparse.Namespace, say=print) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The coordinate search on ``args.tune_seed``: (chosen constants, every row measured)."""

    def measure(extra: dict[str, Any]) -> dict[str, Any]:
        row = quality(run, args.sampler, args.levels, extra, args.n, args.tune_seed)
        say(f"  {extra or 'defaults'}: fd_train {row['fd_train']:.2f} confident "
            f"{100 * row['confident_fraction']:.1f} %")  # fmt: skip
        rows.append(row)
        return row

    rows: list[dict[str, Any]] = []
    base = measure({})["fd_train"]
    singles: dict[str, tuple[Any, float]] = {}
    for name, values in GRID.items():
        best = min(((v, measure({name: v})["fd_train"]) for v in values), key=lambda t: t[1])
        if best[1] < base:
            singles[name] = best
    chosen = {name: value for name, (value, _) in singles.items()}
    if len(chosen) > 1:
        combined = measure(chosen)["fd_train"]
        if combined > min(fd for _, fd in singles.values()):  # the changes do not add up: keep the best one
            name = min(singles, key=lambda k: singles[k][1])
            chosen = {name: singles[name][0]}
    return chosen, rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="pretrained:mnist", help="the MNIST model the constants are chosen on")
    p.add_argument("--also", nargs="*", default=[], help="other MNIST runs to report the choice on")
    p.add_argument("--sampler", default="edm", choices=("edm", "heun", "dpm"))
    p.add_argument("--levels", type=int, default=18)
    p.add_argument("--n", type=int, default=500, help="samples per setting")
    p.add_argument("--tune-seed", type=int, default=0)
    p.add_argument("--report-seed", type=int, default=1)
    harness.add_common_flags(p, seed=False)
    args = p.parse_args(argv)
    if args.tune_seed == args.report_seed:
        p.error("--report-seed must differ from --tune-seed (the report is on samples not chosen on)")
    return harness.run_bench("tune_sampler", args, lambda _tmp: measure(args), print_report)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from volscore.run import Run

    run = Run.load(args.run)
    print(f"coordinate search on {args.run}, seed {args.tune_seed}, {args.sampler} at {args.levels} levels")
    chosen, rows = search(run, args)
    print(f"chosen: {chosen or 'the defaults'}")
    report: list[dict[str, Any]] = []
    for name in [args.run, *args.also]:
        model = run if name == args.run else Run.load(name)
        for label, extra in (("defaults", {}), ("chosen", chosen)) if chosen else (("defaults", {}),):
            row = quality(model, args.sampler, args.levels, extra, args.n, args.report_seed)
            report.append({"run": name, "setting": label, **row})
    return {"chosen": chosen, "search": rows, "report": report}


def print_report(out: dict[str, Any]) -> None:
    table = [
        [r["run"], r["setting"], str(r["extra"] or "-"), r["nfe"], f"{100 * r['confident_fraction']:.1f} %",
         f"{100 * r['class_range'][0]:.1f}-{100 * r['class_range'][1]:.1f} %", f"{r['fd']:.2f}",
         f"{r['fd_floor']:.2f}"]
        for r in out["report"]
    ]  # fmt: skip
    header = ["run", "setting", "constants", "NFE", "confident", "classes", "FD (test)", "floor"]
    print(harness.markdown_table(header, table, "lllrrrrr"))


if __name__ == "__main__":
    main()
