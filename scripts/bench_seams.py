"""Seams: how visible are the tile boundaries of a stitched volume, per stitching mode?

A model trained for a few minutes on the bundled MNI template with the bundled prior's recipe
(``volscore.recipes.prior_config``: 3 mm, patch 32, whole template, Fourier coordinate features, lr 1e-3,
50 warm-up steps; ``--run`` reuses one, e.g. ``--run pretrained:mni152-prior``) samples the training
volume's shape with shift, blend and fixed
stitching (same seed, annealed Langevin, 40 levels x 2 steps); ``seam_score(volume, patch, offset=0)``
measures the fixed grid's boundaries (about 1 without seams on a stationary volume; a brain's central
planes score higher, so the model run on the whole volume at once, with no tiles, is the seam-free
reference, sampled with the same seed). Also one Tweedie/denoiser pass D(x, sigma) = x + sigma^2 s(x, sigma)
on a noisy copy of the template: a deterministic case where tile-border artefacts are easy to see.
Montages go to ``--results-dir``.

    python scripts/bench_seams.py --threads 1 --json bench_seams.json

``--quick`` runs a smoke version (tests/test_bench_seams.py). Part (c) of ``bench_volumes3d.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

from volscore.sampling.settings import STITCH_MODES as MODES  # noqa: E402

SEAM_TOLERANCE = 0.05  # shift and blend within 5 % of 1
WHOLE = "none"  # the seam-free reference: the model on the whole volume at once


def _seam(volume: Any, patch: int, offset: Sequence[int] | int = 0) -> float:
    from volscore.metrics import seam_score

    try:
        return seam_score(volume, patch, offset)
    except ValueError:  # no tile boundary at this offset (short axes merge into one tile)
        return float("nan")


def seam_config(args: argparse.Namespace, run_dir: Path):
    """The bundled prior's recipe (``prior_config``) at this benchmark's spacing, patch and budget."""
    from volscore.recipes import prior_config

    if args.seam_train_steps:
        budget = {"steps": args.seam_train_steps, "minutes": None}
    else:
        budget = {"steps": None, "minutes": args.seam_minutes}
    cfg = prior_config(
        str(run_dir), spacing=args.seam_spacing, patch_size=args.seam_patch, seed=args.seed, **budget
    )
    cfg.validate()
    return cfg


def train_seam_model(args: argparse.Namespace, run_dir: Path, log: harness.Log) -> None:
    from volscore.recipes import train_or_resume

    t0 = time.perf_counter()
    train_or_resume(seam_config(args, run_dir), say=lambda text: log(f"  (c) {text}"))
    log(f"  (c) trained in {time.perf_counter() - t0:.0f} s into {run_dir}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=str, default=None, help="a run directory to reuse (or to train into)")
    p.add_argument("--seam-minutes", type=float, default=4.0, help="training budget when no --run")
    p.add_argument("--seam-train-steps", type=int, default=None, help="train this many steps instead")
    p.add_argument("--seam-spacing", type=float, default=3.0, help="template spacing (mm) when training")
    p.add_argument("--seam-patch", type=int, default=32, help="patch size when training")
    p.add_argument("--seam-levels", type=int, default=40, help="noise levels of the sampling schedule")
    p.add_argument("--seam-steps-each", type=int, default=2, help="Langevin steps per level")
    p.add_argument("--tweedie-sigmas", type=float, nargs="+", default=[0.1, 0.3], help="denoiser pass")
    p.add_argument("--tile-batch", type=int, default=8, help="tiles per model call")
    p.add_argument(
        "--results-dir", type=Path, default=harness.SCRIPTS / "results", help="where the montages go"
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="instead: shift against the whole volume at once over these seeds, the run's default sampler",
    )
    p.add_argument(
        "--shape", type=int, nargs=3, default=None, help="--seeds: volume shape (default: the run's)"
    )


def apply_quick(args: argparse.Namespace) -> None:
    args.seam_train_steps, args.seam_spacing, args.seam_patch = 2, 6.0, 16
    args.seam_levels, args.seam_steps_each, args.tweedie_sigmas = 2, 1, [0.3]


def check(args: argparse.Namespace, error: Callable[[str], None]) -> None:
    if args.seam_levels < 2 or args.seam_steps_each < 1:
        error("--seam-levels must be >= 2, --seam-steps-each >= 1")
    if args.seeds is not None and args.run is None:
        error("--seeds needs --run (a trained 3D patch run, e.g. pretrained:mni152-prior)")


def seed_average(args: argparse.Namespace, log: harness.Log) -> dict[str, Any]:
    """The seam score of shift-stitched samples relative to the whole-volume sample of the same seed, over
    ``args.seeds``, with the run's default sampler (one sample per seed and way; ``--run`` required)."""
    import statistics

    import torch

    from volscore.data.patches import coordinate_grid
    from volscore.generate import run_sigmas, sample_run_tensor
    from volscore.run import Run
    from volscore.sampling.langevin import randn_like
    from volscore.sampling.settings import SamplerSettings
    from volscore.sampling.table import run_sampler

    run = Run.load(args.run)
    settings = SamplerSettings().for_kind(run.kind)
    sigmas = run_sigmas(run, settings)
    shape, patch = list(args.shape or run.sample_shape), run.patch_size
    grid = coordinate_grid(shape)[None] if run.coords else None
    rows = []
    for seed in args.seeds:
        shift = sample_run_tensor(
            run, settings, 1, shape, seed=seed, tile_batch=args.tile_batch, progress=False
        )
        gen = torch.Generator().manual_seed(seed)  # what sample_volumes draws for volume 0, untiled
        x = float(sigmas[0]) * randn_like(torch.empty(1, run.channels, *shape), [gen])
        whole = run_sampler(settings, lambda x, s: run.model(x, s, grid), x, sigmas, generator=[gen])
        row = {"seed": seed, "shift": _seam(shift[0, 0], patch), "whole": _seam(whole[0, 0], patch)}
        row["ratio"] = row["shift"] / row["whole"]
        rows.append(row)
        log(
            f"  seed {seed}: shift {row['shift']:.3f}, whole volume {row['whole']:.3f}, "
            f"ratio {row['ratio']:.3f}"
        )
    ratios = [r["ratio"] for r in rows]
    sd = statistics.stdev(ratios) if len(ratios) > 1 else float("nan")
    return {
        "run": args.run, "sampler": settings.sampler, "levels": len(sigmas), "shape": shape, "rows": rows,
        "ratio_mean": statistics.fmean(ratios), "ratio_sd": sd, "ratio_se": sd / math.sqrt(len(ratios)),
    }  # fmt: skip


