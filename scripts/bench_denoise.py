"""Denoising the bundled MNI template's hold-out: volscore (trained, refined, self-supervised) vs BM4D,
dipy's non-local means and a Gaussian filter, in one run on this CPU.

Reproduce the README's table (needs the bench extra: ``pip install -e .[bench]``):

    .venv/bin/python scripts/bench_denoise.py --train-minutes 30 --fit-minutes 10 --out runs/bench_denoise

Protocol
- Clean volume: the 96^3 crop x 51:147, y 120:216, z 37:133 of the 1 mm template, inside the hold-out
  y >= 120 that volscore's mni152 training never sees (``MNI152_TRAIN_REGION``).
- Noise: Gaussian with sigma 0.05 and 0.10 of the template's 99.5th percentile R, and Rician 0.05
  (``volscore.corrupt``), seeded. Every method is given the true sigma (volscore's own estimate is
  reported beside it). PSNR and SSIM (MONAI) over the whole crop with data range R, so the noisy
  input's PSNR is about 20 log10(1 / fraction).
- Methods: the noisy input; a Gaussian filter at its best width (an oracle: the width is picked by
  PSNR against the clean crop, an upper bound for the filter); dipy ``nlmeans`` (rician flag for Rician
  noise); BM4D (``bm4d`` package, sigma_psd = sigma, default profile); volscore Tweedie (one stitched
  denoiser pass) and refined (predictor-only chain of ``--steps`` levels from the scan's sigma) with a
  model trained by DSM for ``--train-minutes`` on the template's y < 120, conditioned on sigma in
  ``--train-sigmas`` (default [0.01, 0.5]; model units, i.e. fractions of the template's 0.5-99.5
  percentile range), and volscore
  self-supervised (Noise2Score: fitted on the noisy crop alone for ``--fit-minutes``, SSM-VR and DSM)
  at Gaussian 0.05. volscore runs go through ``denoise_file`` (NIfTI in, NIfTI out), as a user's would.
- Seconds are wall-clock on this machine for the denoising itself (fitting reported apart).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

CROP = (slice(51, 147), slice(120, 216), slice(37, 133))
SETTINGS = (("gaussian", 0.05), ("gaussian", 0.10), ("rician", 0.05))
GAUSS_WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def _train(
    run: Path, minutes: float, seed: int, sigma_range: tuple[float, float], threads: int | None
) -> None:
    """DSM on the template's training region (y < 120), in a child process."""
    from volscore.config import TrainConfig

    cfg = TrainConfig(
        data=["mni152"],
        out=str(run),
        objective="dsm",
        patch_size=32,
        preset="small",
        minutes=minutes,
        sigma_min=sigma_range[0],
        sigma_max=sigma_range[1],
        seed=seed,
    )
    (rec,) = harness.train_in_children([cfg], threads=threads, logs=[os.devnull])
    print(f"trained {rec['step']} steps in {rec['seconds']:.0f} s into {run}", flush=True)


def _record(
    rows: dict[str, dict[str, Any]],
    pictures: dict[str, Any],
    setting: str,
    method: str,
    x: Any,
    seconds: float,
    quality: dict[str, float],
    **extra: Any,
) -> None:
    rows[method] = {**quality, "seconds": seconds, **extra}
    pictures[method] = x
    print(f"  {setting:>14} {method:<26} {quality['psnr']:6.2f} dB  {seconds:7.1f} s", flush=True)


