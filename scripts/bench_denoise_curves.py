"""Accuracy per evaluation of the Tweedie denoiser: PSNR against seconds for the test-time ensemble (K passes,
each with another axis flip and tile offset) and for the blend stitcher's tile overlap.

    .venv/bin/python scripts/bench_denoise_curves.py --threads 2 \
        --json scripts/results/bench_denoise_curves.json --png scripts/results/denoise_curves.png

On ``bench_denoise``'s template hold-out block at Gaussian ``--fraction`` (seeded as there), through
``denoise_file`` as ``volscore denoise`` runs it (``--run``, default the bundled model; self-check off, so the
seconds are the denoising alone): K in ``--ensemble`` at the default overlap, and each ``--overlaps`` value
at K = 1. BM4D (told the true sigma) is drawn as a reference line. Why: issue #15 asks
for a curve of PSNR against K and time, and an overlap chosen by the curve rather than fixed at 0.5.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import numpy as np
    from bench_denoise import DEFAULT_RUN, load_cases, noisy_scan, run_volscore

    from volscore.metrics import psnr
    from volscore.options import DenoiseOptions
    from volscore.run import Run

    run_spec = args.run or DEFAULT_RUN
    run = Run.load(run_spec)
    (case,) = load_cases(("holdout",), quick=args.quick)
    r, clean = case.reference_level, case.clean
    src = tmp / "noisy.nii.gz"
    sigma, noisy = noisy_scan(case, "gaussian", args.fraction, args.seed, src)
    common = dict(run=run_spec, sigma=str(sigma), noise="gaussian", seed=args.seed, check="off")

    def one(name: str, **options: Any) -> dict[str, Any]:
        x, rec, _ = run_volscore(src, tmp / f"{name}.nii.gz", DenoiseOptions(**common, **options), run=run)
        row = {**options, "psnr": round(psnr(x, clean, r), 3), "seconds": round(rec["timings"]["denoise"], 2)}
        print(name, row, flush=True)
        return row

    one("warm-up", ensemble=1)  # the first pass of a process pays one-off costs: not a point of the curve
    result: dict[str, Any] = {
        "run": run_spec,
        "case": case.describe(),
        "fraction": args.fraction,
        "psnr_noisy": round(psnr(noisy, clean, r), 3),
        "ensemble_overlap": DenoiseOptions().overlap,  # the K series runs at the default overlap
        "ensemble": [one(f"k{k}", ensemble=k) for k in args.ensemble],
        "overlap": [one(f"o{o:g}", overlap=o) for o in args.overlaps],
    }
    if not args.no_bm4d:
        import bm4d

        t = time.perf_counter()
        x = np.asarray(bm4d.bm4d(noisy, sigma), np.float32)
        result["bm4d"] = {"psnr": round(psnr(x, clean, r), 3), "seconds": round(time.perf_counter() - t, 2)}
    if args.png:
        draw(result, args.png)
    return result


def draw(result: dict[str, Any], png: Path) -> Path:
    """The two curves, BM4D as a reference line (the noisy input, 9-11 dB lower, is left to the table: it
    would flatten the curves)."""
    from volscore.plots import save_curves

    series = {
        label: ([e["seconds"] for e in result[key]], [e["psnr"] for e in result[key]])
        for label, key in (
            (f"ensemble K (overlap {result.get('ensemble_overlap', 0.5):g})", "ensemble"),
            ("overlap (K = 1)", "overlap"),
        )
    }
    refs = {f"BM4D ({result['bm4d']['seconds']:.0f} s)": result["bm4d"]["psnr"]} if "bm4d" in result else {}
    title = f"{result['case']['title']}, Gaussian {result['fraction']:g}"
    return save_curves(series, png, "seconds", "PSNR (dB)", log_x=True, references=refs, title=title)


def report(result: dict[str, Any]) -> None:
    k_overlap = result.get("ensemble_overlap", 0.5)
    rows = [[f"K = {e['ensemble']}", k_overlap, e["seconds"], f"{e['psnr']:.2f}"] for e in result["ensemble"]]
    rows += [["K = 1", e["overlap"], e["seconds"], f"{e['psnr']:.2f}"] for e in result["overlap"]]
    if "bm4d" in result:
        rows.append(["BM4D", "", result["bm4d"]["seconds"], f"{result['bm4d']['psnr']:.2f}"])
    rows.append(["noisy input", "", "", f"{result['psnr_noisy']:.2f}"])
    print(harness.markdown_table(["passes", "overlap", "seconds", "PSNR (dB)"], rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="run or pretrained:NAME (default: bundled)")
    p.add_argument("--ensemble", nargs="+", type=int, default=[1, 2, 4, 8], help="K values (overlap 0.5)")
    p.add_argument("--overlaps", nargs="+", type=float, default=[0.125, 0.25, 0.5, 0.75], help="at K = 1")
    p.add_argument("--fraction", type=float, default=0.05, help="noise sd, x the reference level")
    p.add_argument("--no-bm4d", action="store_true", help="leave BM4D out (it needs the bench extra)")
    p.add_argument("--png", type=Path, default=None, help="draw the curves here")
    p.add_argument("--quick", action="store_true", help="central 40^3 block (tests)")
    harness.add_common_flags(p, threads=2)
    args = p.parse_args(argv)
    return harness.run_bench("bench_denoise_curves", args, lambda tmp: measure(args, tmp), report)


if __name__ == "__main__":
    main()