def report_seeds(out: dict[str, Any], log: harness.Log) -> None:
    rows = [[r["seed"], f"{r['shift']:.3f}", f"{r['whole']:.3f}", f"{r['ratio']:.3f}"] for r in out["rows"]]
    rows.append(["mean (sd, standard error)", "", "", f"{out['ratio_mean']:.3f} ({out['ratio_sd']:.3f}, "
                 f"{out['ratio_se']:.3f})"])  # fmt: skip
    log(
        f"Seams over seeds: {out['run']}, {out['sampler']} with {out['levels']} levels, "
        f"{tuple(out['shape'])}:"
    )
    log(
        harness.markdown_table(
            ["seed", "shift: seam score", "whole volume: seam score", "shift / whole"], rows
        )
    )


def measure(args: argparse.Namespace, tmp: Path, log: harness.Log) -> dict[str, Any]:
    import torch

    from volscore.data.patches import coordinate_grid
    from volscore.data.sources import open_source
    from volscore.generate import run_sigmas, sample_run_tensor
    from volscore.run import Run
    from volscore.sampling.langevin import randn_like
    from volscore.sampling.settings import SamplerSettings
    from volscore.sampling.stitch import StitchedScore
    from volscore.sampling.table import run_sampler

    run_dir = Path(args.run) if args.run else tmp / "seam_run"
    trained_here = not (run_dir / "checkpoint.pt").exists()
    if trained_here:
        train_seam_model(args, run_dir, log)
    run = Run.load(run_dir)
    model, patch, shape = run.model, run.patch_size, run.sample_shape
    settings = SamplerSettings(sampler="annealed", steps=args.seam_levels, n_steps_each=args.seam_steps_each)
    sigmas = run_sigmas(run, settings)
    out: dict[str, Any] = {
        "run": str(run_dir) if args.run else None,
        "trained_here": trained_here,
        "train_steps": run.step,
        "shape": shape,
        "patch": patch,
        "levels": args.seam_levels,
        "steps_each": args.seam_steps_each,
        "samples": {},
        "tweedie": {},
    }
    # The seam-free reference: the fully convolutional model on the whole volume at once (no tiles; its
    # GroupNorm statistics are the volume's, not a patch's). A brain is not stationary: its central planes,
    # where the grid cuts a small volume, differ more than the average voxel, so seam scores sit above 1.
    grid = coordinate_grid(shape)[None] if run.coords else None  # (1, 3, D, H, W)

    def whole(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(x, sigma, grid)

    samples = {}
    for mode in (*MODES, WHOLE):
        t0 = time.perf_counter()
        if mode == WHOLE:  # what sample_volume does, with the whole-volume score
            gen = torch.Generator().manual_seed(args.seed)
            x = float(sigmas[0]) * randn_like(torch.empty(1, run.channels, *shape), gen)
            x = run_sampler(settings, whole, x, sigmas, generator=gen)[0, 0]
        else:
            x = sample_run_tensor(
                run,
                settings,
                1,
                shape,
                seed=args.seed,
                stitch=mode,
                tile_batch=args.tile_batch,
                progress=False,
            )[0, 0]  # (D, H, W)
        samples[mode] = x
        r = out["samples"][mode] = {"seam": _seam(x, patch), "seconds": time.perf_counter() - t0}
        log(f"  (c) sample {mode}: seam {r['seam']:.3f}, {r['seconds']:.0f} s")

    # The deterministic case: one denoiser pass D(x, sigma) = x + sigma^2 s(x, sigma) on a noisy template.
    cfg = run.config
    source = open_source(cfg.data, patch_size=patch, coords=run.coords, spacing=cfg.spacing, full_volume=True)
    clean = source.sampler.volumes[0].float()  # (D, H, W), scaled as in training (cached as float16)
    out["reference"] = {"template": _seam(clean, patch)}
    g = torch.Generator().manual_seed(args.seed + 7)
    denoised, noisies = {}, {}
    for sigma in args.tweedie_sigmas:
        noisy = clean + sigma * torch.randn(clean.shape, generator=g)
        noisies[sigma] = noisy
        row: dict[str, Any] = {"noisy": _seam(noisy, patch)}
        for mode in (*MODES, WHOLE):
            score = whole
            if mode != WHOLE:
                score = StitchedScore(
                    model,
                    patch,
                    stitch=mode,
                    tile_batch=args.tile_batch,
                    coords=run.coords,
                    generator=torch.Generator().manual_seed(args.seed + 1),
                )
            with torch.no_grad():
                d = noisy + sigma**2 * score(noisy[None, None], sigma)[0, 0]
            err = float((d - clean).square().mean())
            row[mode] = {"seam": _seam(d, patch), "psnr": -10 * math.log10(max(err, 1e-12))}
            if mode == "shift":  # the same pass seen at the grid it actually used
                row[mode]["offset"] = list(score.offset)
                row[mode]["seam_own_grid"] = _seam(d, patch, score.offset)
            denoised[(sigma, mode)] = d
        out["tweedie"][str(sigma)] = row
        log(
            f"  (c) Tweedie sigma {sigma}: " + ", ".join(f"{m} {row[m]['seam']:.3f}" for m in (*MODES, WHOLE))
        )
    out |= _montages(args, out, samples, clean, noisies, denoised)
    return out


def _montages(
    args: argparse.Namespace, out: dict[str, Any], samples, clean, noisies, denoised
) -> dict[str, str]:
    from volscore.plots import save_montage

    axes = ("sagittal", "coronal", "axial")  # the template is stored (x, y, z), RAS
    args.results_dir.mkdir(parents=True, exist_ok=True)
    modes = (*MODES, WHOLE)
    sigma = max(args.tweedie_sigmas)
    row = out["tweedie"][str(sigma)]
    return {
        "montage": str(
            save_montage(
                [samples[m].clamp(0, 1) for m in modes],
                args.results_dir / "stitch_modes.png",
                titles=[f"{m} (seam {out['samples'][m]['seam']:.2f})" for m in modes],
                axis_names=axes,
                vmin=0.0,
                vmax=1.0,
            )
        ),
        "montage_tweedie": str(
            save_montage(
                [clean, noisies[sigma].clamp(0, 1)] + [denoised[(sigma, m)].clamp(0, 1) for m in modes],
                args.results_dir / "stitch_modes_tweedie.png",
                titles=["template", f"noisy, sigma {sigma}"]
                + [f"D {m} (seam {row[m]['seam']:.2f})" for m in modes],
                axis_names=axes,
                vmin=0.0,
                vmax=1.0,
            )
        ),
    }


def tables(seams: dict[str, Any]) -> str:
    samples, ref = seams["samples"], seams["samples"][WHOLE]["seam"]
    rows = []
    for mode, r in samples.items():
        name = "none: whole volume at once (reference)" if mode == WHOLE else mode
        ok, rel = "-", ""
        if mode in ("shift", "blend"):
            ok = harness.mark(abs(r["seam"] - 1) <= SEAM_TOLERANCE)
            rel = " " + harness.mark(abs(r["seam"] / ref - 1) <= SEAM_TOLERANCE)
        rows.append([name, f"{r['seam']:.3f}", ok, f"{r['seam'] / ref:.3f}{rel}", f"{r['seconds']:.0f}"])
    rows.append(["(the template itself)", f"{seams['reference']['template']:.3f}", "", "", ""])
    header = ["stitching", "seam score of the sample (fixed grid)", "within 5 % of 1",
              "/ no-tiling reference (5 %)", "sampling time (s)"]  # fmt: skip
    first = harness.markdown_table(header, rows, align="lrcrr")

    sigmas = list(seams["tweedie"])
    cells: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("noisy input", lambda t: f"{t['noisy']:.3f}")
    ]
    cells += [(m, lambda t, m=m: f"{t[m]['seam']:.3f} ({t[m]['psnr']:.1f} dB)") for m in MODES]
    cells.append(
        ("none: whole volume at once", lambda t: f"{t[WHOLE]['seam']:.3f} ({t[WHOLE]['psnr']:.1f} dB)")
    )
    cells.append(("shift, at the grid it used", lambda t: f"{t['shift']['seam_own_grid']:.3f}"))
    second = harness.markdown_table(
        ["one denoiser pass D(x, sigma) on the noisy template"] + [f"sigma {s}: seam (PSNR)" for s in sigmas],
        [[name] + [cell(seams["tweedie"][s]) for s in sigmas] for name, cell in cells],
    )
    return first + "\n\n" + second