def _cell(row: dict[str, Any] | None) -> str:
    return "-" if row is None else f"{row['psnr']:.2f} / {row['ssim']:.3f} / {row['seconds']:.1f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_flags(
        p,
        threads=None,
        threads_help="torch threads (default: volscore.machine.set_threads(None), as the CLI)",
        json_flag=False,
        out="runs/bench_denoise",
        out_help="folder of the run and volumes",
    )
    p.add_argument("--run", help="reuse this trained run instead of training one")
    p.add_argument("--train-minutes", type=float, default=30.0)
    p.add_argument(
        "--train-sigmas",
        type=float,
        nargs=2,
        default=[0.01, 0.5],
        metavar=("MIN", "MAX"),
        help="the trained model's sigma range in model units (the refined chain goes down to MIN)",
    )
    p.add_argument("--fit-minutes", type=float, default=10.0, help="self-supervised fitting per objective")
    p.add_argument("--steps", type=int, default=10, help="levels of the refined chain")
    p.add_argument("--skip", nargs="*", default=[], help="methods to leave out, e.g. bm4d nlmeans selfsup")
    p.add_argument("--results", default="scripts/results")
    args = p.parse_args(argv)
    with harness.using_threads(args.threads):
        return bench(args)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from volscore.corrupt import add_noise, reference_level
    from volscore.data.nifti import resolve_paths
    from volscore.denoise import denoise_file, estimate_sigma, estimate_sigma_rician, foreground_mask
    from volscore.metrics import psnr, ssim
    from volscore.options import DenoiseOptions
    from volscore.plots import save_slices
    from volscore.run import Run

    out, results = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    (template,) = resolve_paths("mni152")
    img = nib.load(template)
    full = np.asarray(img.dataobj, dtype=np.float32)
    r = reference_level(full)
    crop_img = img.slicer[CROP]  # keeps the affine of the crop
    clean = np.asarray(crop_img.dataobj, dtype=np.float32)

    machine = harness.machine_info()
    report: dict[str, Any] = {
        "date": machine["date"],
        "machine": machine,
        "crop": [[s.start, s.stop] for s in CROP],
        "reference_level": r,
        "settings": {},
    }
    run = Path(args.run) if args.run else out / "run"
    if not args.run:
        t = time.perf_counter()
        if not (run / "checkpoint.pt").exists():
            _train(run, args.train_minutes, args.seed, tuple(args.train_sigmas), args.threads)
        report["train_seconds"] = time.perf_counter() - t
    loaded = Run.load(run)
    report["train_steps"] = loaded.step

    def score(x: np.ndarray) -> dict[str, float]:
        return {"psnr": psnr(x, clean, r), "ssim": ssim(x, clean, r)}

    for noise, fraction in SETTINGS:
        name = f"{noise} {fraction:.2f}"
        sigma = fraction * r
        noisy = add_noise(clean, sigma, noise, seed=args.seed)
        noisy_path = out / f"noisy_{noise}_{fraction:.2f}.nii.gz"
        nib.save(nib.Nifti1Image(noisy, crop_img.affine), noisy_path)
        head = foreground_mask(noisy)
        est = estimate_sigma_rician(noisy, ~head) if noise == "rician" else estimate_sigma(noisy, head)
        rows: dict[str, dict[str, Any]] = {"noisy": {**score(noisy), "seconds": 0.0}}
        pictures = {"clean": clean, "noisy": noisy}

        def add(method: str, x: Any, seconds: float, **extra: Any) -> None:
            _record(rows, pictures, name, method, x, seconds, score(x), **extra)  # noqa: B023

        best: tuple[float, float, Any, float] | None = None
        for w in GAUSS_WIDTHS:
            t = time.perf_counter()
            x = ndimage.gaussian_filter(noisy, w)
            sec = time.perf_counter() - t
            value = psnr(x, clean, r)
            if best is None or value > best[0]:
                best = (value, w, x, sec)
        assert best is not None
        add("gaussian filter (best)", best[2], best[3], width=best[1])

        if "nlmeans" not in args.skip:
            from dipy.denoise.nlmeans import nlmeans

            t = time.perf_counter()
            x = nlmeans(noisy, sigma, rician=noise == "rician")
            add("dipy nlmeans", np.asarray(x, np.float32), time.perf_counter() - t)
        if "bm4d" not in args.skip:
            import bm4d

            t = time.perf_counter()
            x = bm4d.bm4d(noisy, sigma)
            add("BM4D", np.asarray(x, np.float32), time.perf_counter() - t)

        for method, steps in (("volscore Tweedie", 0), (f"volscore refined ({args.steps})", args.steps)):
            dst = out / f"{method.split()[1]}_{noise}_{fraction:.2f}.nii.gz"
            options = DenoiseOptions(run=str(run), sigma=str(sigma), noise=noise, steps=steps, seed=args.seed)
            rec = denoise_file(noisy_path, dst, options, run=loaded, force=True)
            x = np.asarray(nib.load(dst).dataobj, dtype=np.float32)
            add(method, x, rec["timings"]["denoise"])

        if "selfsup" not in args.skip and (noise, fraction) == ("gaussian", 0.05):
            for objective in ("ssm-vr", "dsm"):
                dst = out / f"selfsup_{objective}_{noise}_{fraction:.2f}.nii.gz"
                options = DenoiseOptions(self_supervised=True, minutes=args.fit_minutes, objective=objective,
                                         sigma=str(sigma), noise=noise, seed=args.seed)  # fmt: skip
                rec = denoise_file(noisy_path, dst, options, force=True)
                x = np.asarray(nib.load(dst).dataobj, dtype=np.float32)
                add(f"volscore self-sup. {objective}", x, rec["timings"]["denoise"],
                    fit_seconds=rec["timings"]["fit"], fit_steps=rec["model"]["step"])  # fmt: skip

        report["settings"][name] = {"sigma": sigma, "sigma_estimate": est, "methods": rows}
        png = results / f"denoise_{noise}_{round(100 * fraction):02d}.png"
        save_slices(pictures, png, axis=2, vmin=0.0, vmax=r)

    harness.finish(machine)
    harness.write_json(results / "bench_denoise.json", report)
    print(f"\n{harness.header_line(machine)} Model trained {report['train_steps']} steps.\n")
    names = list(report["settings"])
    methods = list(dict.fromkeys(m for s in report["settings"].values() for m in s["methods"]))
    rows = [[m] + [_cell(report["settings"][n]["methods"].get(m)) for n in names] for m in methods]
    header = ["method"] + [f"{n}: PSNR / SSIM / s" for n in names]
    print(harness.markdown_table(header, rows, "l" * len(header)))
    return report


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
