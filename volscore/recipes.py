"""Recipes: the library's end-to-end jobs, built from ``TrainConfig`` and the sampler table directly.

``demo`` is the main job (sample a whole brain from the bundled 3D prior, denoise a hold-out block with the
bundled T1 denoiser, optionally after training the prior further);
``baseline`` is the lecture's 2D example (train on MNIST, sample, evaluate), resuming its run when called
again, so each call trains further.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volscore.config import TrainConfig
from volscore.options import BaselineOptions, DemoOptions, SampleOptions
from volscore.outputs import check_outputs
from volscore.sampling.settings import SamplerSettings

if TYPE_CHECKING:
    from volscore.run import Run


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


def prior_config(
    out: str,
    spacing: float = 3.0,
    patch_size: int = 32,
    preset: str = "small",
    steps: int | None = 3000,
    minutes: float | None = None,
    seed: int = 0,
) -> TrainConfig:
    """The 3D prior recipe of the bundled ``mni152-prior``: the whole template at ``spacing`` in patches with
    coordinates and their Fourier features (without them the model cannot tell where it is at large sigma and
    samples are bright blobs: README, "3D prior recipe"), EDM's log-normal sigmas and weighting, lr 1e-3
    with a short warm-up (a CPU run makes a few thousand steps)."""
    return TrainConfig(
        data=["mni152"], out=out, full_volume=True, spacing=spacing, preset=preset, patch_size=patch_size,
        coord_frequencies=5, sigma_dist="lognormal", weighting="edm", lr=1e-3, warmup=50, steps=steps,
        minutes=minutes, seed=seed,
    )  # fmt: skip


def denoiser_config(
    out: str, steps: int | None = 3000, minutes: float | None = None, seed: int = 0
) -> TrainConfig:
    """The T1 denoiser recipe of the bundled ``t1-denoiser``: the template's y < 120 part only (the hold-out
    stays unseen) at 1 mm and resampled to 2 and 3 mm (scans come at many voxel sizes and are denoised on
    their own grid, where their noise is white), no coordinates (another scan's field of view puts anatomy
    elsewhere), augmented (flips, rotations and scalings, gamma, smooth bias fields), and EDM's log-normal
    training sigmas centred on the noise levels of scans (e^-2.5 = 0.08 of the intensity range)."""
    return TrainConfig(
        data=["mni152"], out=out, full_volume=False, multires=[2.0, 3.0], coords=False,
        augment=["flip", "affine", "gamma", "bias"], preset="small", patch_size=32, sigma_dist="lognormal",
        p_mean=-2.5, p_std=1.0, sigma_min=0.005, sigma_max=1.0, weighting="edm", lr=1e-3, warmup=100,
        steps=steps, minutes=minutes, seed=seed,
    )  # fmt: skip


def demo_files(out: Path) -> dict[str, Path]:
    """What ``demo`` writes, by role, so that all of it is checked before any work."""
    return {
        "brain": out / "brain.nii.gz",
        "brain_png": out / "brain.png",
        "clean": out / "holdout_clean.nii.gz",
        "noisy": out / "holdout_noisy.nii.gz",
        "denoised": out / "holdout_denoised.nii.gz",
        "denoise_png": out / "holdout_before_after.png",
        "record": out / "demo.json",
    }


def fine_tune_config(prior: Run, out: Path, minutes: float, seed: int) -> TrainConfig:
    """The prior's own training configuration, continued from its weights for ``minutes`` in ``out``."""
    cfg = prior.config
    return dataclasses.replace(
        cfg, out=str(out), minutes=minutes, steps=None, init=prior.name, seed=seed, warmup=0, device="auto",
        lr_schedule="constant",
    )  # fmt: skip