def report(seams: dict[str, Any], args: argparse.Namespace, log: harness.Log) -> None:
    c = seams
    origin = f"run {c['run']}" if c["run"] and not c["trained_here"] else "trained here (demo settings)"
    log(
        f"(c) Seams: model {origin} ({c['train_steps']} steps), volume {tuple(c['shape'])}, patch "
        f"{c['patch']}, {c['levels']} levels x {c['steps_each']} steps, same seed; seam score at the "
        f"fixed grid (offset 0): 1 without seams on a stationary volume, see the no-tiling reference; "
        f"montages {c['montage']}, {c['montage_tweedie']}:\n"
    )
    log(tables(c) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return harness.parse_quick_args(__doc__, argv, add_arguments, apply_quick, check)


def main(argv: Sequence[str] | None = None, log: harness.Log = print) -> dict[str, Any]:
    args = parse_args(argv)
    if args.seeds is not None:
        return harness.run_bench(
            "bench_seams", args, lambda _: {"seeds": seed_average(args, log)},
            lambda out: report_seeds(out["seeds"], log), log,
        )  # fmt: skip
    return harness.run_bench(
        "bench_seams",
        args,
        lambda tmp: {"seams": measure(args, tmp, log)},
        lambda out: report(out["seams"], args, log),
        log,
    )


if __name__ == "__main__":
    main()
