"""Reproduce a bundled model: train it with volscore's own training loop, export, measure, write its card.

    .venv/bin/python scripts/train_pretrained.py mni152-prior      # the demo's 3D prior
    .venv/bin/python scripts/train_pretrained.py mnist             # the 2D baseline's model
    .venv/bin/python scripts/train_pretrained.py t1-denoiser       # the default of `volscore denoise`

Each recipe is a ``TrainConfig`` (printed as the equivalent ``volscore train`` command on the card) trained
for a fixed number of steps, so the result does not depend on how busy the machine is, only the minutes do.
The run goes to ``--runs/NAME``; the export keeps the EMA weights in float16 with the arguments that rebuild
the model (``--into``, default the package's ``volscore/pretrained``), and the card records the command,
steps, minutes, machine, date, data, sha256 and the figures measured on data the model never saw.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from volscore.config import TrainConfig
from volscore.recipes import denoiser_config, prior_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: bench_denoise, bench_samplers

# Fixed-step recipes (chosen by the measurements in the README: bench_samplers / bench_recipes).
RECIPES: dict[str, dict[str, Any]] = {
    "mnist": dict(
        summary="2D MNIST score model (DSM, EDM recipe) for the lecture's baseline",
        config=lambda out: TrainConfig(
            data=["mnist"],
            out=out,
            preset="small",
            sigma_dist="lognormal",
            weighting="edm",
            lr=1e-3,
            steps=6000,
        ),  # fmt: skip
        data="the bundled 5,000-digit MNIST subset, training split (400 per class)",
    ),
    "mni152-prior": dict(
        summary="3D prior of the MNI152 2009a template at 3 mm, patches 32^3 with coordinates (for sampling)",
        config=lambda out: prior_config(out, steps=3000),
        data="the bundled MNI152 2009a symmetric T1 template resampled to 3 mm (whole volume)",
    ),
    "t1-denoiser": dict(
        summary="3D T1 denoiser (Tweedie): the template's y < 120 part at 1, 2 and 3 mm, no coordinates, "
        "augmented (flips, rotations and scalings, gamma, bias field), small noise levels",
        config=lambda out: denoiser_config(out, steps=3000),
        data="the bundled MNI152 2009a symmetric T1 template, y < 120 only (the hold-out y >= 120 never "
        "seen), at 1 mm and resampled to 2 and 3 mm",
    ),
}


def command_line(cfg: TrainConfig) -> str:
    """The ``volscore train`` command equivalent to ``cfg`` (fields that differ from the defaults)."""
    parts = ["volscore train", f"--out {cfg.out}"]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if "help" not in f.metadata or value == default or f.name == "out":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        elif isinstance(value, list):
            parts.append(f"{flag} {' '.join(map(str, value))}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _run(weights: Path, name: str):
    """The exported model as a user loads it: ``pretrained:NAME`` from the folder being written (``main``
    points $VOLSCORE_PRETRAINED there and writes the card first), so the hash check runs too."""
    from volscore.run import Run

    assert weights.stem == name, (weights, name)
    return Run.load(f"pretrained:{name}")


def sampler_label(run: Any, settings: Any) -> str:
    """The card's words for the sampler its figures were measured with, e.g. "dpm, 35 levels to sigma 0.06,
    35 evaluations"."""
    from volscore.generate import run_sigmas

    sigmas = run_sigmas(run, settings)
    levels = len(sigmas)
    return (f"{settings.sampler}, {levels} levels to sigma {float(sigmas[-1]):g}, "
            f"{settings.network_evaluations(levels)} evaluations")  # fmt: skip


def measure_mnist(weights: Path, n: int = 500) -> dict[str, Any]:
    """500 samples with the default sampler, scored against the MNIST test split (never trained on)."""
    from volscore.data.mnist import load_mnist
    from volscore.generate import sample_run_tensor
    from volscore.metrics.classifier import load_or_train_classifier
    from volscore.metrics.mnist import cache_dir, evaluate_mnist_samples
    from volscore.sampling.settings import SamplerSettings

    run = _run(weights, "mnist")
    settings = SamplerSettings().for_kind(run.kind)  # the default: the measured best for MNIST
    x = sample_run_tensor(run, settings, n=n, seed=0, progress=False)
    train_x, train_y = load_mnist("train")
    test_x, _ = load_mnist("test")
    clf = load_or_train_classifier(cache_dir() / "mnist_classifier.pt", train_x, train_y)
    m = evaluate_mnist_samples(x, clf, train_x, test_x)
    return {
        "sampler": sampler_label(run, settings),
        "confident_fraction": round(m["confident_fraction"], 4),
        "class_range": [round(min(m["class_histogram"]), 4), round(max(m["class_histogram"]), 4)],
        "frechet_distance_test": round(m["fd"], 3),
        "frechet_distance_floor": round(m["fd_floor"], 3),
    }


