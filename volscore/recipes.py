"""Recipes: the library's end-to-end jobs, built from ``TrainConfig`` and the sampler table directly.

``demo`` is the main job (train on the bundled MNI template, sample a whole brain larger than a patch);
``baseline`` is the lecture's 2D example (train on MNIST, sample, evaluate). Both resume their run when
called again, so each call trains further.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from volscore.config import TrainConfig
from volscore.options import BaselineOptions, DemoOptions, SampleOptions
from volscore.outputs import check_outputs
from volscore.sampling.settings import SamplerSettings


def _check_outputs_first(out: str, names: tuple[str, ...]) -> None:
    """The files a recipe writes into its run folder after training, checked before it trains: they are the
    run's own and replaced on every call, but anything that would refuse them (a folder in their place) is
    refused at once rather than after the training."""
    check_outputs([Path(out) / name for name in names], force=True)


def train_or_resume(cfg: TrainConfig, say: Callable[[str], None] = print) -> Path:
    """Train ``cfg``, resuming the run in ``cfg.out`` if one is there; return the run folder."""
    from volscore.train import Trainer

    resume = (Path(cfg.out) / "checkpoint.pt").exists()
    with Trainer(cfg, resume=resume, asked=set(cfg.to_dict())) as trainer:
        c = trainer.cfg
        say(
            f"training {c.objective} on {' '.join(c.data)}: sigma {c.sigma_max} -> {c.sigma_min}, "
            f"from step {trainer.step}"
        )
        trainer.run()
    return Path(cfg.out)


def demo_config(options: DemoOptions) -> TrainConfig:
    """The demo's training run: the whole template at ``options.spacing``, patches with coordinates."""
    return TrainConfig(
        data=["mni152"],
        out=options.out,
        full_volume=True,
        spacing=options.spacing,
        preset=options.preset,
        patch_size=options.patch_size,
        minutes=options.minutes,
        lr=1e-3,
        warmup=50,  # a 5-minute CPU run makes a few hundred steps: 200 warm-up steps would be half of it
        ckpt_every=200,
        seed=options.seed,
    )


def demo(
    options: DemoOptions, settings: SamplerSettings, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train (or train further) on the template, then sample one whole brain: NIfTI + montage PNG."""
    from volscore.generate import describe_record, sample_run
    from volscore.run import Run

    options.validate()
    settings.validate()
    _check_outputs_first(options.out, ("sample.nii.gz", "sample.png"))
    out = train_or_resume(demo_config(options), say)
    sample = SampleOptions(out=str(out / "sample.nii.gz"), seed=options.seed, force=True)
    record = sample_run(Run.load(out), sample, settings)
    say(describe_record(record))
    files = record["files"]
    say(f"pictures: {files['png']}, {out / 'loss.png'}; volume: {files['nii']}; run: {out}")
    return record


def baseline_config(options: BaselineOptions) -> TrainConfig:
    return TrainConfig(
        data=["mnist"],
        out=options.out,
        objective=options.objective,
        preset=options.preset,
        minutes=options.minutes,
        lr=options.lr,
        seed=options.seed,
    )


def baseline(
    options: BaselineOptions, settings: SamplerSettings, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train on MNIST, draw ``options.n`` samples, evaluate them (confidence, classes, Frechet distance)."""
    from volscore.generate import describe_record, sample_run
    from volscore.metrics.mnist import evaluate_mnist_file, format_mnist_metrics
    from volscore.run import Run

    options.validate()
    settings.validate()
    _check_outputs_first(options.out, ("samples.png", "samples.npy", "metrics.json"))
    out = train_or_resume(baseline_config(options), say)
    sample = SampleOptions(out=str(out / "samples.png"), n=options.n, seed=options.seed, force=True)
    record = sample_run(Run.load(out), sample, settings)
    say(describe_record(record))
    metrics = evaluate_mnist_file(record["files"]["npy"], out / "metrics.json")
    say(format_mnist_metrics(metrics))
    say(f"pictures: {record['files']['png']}, {out / 'loss.png'}; numbers: {out / 'metrics.json'}, "
        f"{out / 'metrics.csv'}")  # fmt: skip
    return {**record, "metrics": metrics, "options": dataclasses.asdict(options)}
