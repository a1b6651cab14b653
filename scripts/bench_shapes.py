"""3D shapes: DSM vs SSM-VR trained for the same wall-clock budget, sampled, scored against held-out shapes.

Reproduce the README's table (about 2 x MINUTES per kind with --parallel, plus about 20 minutes of
sampling and scoring per kind):

    .venv/bin/python scripts/bench_shapes.py --minutes 30 --parallel --out runs/bench_shapes

For each kind (``primitives``, ``digits``; 32^3, 1,000 training shapes) both objectives train on
``shapes:KIND``, each in its own child process (``harness.train_in_children``); with --parallel they run
at the same time, one CPU thread each, so both get the same wall-clock and compute. Each run then samples
``--n`` shapes into a folder (``volscore.generate.sample_run``, in child processes the same way): the
annealed Langevin sampler on the run's geometric sigmas re-spaced to ``--num-sigmas``
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
import shutil
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

from volscore.data.shapes import KINDS  # noqa: E402


def _train_config(kind: str, objective: str, out: Path, args: argparse.Namespace):
    from volscore.config import TrainConfig

    return TrainConfig(data=[f"shapes:{kind}"], out=str(out), objective=objective, minutes=args.minutes,
                       preset=args.preset, lr=args.lr, seed=args.seed)  # fmt: skip


def _settings(args: argparse.Namespace):
    """Annealed Langevin on the run's sigma range re-spaced to ``--num-sigmas`` levels."""
    from volscore.sampling.settings import SamplerSettings

    return SamplerSettings(sampler="annealed", steps=args.num_sigmas, n_steps_each=args.n_steps_each,
                           step_lr_scale=args.step_lr_scale)  # fmt: skip


def sample_folder(run: str, folder: str, n: int, seed: int, settings) -> dict:
    """(Child side.) ``n`` shapes of ``run`` into ``folder`` (shape_XXX.nii.gz, samples.npy, shapes.png)."""
    from volscore.generate import describe_record, sample_run
    from volscore.options import SampleOptions
    from volscore.run import Run

    record = sample_run(Run.load(run), SampleOptions(out=folder, n=n, seed=seed, force=True), settings)
    print(describe_record(record))
    return record


def _check(run_children, *args) -> None:
    """``run_children(*args)`` (training or sampling children, logged to files in --out); a failure ends the
    script with their errors."""
    try:
        run_children(*args)
    except harness.ChildError as exc:
        raise SystemExit(str(exc)) from exc


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
    harness.add_common_flags(
        p,
        threads=None,
        threads_help="threads of each training and sampling child without --parallel (default: as the CLI)",
        json_flag=False,
        out="runs/bench_shapes",
        out_help="folder of the runs, samples and logs",
    )
    p.add_argument("--results", default="scripts/results", help="where the sheets and JSON for the README go")
    p.add_argument("--skip-train", action="store_true", help="reuse existing runs in --out")
    p.add_argument(
        "--classifier-steps", type=int, default=600, help="training steps of the 3D digit classifier"
    )
    p.add_argument("--skip-sample", action="store_true", help="reuse existing samples in --out")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from volscore.data.shapes import make_shapes
    from volscore.metrics import evaluate_shapes
    from volscore.plots import save_shape_sheet
    from volscore.run import Run

    out, results = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.parallel else args.threads  # in parallel one thread each
    machine = harness.machine_info(threads)
    report: dict = {
        "date": machine["date"],
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
            configs = [_train_config(kind, obj, run, args) for obj, run in runs.items()]
            logs = [out / f"{kind}_{obj}.train.log" for obj in runs]
            _check(harness.train_in_children, configs, args.parallel, threads, logs)
        if not args.skip_sample:
            for folder in folders.values():
                shutil.rmtree(folder, ignore_errors=True)
            t0 = time.monotonic()
            starts = [
                partial(harness.start_child, sample_folder, str(run), str(folders[obj]), args.n, args.seed,
                        _settings(args), threads=threads, log=out / f"{kind}_{obj}.sample.log",
                        name=f"sample {run}")
                for obj, run in runs.items()
            ]  # fmt: skip
            _check(harness.run_children, starts, args.parallel)
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
            steps = Run.load(run).step
            samples = np.load(folders[obj] / "samples.npy")
            # As many reference shapes as samples: 1-NNA is only centred on 50 % for sets of equal size.
            ref = reference[: len(samples)]
            m = evaluate_shapes(samples, ref, train, classifier=classifier, seed=args.seed)
            m.update(steps=steps)
            entry[obj] = m
            save_shape_sheet(samples[:36], results / f"shapes_{kind}_{obj}.png", nrow=6)
            print(f"== {kind} {obj}: {json.dumps(m)}")
        report["kinds"][kind] = entry

    harness.finish(machine)
    report["machine"] = harness.machine_summary(machine)
    report["load"] = {"start": machine["loadavg"], "end": machine["loadavg_end"]}
    path = results / "bench_shapes.json"
    if path.exists():  # keep the other kinds' figures when only some kinds were rerun
        old = json.loads(path.read_text())
        report["kinds"] = {**old.get("kinds", {}), **report["kinds"]}
    harness.write_json(path, report)
    _print_table(report)
    return report


def _print_table(report: dict) -> None:
    load = report.get("load") or {}
    print(
        f"\n{report['date']}, {report['machine']}, {report['minutes']} min per objective; load average "
        f"{load.get('start')} at start, {load.get('end')} at end\n"
    )
    rows = []
    for kind, entry in report["kinds"].items():
        for obj, m in entry.items():
            if not isinstance(m, dict):
                continue
            classes = "-"
            if "class_histogram" in m:
                h = m["class_histogram"]
                classes = f"{100 * min(h):.1f}-{100 * max(h):.1f} % ({100 * m['confident_fraction']:.0f} %)"
            rows.append([
                kind, obj, m["steps"], f"{100 * m['one_nna']:.1f} % ({100 * m['floor_one_nna']:.1f} %)",
                f"{m['coverage']:.2f} ({m['floor_coverage']:.2f})", f"{m['mmd']:.3f} ({m['floor_mmd']:.3f})",
                f"{m['nn_train_mean']:.3f} / {m['ref_nn_train_mean']:.3f}",
                f"{100 * m['connected_fraction']:.0f} %", f"{100 * m['empty_fraction']:.0f} %", classes,
            ])  # fmt: skip
    header = ["kind", "objective", "steps", "1-NNA (floor)", "COV (floor)", "MMD (floor)",
              "NN-train / ref NN-train", "one component", "empty", "classes (confident)"]  # fmt: skip
    print(harness.markdown_table(header, rows, "l" * len(header)))


if __name__ == "__main__":
    main()
