"""Sample quality against network evaluations (NFE) for every sampler, on models trained once and reused.

    .venv/bin/python scripts/bench_samplers.py --mnist-run runs/bench_samplers/mnist --out runs/bench_samplers

For each model and sampler, samples are drawn at about 10, 18, 35, 80 and 280 network evaluations per sample
(the sampler's levels chosen to land there: Heun and EDM cost 2 L - 1, DPM-Solver++(2M) L, annealed Langevin
L x n_steps_each + 1, predictor-corrector L x 2) and scored:
- MNIST (``--mnist-run``): confident fraction, class range and Frechet distance against the *test* split
  (reported) and against the training split (``fd_train``: the only figure to choose settings by);
- a whole-shape model (``--shapes-run``, trained on ``shapes:KIND``; ``--shapes-n`` shapes per setting):
  1-NNA, coverage and MMD against as many held-out reference shapes, single components and empty samples
  (``volscore.metrics.evaluate_shapes``, as ``bench_shapes.py`` scores them);
- a 3D template model sampled with stitching (``--volume-run``, e.g. ``runs/pretrained/mni152-prior``; one
  whole volume per seed of ``--volume-seeds``): SSIM, noise ratio and histogram distance against the training
  volume (``volscore.metrics.volumes.volume_sample_quality``).
``--amp bf16`` runs the shapes' network under bf16 autocast (the sampler's arithmetic stays float32). Writes
``bench_samplers.json``, PNG curves of each metric against NFE and a sheet per MNIST or shapes setting.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import torch

# levels per sampler for each NFE target (about 10, 18, 35, 80, 280 evaluations per sample)
LEVELS = {
    "heun": [5, 10, 18, 40, 140],
    "edm": [5, 10, 18, 40, 140],
    "dpm": [10, 18, 35, 80, 280],
    "annealed": [3, 6, 12, 27, 94],  # x 3 Langevin steps + 1
    "pc": [5, 9, 18, 40, 140],  # x (1 corrector + 1 predictor)
}
ANNEALED = {"n_steps_each": 3, "step_lr_scale": 3.0}  # the 2D baseline's tuned settings
PC = {"n_steps_each": 1}


def settings_for(sampler: str, levels: int, **extra: Any):
    from volscore.sampling.settings import SamplerSettings

    kw: dict[str, Any] = {"sampler": sampler, "steps": levels}
    kw |= ANNEALED if sampler == "annealed" else PC if sampler == "pc" else {}
    return SamplerSettings(**(kw | extra))


def score_mnist(x: Any) -> dict[str, Any]:
    """MNIST samples (n, 1, 28, 28) in [0, 1] scored by ``evaluate_mnist_samples`` against the test split
    (the cached classifier), with the class range."""
    from volscore.data.mnist import load_mnist
    from volscore.metrics.classifier import load_or_train_classifier
    from volscore.metrics.mnist import cache_dir, evaluate_mnist_samples

    train_x, train_y = load_mnist("train")
    test_x, _ = load_mnist("test")
    clf = load_or_train_classifier(cache_dir() / "mnist_classifier.pt", train_x, train_y)
    m = evaluate_mnist_samples(x, clf, train_x, test_x)
    return {**m, "class_range": [min(m["class_histogram"]), max(m["class_histogram"])]}


def mnist_quality(run, settings, n: int, seed: int) -> dict[str, Any]:
    """Sample ``n`` MNIST digits with ``settings`` and score them (``score_mnist``)."""
    from volscore.generate import run_sigmas, sample_run_tensor

    t0 = time.perf_counter()
    x = sample_run_tensor(run, settings, n=n, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    levels = len(run_sigmas(run, settings))  # the run's own levels where the settings give none
    return {
        **score_mnist(x),
        "sampler": settings.sampler,
        "levels": levels,
        "nfe": settings.network_evaluations(levels),
        "seconds": seconds,
        "samples": x,
    }


@functools.lru_cache(maxsize=2)
def shape_sets(kind: str, size: int, seed: int, n: int) -> tuple[Any, Any]:
    """The training shapes and the first ``n`` held-out reference shapes of a kind, made once per benchmark
    (every sampler setting is scored against the same sets)."""
    from volscore.data.shapes import make_shapes

    train, _ = make_shapes(kind, size=size, seed=seed, split="train")
    reference, _ = make_shapes(kind, n=n, size=size, seed=seed, split="reference")
    return train, reference


def shapes_quality(run, settings, n: int, seed: int, amp: torch.dtype | None = None) -> dict[str, Any]:
    """``n`` whole shapes of a ``shapes:KIND`` run scored against the first ``n`` held-out reference shapes
    of its kind and size (1-NNA is centred on 50 % only for sets of equal size) and its training shapes."""
    from volscore.generate import run_sigmas, sample_run_tensor
    from volscore.metrics import evaluate_shapes

    if run.kind != "shapes":
        raise ValueError(f"--shapes-run {run.name}: not a run of whole shapes (kind {run.kind!r})")
    t0 = time.perf_counter()
    x = sample_run_tensor(run, settings, n=n, seed=seed, progress=False, amp=amp)
    seconds = time.perf_counter() - t0
    data = run.data
    train, reference = shape_sets(data["shape_kind"], int(data["size"]), int(data.get("seed", 0)), n)
    levels = len(run_sigmas(run, settings))
    return {
        **evaluate_shapes(x, reference, train, seed=seed),
        "sampler": settings.sampler, "levels": levels, "nfe": settings.network_evaluations(levels),
        "seconds": seconds, "samples": x,
    }  # fmt: skip


def volume_quality(run, settings, seed: int) -> dict[str, Any]:
    """One whole stitched volume at the run's shape, scored against its (resampled) training volume."""
    from volscore.generate import sample_run_tensor
    from volscore.metrics.volumes import volume_sample_quality

    t0 = time.perf_counter()
    x = sample_run_tensor(run, settings, n=1, seed=seed, progress=False)[0, 0]
    seconds = time.perf_counter() - t0
    q = volume_sample_quality(x.numpy(), run.training_volume())
    levels = settings.steps
    return {
        "sampler": settings.sampler, "levels": levels, "nfe": settings.network_evaluations(levels),
        "seed": seed, "seconds": seconds,
        **{k: q[k] for k in ("ssim", "noise_ratio", "histogram_distance")},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist-run", help="a trained MNIST run (volscore train --data mnist)")
    p.add_argument("--shapes-run", help="a trained whole-shape run (volscore train --data shapes:KIND)")
    p.add_argument("--shapes-n", type=int, default=100, help="shapes per setting (<= 200 reference shapes)")
    p.add_argument("--volume-run", help="a trained 3D patch run, e.g. runs/pretrained/mni152-prior")
    p.add_argument("--volume-seeds", nargs="+", type=int, default=[0], help="one volume per seed")
    p.add_argument("--samplers", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    p.add_argument("--nfe-index", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="which NFE targets")
    p.add_argument("--n", type=int, default=500, help="MNIST samples per setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sigma-min", type=float, help="every setting's last level (default: the run's)")
    p.add_argument("--amp", choices=("off", "bf16"), default="off", help="shapes: the network under autocast")
    p.add_argument("--out", default="runs/bench_samplers")
    p.add_argument(
        "--plot", nargs="+", metavar="JSON", help="only draw the curves of earlier results (.json/.jsonl)"
    )
    args = p.parse_args(argv)
    if args.plot:
        merged = load_results(args.plot)
        plot_curves(merged, Path(args.out))
        return merged
    torch.set_num_threads(args.threads)
    from volscore.amp import inference_dtype
    from volscore.plots import save_image_grid, save_shape_sheet
    from volscore.run import Run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"args": vars(args), "mnist": [], "shapes": [], "volume": []}
    extra = {} if args.sigma_min is None else {"sigma_min": args.sigma_min}
    if args.mnist_run:
        run = Run.load(args.mnist_run)
        for sampler in args.samplers:
            for i in args.nfe_index:
                r = mnist_quality(run, settings_for(sampler, LEVELS[sampler][i], **extra), args.n, args.seed)
                save_image_grid(r.pop("samples")[:64], out / f"mnist_{sampler}_{r['nfe']}nfe.png")
                result["mnist"].append(r)
                print(
                    f"mnist {sampler:>8} L={r['levels']:>3} NFE={r['nfe']:>3}: "
                    f"confident {100 * r['confident_fraction']:.1f} % "
                    f"FD {r['fd']:.2f} (floor {r['fd_floor']:.2f}) fd_train {r['fd_train']:.2f} "
                    f"classes {100 * r['class_range'][0]:.1f}-{100 * r['class_range'][1]:.1f} % "
                    f"{r['seconds']:.0f} s",
                    flush=True,
                )
    if args.shapes_run:
        run = Run.load(args.shapes_run)
        for sampler in args.samplers:
            for i in args.nfe_index:
                settings = settings_for(sampler, LEVELS[sampler][i], **extra)
                r = shapes_quality(run, settings, args.shapes_n, args.seed, inference_dtype(args.amp))
                save_shape_sheet(r.pop("samples")[:36], out / f"shapes_{sampler}_{r['nfe']}nfe.png", nrow=6)
                result["shapes"].append(r)
                print(
                    f"shapes {sampler:>8} L={r['levels']:>3} NFE={r['nfe']:>3}: 1-NNA "
                    f"{100 * r['one_nna']:.1f} % (floor {100 * r['floor_one_nna']:.1f} %) "
                    f"COV {r['coverage']:.2f} (floor {r['floor_coverage']:.2f}) "
                    f"one component {100 * r['connected_fraction']:.0f} % "
                    f"empty {100 * r['empty_fraction']:.0f} % {r['seconds']:.0f} s",
                    flush=True,
                )
    if args.volume_run:
        run = Run.load(args.volume_run)
        for sampler in args.samplers:
            for i in args.nfe_index:
                for seed in args.volume_seeds:
                    r = volume_quality(run, settings_for(sampler, LEVELS[sampler][i], **extra), seed)
                    result["volume"].append(r)
                    print(
                        f"volume {sampler:>8} L={r['levels']:>3} NFE={r['nfe']:>3} seed {seed}: SSIM "
                        f"{r['ssim']:.3f} noise {r['noise_ratio']:.2f}x "
                        f"histogram {r['histogram_distance']:.3f} {r['seconds']:.0f} s",
                        flush=True,
                    )
    (out / "bench_samplers.json").write_text(json.dumps(result, indent=2))
    plot_curves(result, out)
    return result


CURVES = {  # PNG name: (result part, metric, y label, scale)
    "mnist_confident.png": ("mnist", "confident_fraction", "confident >= 0.9 (%)", 100.0),
    "mnist_fd.png": ("mnist", "fd", "Frechet distance (test)", 1.0),
    "shapes_1nna.png": ("shapes", "one_nna", "1-NNA against held-out shapes (%)", 100.0),
    "shapes_connected.png": ("shapes", "connected_fraction", "single component (%)", 100.0),
    "volume_ssim.png": ("volume", "ssim", "SSIM against the template", 1.0),
    "volume_noise.png": ("volume", "noise_ratio", "noise / template's", 1.0),
}


def curves(rows: list[dict[str, Any]], metric: str, scale: float = 1.0) -> dict[str, tuple[list, list]]:
    """Per sampler, the metric (mean over seeds) against network evaluations, in increasing NFE."""
    points: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        points.setdefault(r["sampler"], {}).setdefault(r["nfe"], []).append(scale * r[metric])
    return {
        name: (sorted(by_nfe), [sum(by_nfe[k]) / len(by_nfe[k]) for k in sorted(by_nfe)])
        for name, by_nfe in points.items()
    }


def load_results(paths: list[str]) -> dict[str, Any]:
    """Earlier results merged: ``bench_samplers.json`` files (their mnist, shapes and volume rows) and
    JSON-lines files of volume rows, one per line."""
    merged: dict[str, Any] = {"mnist": [], "shapes": [], "volume": []}
    for path in map(Path, paths):
        if path.suffix == ".jsonl":
            merged["volume"] += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            data = json.loads(path.read_text())
            for part in merged:
                merged[part] += data.get(part, [])
    return merged


def plot_curves(result: dict[str, Any], out: Path) -> list[Path]:
    """Quality against network evaluations, one line per sampler (``CURVES``), for the parts measured."""
    from volscore.plots import save_curves

    written = []
    for name, (part, metric, label, scale) in CURVES.items():
        if result.get(part):
            series = curves(result[part], metric, scale)
            written.append(save_curves(series, out / name, "network evaluations", label, log_x=True))
    return written


if __name__ == "__main__":
    main()
