"""3D shapes: DSM vs SSM-VR trained for the same wall-clock budget, sampled, scored against held-out shapes.

Reproduce the README's table (about 2 x MINUTES per kind with --parallel, plus about 20 minutes of
sampling and scoring per kind):

    .venv/bin/python scripts/bench_shapes.py --minutes 30 --parallel --out runs/bench_shapes

For each kind (``primitives``, ``digits``; 32^3, 1,000 training shapes) both objectives train with
``volscore train --data shapes:KIND``; with --parallel they run at the same time, one CPU thread each,
so both get the same wall-clock and compute. Each run then samples ``--n`` shapes with ``volscore
sample``: the annealed Langevin sampler on the run's geometric sigmas re-spaced to ``--num-sigmas``
levels (40), 2 steps per level, 3x NCSNv2's technique-4 step (the 2D baseline's factor, fixed before any
shape was sampled: nothing here is tuned on the reference set). A network evaluation of one 32^3 shape
costs about 5 GFLOP (about 0.12 s on one thread of this CPU), so 100 shapes x 81 evaluations take about
17 minutes per model: the sample count and the chain length are what fits the budget, not what the
metrics would like. Scored with ``volscore.metrics.evaluate_shapes`` against as many reference shapes as
samples (the first ``--n`` of the 200; 1-NNA is centred on 50 % only for sets of equal size): MMD, COV
and 1-NNA with 1 - IoU of the 0.5-thresholded occupancies, next to the floor (as many training shapes
scored the same way), the nearest-training-shape distance, the single-component fraction and, for
digits, the class histogram from a 3D classifier trained on the training shapes (its accuracy on all
200 reference shapes is reported). Sheets of the first 36 samples go to ``--results``.
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

KINDS = ("primitives", "digits")


def _train_cmd(kind: str, objective: str, out: Path, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "volscore", "train", "--data", f"shapes:{kind}", "--out", str(out),
        "--objective", objective, "--minutes", str(args.minutes), "--preset", args.preset,
        "--lr", str(args.lr), "--seed", str(args.seed),
    ]  # fmt: skip


def _sample_cmd(run: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "volscore", "sample", "--run", str(run), "--out", str(out), "--n", str(args.n),
        "--num-sigmas", str(args.num_sigmas), "--n-steps-each", str(args.n_steps_each),
        "--step-lr-scale", str(args.step_lr_scale), "--seed", str(args.seed),
    ]  # fmt: skip


def _run_all(cmds: list[list[str]], parallel: bool, logs: list[Path]) -> None:
    """Run the commands at once with one thread each (parallel) or one after the other; fail loudly."""
    env = dict(os.environ)
    if parallel:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    handles = [log.open("w") for log in logs]
    try:
        if parallel:
            procs = [
                subprocess.Popen(c, env=env, stdout=h, stderr=h) for c, h in zip(cmds, handles, strict=True)
            ]
            codes = [proc.wait() for proc in procs]
        else:
            codes = [
                subprocess.call(c, env=env, stdout=h, stderr=h) for c, h in zip(cmds, handles, strict=True)
            ]
    finally:
        for h in handles:
            h.close()
    if any(codes):
        failed = [str(log) for log, code in zip(logs, codes, strict=True) if code]
        raise SystemExit(f"exit codes {codes}; see {', '.join(failed)}")


def _digit_classifier(train, train_labels, reference, reference_labels, cache: Path, steps: int):
    import torch

    from volscore.metrics import classify, load_or_train_classifier

    clf = load_or_train_classifier(cache, train[:, None], train_labels, steps, batch_size=64, width=16)
    _, probs = classify(clf, torch.as_tensor(reference)[:, None])
    accuracy = float((probs.argmax(1) == reference_labels).double().mean())
    return clf, accuracy


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per objective")
    p.add_argument("--objectives", nargs="+", default=["dsm", "ssm-vr"])
    p.add_argument("--preset", default="small")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--n", type=int, default=100, help="samples per model (<= 200, the reference set's size)")
    p.add_argument("--num-sigmas", type=int, default=40, help="sampling levels (the run's sigmas re-spaced)")
    p.add_argument("--n-steps-each", type=int, default=2)
    p.add_argument("--step-lr-scale", type=float, default=3.0)
    p.add_argument("--parallel", action="store_true", help="run the objectives at once, one thread each")
    p.add_argument("--out", default="runs/bench_shapes")
    p.add_argument("--results", default="scripts/results", help="where the sheets and JSON for the README go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-train", action="store_true", help="reuse existing runs in --out")
    p.add_argument(
        "--classifier-steps", type=int, default=600, help="training steps of the 3D digit classifier"
    )
    p.add_argument("--skip-sample", action="store_true", help="reuse existing samples in --out")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from volscore.data.shapes import make_shapes
    from volscore.generate import load_run
    from volscore.machine import cpu_name
    from volscore.metrics import evaluate_shapes
    from volscore.plots import save_shape_sheet

    out, results = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "minutes": args.minutes,
        "parallel": args.parallel,
        "sampler": {k: getattr(args, k) for k in ("n", "num_sigmas", "n_steps_each", "step_lr_scale")},
        "kinds": {},
    }
    for kind in args.kinds:
        runs = {obj: out / f"{kind}_{obj}" for obj in args.objectives}
        folders = {obj: out / f"{kind}_{obj}_samples" for obj in args.objectives}
        if not args.skip_train:
            for run in runs.values():
                shutil.rmtree(run, ignore_errors=True)
            cmds = [_train_cmd(kind, obj, run, args) for obj, run in runs.items()]
            _run_all(cmds, args.parallel, [out / f"{kind}_{obj}.train.log" for obj in runs])
        if not args.skip_sample:
            for folder in folders.values():
                shutil.rmtree(folder, ignore_errors=True)
            t0 = time.monotonic()
            cmds = [_sample_cmd(runs[obj], folders[obj], args) for obj in runs]
            _run_all(cmds, args.parallel, [out / f"{kind}_{obj}.sample.log" for obj in runs])
            print(f"{kind}: sampled {args.n} shapes per model in {time.monotonic() - t0:.0f} s")

        train, train_labels = make_shapes(kind, split="train", seed=args.seed)
        reference, reference_labels = make_shapes(kind, split="reference", seed=args.seed)
        classifier, entry = None, {}
        if kind == "digits":
            classifier, accuracy = _digit_classifier(
                torch.from_numpy(train),
                torch.from_numpy(train_labels),
                reference,
                torch.from_numpy(reference_labels),
                out / "digit_classifier.pt",
                args.classifier_steps,
            )
            entry["classifier_reference_accuracy"] = accuracy
            print(f"digits: 3D classifier accuracy on the reference shapes {100 * accuracy:.1f} %")
        save_shape_sheet(reference[:36], results / f"shapes_{kind}_reference.png", nrow=6)
        for obj, run in runs.items():
            _, state = load_run(run)
            samples = np.load(folders[obj] / "samples.npy")
            # As many reference shapes as samples: 1-NNA is only centred on 50 % for sets of equal size.
            ref = reference[: len(samples)]
            m = evaluate_shapes(samples, ref, train, classifier=classifier, seed=args.seed)
            m.update(steps=int(state["step"]))
            entry[obj] = m
            save_shape_sheet(samples[:36], results / f"shapes_{kind}_{obj}.png", nrow=6)
            print(f"== {kind} {obj}: {json.dumps(m)}")
        report["kinds"][kind] = entry

    path = results / "bench_shapes.json"
    if path.exists():  # keep the other kinds' figures when only some kinds were rerun
        old = json.loads(path.read_text())
        report["kinds"] = {**old.get("kinds", {}), **report["kinds"]}
    path.write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    return report


def _print_table(report: dict) -> None:
    print(f"\n{report['date']}, {report['machine']}, {report['minutes']} min per objective\n")
    print(
        "| kind | objective | steps | 1-NNA (floor) | COV (floor) | MMD (floor) | NN-train / ref NN-train "
        "| one component | empty | classes (confident) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, entry in report["kinds"].items():
        for obj, m in entry.items():
            if not isinstance(m, dict):
                continue
            classes = "-"
            if "class_histogram" in m:
                h = m["class_histogram"]
                classes = f"{100 * min(h):.1f}-{100 * max(h):.1f} % ({100 * m['confident_fraction']:.0f} %)"
            print(
                f"| {kind} | {obj} | {m['steps']} "
                f"| {100 * m['one_nna']:.1f} % ({100 * m['floor_one_nna']:.1f} %) "
                f"| {m['coverage']:.2f} ({m['floor_coverage']:.2f}) | {m['mmd']:.3f} ({m['floor_mmd']:.3f}) "
                f"| {m['nn_train_mean']:.3f} / {m['ref_nn_train_mean']:.3f} "
                f"| {100 * m['connected_fraction']:.0f} % | {100 * m['empty_fraction']:.0f} % | {classes} |"
            )


if __name__ == "__main__":
    main()