def demo(
    options: DemoOptions, settings: SamplerSettings, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """The main job: one brain sampled from the 3D prior (stitched over the whole volume; NIfTI + montage),
    and a noisy copy of the template's hold-out block denoised by the T1 denoiser (before/after PNG, PSNR).
    With ``options.minutes`` the prior is first trained further (fine-tuned) into ``out/prior``."""
    import nibabel as nib

    from volscore.atomic import atomic_write_json
    from volscore.corrupt import add_noise, reference_level
    from volscore.data.nifti import load_volume, resolve_paths, save_volume
    from volscore.data.patches import MNI152_HOLDOUT_CROP
    from volscore.denoise.command import before_after_png
    from volscore.denoise.files import denoise_file
    from volscore.generate import sample_run
    from volscore.metrics.volumes import psnr, volume_sample_quality
    from volscore.options import DenoiseOptions
    from volscore.run import Run

    options.validate()
    settings.validate()
    out = Path(options.out)
    files = demo_files(out)
    check_outputs(files.values(), force=options.force)  # before minutes of work
    prior = Run.load(options.prior)
    denoiser = Run.load(options.denoiser)  # both loaded (and hash-checked) before any work
    if options.minutes > 0:
        tuned = out / "prior"
        say(f"training {prior.name} further for {options.minutes:g} minutes in {tuned}")
        train_or_resume(fine_tune_config(prior, tuned, options.minutes, options.seed), say)
        prior = Run.load(tuned)
    out.mkdir(parents=True, exist_ok=True)

    say(
        f"sampling a brain from {prior.name} ({prior.step} training steps), stitched from "
        f"{prior.patch_size}^3 patches"
    )
    sample = SampleOptions(out=str(files["brain"]), seed=options.seed, force=True)
    record = sample_run(prior, sample, settings)
    brain = load_volume(files["brain"]).data
    scaler = prior.scaler()
    quality = volume_sample_quality(scaler.forward(brain), prior.training_volume())
    say(f"brain: {record['shape']} voxels at {prior.zooms[0]:g} mm in {record['seconds']:.0f} s "
        f"({record['nfe']} network evaluations); against the template: SSIM {quality['ssim']:.2f}, "
        f"noise {quality['noise_ratio']:.2f}x the template's")  # fmt: skip

    template = load_volume(resolve_paths("mni152")[0])
    clean = template.data[MNI152_HOLDOUT_CROP]
    level = reference_level(template.data)  # as scripts/bench_denoise.py and the denoiser's card
    noisy = add_noise(clean, options.noise * level, "gaussian", seed=options.seed)
    crop_affine = nib.load(template.path).slicer[MNI152_HOLDOUT_CROP].affine  # nibabel shifts the origin
    reference = dataclasses.replace(template, data=clean, affine=crop_affine)
    save_volume(files["clean"], clean, reference)
    save_volume(files["noisy"], noisy, reference)
    den = DenoiseOptions(run=denoiser.name, sigma=str(options.noise * level), seed=options.seed)
    den_record = denoise_file(files["noisy"], files["denoised"], den, run=denoiser, force=True)
    denoised = load_volume(files["denoised"]).data
    before, after = psnr(noisy, clean, level), psnr(denoised, clean, level)
    before_after_png(files["noisy"], files["denoised"], files["denoise_png"])
    say(f"denoised the template's hold-out (never trained on) with {denoiser.name}: PSNR {before:.2f} dB -> "
        f"{after:.2f} dB in {den_record['timings']['denoise']:.1f} s")  # fmt: skip
    result = {
        "prior": prior.name, "denoiser": denoiser.name, "sample": record, "sample_quality": quality,
        "denoise": {"psnr_noisy": before, "psnr_denoised": after, "sigma": options.noise * level,
                    "seconds": den_record["timings"]["denoise"]},
        "files": {k: str(v) for k, v in files.items()},
    }  # fmt: skip
    atomic_write_json(files["record"], result)
    say("files:\n" + "\n".join(f"  {k:<12} {v}" for k, v in result["files"].items()))
    return result


def baseline_config(options: BaselineOptions) -> TrainConfig:
    from volscore.options import BASELINE_RECIPES

    recipe = dict(BASELINE_RECIPES[options.recipe])
    if options.lr is not None:
        recipe["lr"] = options.lr
    return TrainConfig(
        data=["mnist"], out=options.out, objective=options.objective, preset=options.preset,
        minutes=options.minutes, seed=options.seed, **recipe,
    )  # fmt: skip


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
