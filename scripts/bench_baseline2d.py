"""2D MNIST baseline: DSM vs SSM-VR trained for the same wall-clock budget, then sampled and evaluated.

Reproduce the README's table (about 2 x MINUTES of wall-clock with --parallel, plus sampling):

    .venv/bin/python scripts/bench_baseline2d.py --minutes 30 --parallel --out runs/bench2d

With --parallel the two trainings run at the same time, one CPU thread each, so both get the same
wall-clock and the same compute; otherwise they run one after the other with all threads.
Each run is sampled with the same annealed Langevin schedule (the run's geometric sigmas, 3 steps per
level, 3x NCSNv2's technique-4 step size: with only 3 steps per level the larger step mixes better; the
factor was chosen on a trained DSM model by the Frechet distance to the TRAINING split, never the test
split: 200 samples each, FD-vs-train 31.0 / 28.6 / 56.7 for 1x / 3x / 10x, 30x diverged) and
evaluated with volscore's MNIST classifier (confidence, class histogram, Frechet distance against the
floor and ceiling, nearest-training-image distance).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _train_cmd(objective: str, out: Path, minutes: float, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "volscore", "train", "--data", "mnist", "--out", str(out),
        "--objective", objective, "--minutes", str(minutes), "--preset", args.preset,
        "--lr", str(args.lr), "--seed", str(args.seed),
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
    p.add_argument("--out", default="runs/bench2d")
    p.add_argument("--results", default="scripts/results", help="where the grids and JSON for the README go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-train", action="store_true", help="reuse existing runs in --out")
    args = p.parse_args(argv)

    import torch

    from volscore.cli import evaluate_mnist, format_mnist_metrics
    from volscore.generate import load_run, sample_images, sampling_schedule
    from volscore.machine import cpu_name
    from volscore.plots import save_image_grid

    out = Path(args.out)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    runs = {obj: out / obj for obj in args.objectives}
    if not args.skip_train:
        for run in runs.values():
            shutil.rmtree(run, ignore_errors=True)
        env = dict(os.environ)
        if args.parallel:
            env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            procs = [
                subprocess.Popen(_train_cmd(o, r, args.minutes, args), env=env, stderr=subprocess.DEVNULL)
                for o, r in runs.items()
            ]
            codes = [proc.wait() for proc in procs]
        else:
            codes = [
                subprocess.call(_train_cmd(o, r, args.minutes, args), env=env, stderr=subprocess.DEVNULL)
                for o, r in runs.items()
            ]
        if any(codes):
            raise SystemExit(f"training failed with exit codes {codes}")

    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "minutes": args.minutes,
        "parallel": args.parallel,
        "runs": {},
    }
    for obj, run in runs.items():
        model, state = load_run(run)
        sigmas, step_lr = sampling_schedule(state["config"], None, args.n_steps_each)
        step_lr *= args.step_lr_scale
        t0 = time.monotonic()
        x = sample_images(model, args.n, (1, 28, 28), sigmas, args.n_steps_each, step_lr, seed=args.seed)
        seconds = time.monotonic() - t0
        npy = run / "samples.npy"
        import numpy as np

        np.save(npy, x.numpy())
        save_image_grid(x[:64].clamp(0, 1), results / f"mnist_{obj}.png", nrow=8)
        m = evaluate_mnist(npy)
        m.update(
            steps=int(state["step"]),
            samples_per_second=args.n / seconds,
            levels=len(sigmas),
            n_steps_each=args.n_steps_each,
            step_lr=step_lr,
        )
        report["runs"][obj] = m
        print(f"== {obj}: {state['step']} steps\n{format_mnist_metrics(m)}\n{args.n / seconds:.2f} samples/s")

    (results / "bench_baseline2d.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n{report['date']}, {report['machine']}, {args.minutes} min per objective"
        f"{' (parallel, 1 thread each)' if args.parallel else ''}\n"
    )
    print(
        "| objective | steps | confident >= 0.9 | class range | FD (floor / ceiling) "
        "| NN-train / test-NN-train | samples/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for obj, m in report["runs"].items():
        h = m["class_histogram"]
        print(
            f"| {obj} | {m['steps']} | {100 * m['confident_fraction']:.1f} % "
            f"| {100 * min(h):.1f}-{100 * max(h):.1f} % "
            f"| {m['fd']:.1f} ({m['fd_floor']:.1f} / {m['fd_ceiling']:.1f}) "
            f"| {m['nn_train_mean']:.2f} / {m['test_nn_train_mean']:.2f} | {m['samples_per_second']:.2f} |"
        )
    return report


if __name__ == "__main__":
    main()