def measure_prior(weights: Path) -> dict[str, Any]:
    """One sample at the template's shape with the default sampler, against the (resampled) template."""
    from volscore.generate import sample_run_tensor
    from volscore.metrics.volumes import volume_sample_quality
    from volscore.sampling.settings import SamplerSettings

    run = _run(weights, "mni152-prior")
    settings = SamplerSettings().for_kind(run.kind)  # the default: the measured best for volumes
    t0 = time.monotonic()
    x = sample_run_tensor(run, settings, n=1, seed=0, progress=False)[0, 0]
    seconds = time.monotonic() - t0
    q = volume_sample_quality(x.numpy(), run.training_volume())
    return {
        "sampler": sampler_label(run, settings),
        "sample_shape": list(x.shape),
        "ssim_vs_template": round(q["ssim"], 4),
        "noise_ratio_vs_template": round(q["noise_ratio"], 3),
        "histogram_distance": round(q["histogram_distance"], 4),
        "sample_seconds": round(seconds, 1),
    }


def measure_denoiser(weights: Path) -> dict[str, Any]:
    """PSNR before and after on the template's hold-out and on other subjects' scans (bench_denoise's cases:
    Gaussian noise of 0.05 and 0.10 of each scan's 99.5th percentile), through ``volscore denoise``'s path."""
    from bench_denoise import denoiser_figures

    return denoiser_figures(f"pretrained:{weights.stem}")


MEASURES = {"mnist": measure_mnist, "mni152-prior": measure_prior, "t1-denoiser": measure_denoiser}


def metrics_minutes(run_dir: Path) -> float | None:
    """Training minutes from the run's metrics.csv (seconds per step x steps per logged row)."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.open()))
    total, last = 0.0, 0
    for row in rows:
        step = int(row["step"])
        total += float(row["sec_per_step"]) * (step - last)
        last = step
    return round(total / 60, 1)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from volscore.machine import available_cores

    return f"{cpu}, {available_cores()} cores, torch {torch.__version__}, {platform.system()}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--runs", default="runs/pretrained", help="where the training run goes")
    p.add_argument("--into", default=str(REPO / "volscore" / "pretrained"), help="where weights and card go")
    p.add_argument("--skip-train", action="store_true", help="export and measure an existing run")
    p.add_argument("--threads", type=int, help="torch threads (default: volscore.machine.default_threads)")
    args = p.parse_args(argv)
    from volscore.machine import set_threads
    from volscore.pretrained import export_weights, sha256
    from volscore.recipes import train_or_resume

    threads = set_threads(args.threads)
    recipe = RECIPES[args.name]
    run_dir = Path(args.runs) / args.name
    cfg = recipe["config"](str(run_dir))
    t0 = time.monotonic()
    if not args.skip_train:
        train_or_resume(cfg)
    minutes = (time.monotonic() - t0) / 60
    into = Path(args.into)
    weights = into / f"{args.name}.pt"
    size = export_weights(run_dir, weights)
    card = {
        "name": args.name,
        "summary": recipe["summary"],
        "command": command_line(cfg),
        "reproduce": f"python scripts/train_pretrained.py {args.name}",
        "steps": cfg.steps,
        "minutes": metrics_minutes(run_dir),  # the whole run's training time, over every resume
        "minutes_this_call": None if args.skip_train else round(minutes, 1),
        "load_average_at_export": [round(v, 2) for v in os.getloadavg()],  # > threads: the machine was shared
        "threads": threads,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "data": recipe["data"],
        "weights": weights.name,
        "size_bytes": size,
        "sha256": sha256(weights),
    }
    # Written first without figures, so the figures are measured through the registry (pretrained:NAME,
    # hash-checked) exactly as a user loads the model.
    (into / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    os.environ["VOLSCORE_PRETRAINED"] = str(into)
    card["figures"] = MEASURES[args.name](weights)
    (into / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    return card


if __name__ == "__main__":
    main()
