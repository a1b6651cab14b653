"""2D MNIST baseline: DSM vs SSM-VR trained for the same wall-clock budget, then sampled and evaluated.

Reproduce the README's table (about 2 x MINUTES of wall-clock with --parallel, plus sampling):

    .venv/bin/python scripts/bench_baseline2d.py --minutes 30 --parallel --out runs/bench2d

Each objective trains with the ``volscore baseline`` recipe's settings (``volscore.recipes.baseline_config``)
in its own child process. With --parallel the two trainings run at the same time, one CPU thread each, so
both get the same wall-clock and the same compute; otherwise they run one after the other with all threads.
Each run is sampled with the same annealed Langevin schedule (the run's geometric sigmas, 3 steps per
level, 3x NCSNv2's technique-4 step size: with only 3 steps per level the larger step mixes better; the
factor was chosen on a trained DSM model by the Frechet distance to the TRAINING split, never the test
split: 200 samples each, FD-vs-train 31.0 / 28.6 / 56.7 for 1x / 3x / 10x, 30x diverged) and
evaluated with volscore's MNIST classifier (confidence, class histogram, Frechet distance against the
floor and ceiling, nearest-training-image distance).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402


def train_configs(runs: dict[str, Path], args: argparse.Namespace) -> list:
    """The ``volscore baseline`` recipe's training run (``baseline_config``) for each objective."""
    from volscore.options import BaselineOptions
    from volscore.recipes import baseline_config

    return [
        baseline_config(BaselineOptions(out=str(run), minutes=args.minutes, objective=obj, preset=args.preset,
                                        lr=args.lr, seed=args.seed))
        for obj, run in runs.items()
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=25.0, help="training budget per objective")
    p.add_argument("--objectives", nargs="+", default=["dsm", "ssm-vr"])
    p.add_argument("--preset", default="small")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--n", type=int, default=500, help="samples per model")
    p.add_argument("--n-steps-each", type=int, default=3)
    p.add_argument(
        "--step-lr-scale",
        type=float,
        default=3.0,
        help="x NCSNv2's technique-4 step; 3 was chosen by FD against the TRAIN split (1, 3, 10, 30 tried)",
    )
    p.add_argument("--parallel", action="store_true", help="train all objectives at once, one thread each")
    harness.add_common_flags(
        p,
        threads=None,
        threads_help="torch threads for sampling and, without --parallel, training (default: as the CLI)",
        json_flag=False,
        out="runs/bench2d",
        out_help="folder of the runs",
    )
    p.add_argument("--results", default="scripts/results", help="where the grids and JSON for the README go")
    p.add_argument("--skip-train", action="store_true", help="reuse existing runs in --out")
    args = p.parse_args(argv)

    from volscore.generate import run_sigmas, sample_run_tensor, write_npy
    from volscore.metrics.mnist import evaluate_mnist_file, format_mnist_metrics
    from volscore.plots import save_image_grid
    from volscore.run import Run
    from volscore.sampling.settings import SamplerSettings
    from volscore.sampling.table import annealed_step_lr

    out = Path(args.out)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    runs = {obj: out / obj for obj in args.objectives}
    machine = harness.machine_info(args.threads)
    if not args.skip_train:
        for run in runs.values():
            shutil.rmtree(run, ignore_errors=True)
        # In parallel: one thread each, the same wall-clock and compute for both; else all threads each.
        threads = 1 if args.parallel else args.threads
        records = harness.train_in_children(
            train_configs(runs, args), args.parallel, threads, [os.devnull] * len(runs)
        )
        for obj, rec in zip(runs, records, strict=True):
            print(f"{obj}: trained {rec['step']} steps in {rec['seconds']:.0f} s")

    report: dict = {
        "date": machine["date"],
        "minutes": args.minutes,
        "parallel": args.parallel,
        "runs": {},
    }
    # Every run sampled the same way: annealed Langevin on the run's own levels, the README's constants.
    settings = SamplerSettings(
        sampler="annealed", n_steps_each=args.n_steps_each, step_lr_scale=args.step_lr_scale
    )
    with harness.using_threads(args.threads):
        for obj, run_dir in runs.items():
            run = Run.load(run_dir)
            sigmas = run_sigmas(run, settings)
            t0 = time.monotonic()
            x = sample_run_tensor(run, settings, args.n, seed=args.seed)
            seconds = time.monotonic() - t0
            npy = run_dir / "samples.npy"
            write_npy(npy, x.numpy())
            save_image_grid(x[:64].clamp(0, 1), results / f"mnist_{obj}.png", nrow=8)
            m = evaluate_mnist_file(npy)
            m.update(
                steps=run.step,
                samples_per_second=args.n / seconds,
                levels=len(sigmas),
                n_steps_each=args.n_steps_each,
                step_lr=annealed_step_lr(settings, sigmas),
            )
            report["runs"][obj] = m
            print(f"== {obj}: {run.step} steps\n{format_mnist_metrics(m)}\n{args.n / seconds:.2f} samples/s")

    harness.finish(machine)
    report["machine"] = harness.machine_summary(machine)
    report["load"] = {"start": machine["loadavg"], "end": machine["loadavg_end"]}
    harness.write_json(results / "bench_baseline2d.json", report)
    print(
        f"\n{report['date']}, {report['machine']}, {args.minutes} min per objective"
        f"{' (parallel, 1 thread each)' if args.parallel else ''}; load average "
        f"{harness.load_text(machine)}\n"
    )
    rows = []
    for obj, m in report["runs"].items():
        h = m["class_histogram"]
        rows.append([
            obj, m["steps"], f"{100 * m['confident_fraction']:.1f} %",
            f"{100 * min(h):.1f}-{100 * max(h):.1f} %",
            f"{m['fd']:.1f} ({m['fd_floor']:.1f} / {m['fd_ceiling']:.1f})",
            f"{m['nn_train_mean']:.2f} / {m['test_nn_train_mean']:.2f}", f"{m['samples_per_second']:.2f}",
        ])  # fmt: skip
    header = ["objective", "steps", "confident >= 0.9", "class range", "FD (floor / ceiling)",
              "NN-train / test-NN-train", "samples/s"]  # fmt: skip
    print(harness.markdown_table(header, rows, "l" * len(header)))
    return report


if __name__ == "__main__":
    main()
