"""The bundled T1 denoiser's recipe with other networks and patch sizes, at equal training minutes.

    .venv/bin/python scripts/bench_denoiser_nets.py --minutes 42.5 \
        --variants deep-48:deep:48:2 small-48:small:48:2 --json scripts/results/bench_denoiser_nets.json

Every variant is ``recipes.denoiser_config`` (the ``t1-denoiser`` card's data, augmentation, sigmas and
learning rate) with its own preset, patch edge and batch size, trained at once with one thread each for the
same minutes (so they see the same machine); ``--baseline`` (default the bundled ``pretrained:t1-denoiser``,
small preset, 32^3 patches, batch 4, 42.5 minutes on one thread) is measured beside them. Each model is then
scored as its card is (``bench_denoise.denoiser_figures``: the template hold-out and two other subjects' scans
at Gaussian 0.05 and 0.10, one Tweedie pass with the default options), and BM4D is run in the same process on
the same noisy volumes (``--no-bm4d`` leaves it out). Why: issue #15 asks whether a larger receptive field
(more levels, larger patches) closes the gap to BM4D at equal training minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402


def parse_variant(text: str) -> dict[str, Any]:
    """``NAME:PRESET:PATCH:BATCH`` -> {"name", "preset", "patch_size", "batch_size"}."""
    parts = text.split(":")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected NAME:PRESET:PATCH:BATCH")
    name, preset, patch, batch = parts
    try:
        return {"name": name, "preset": preset, "patch_size": int(patch), "batch_size": int(batch)}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"variant {text!r}: PATCH and BATCH must be integers") from exc


def train_variants(variants: list[dict[str, Any]], out: Path, minutes: float, seed: int) -> dict[str, str]:
    """Train every variant at once, one thread each, ``minutes`` each; resumes a run already in its folder."""
    from volscore.recipes import denoiser_config

    out.mkdir(parents=True, exist_ok=True)
    configs = [
        replace(
            denoiser_config(str(out / v["name"]), steps=None, minutes=minutes, seed=seed),
            preset=v["preset"],
            patch_size=v["patch_size"],
            batch_size=v["batch_size"],
        )  # fmt: skip
        for v in variants
    ]
    for cfg in configs:
        cfg.validate()
    logs = [out / f"{v['name']}.log" for v in variants]
    harness.train_in_children(configs, parallel=True, threads=1, logs=logs)
    return {v["name"]: str(out / v["name"]) for v in variants}


def bm4d_figures(seed: int, quick: bool = False) -> dict[str, Any]:
    """BM4D (default profile, told the true sigma) on the noisy volumes ``denoiser_figures`` makes with the
    same seed: per case and level, PSNR and seconds."""
    import bm4d
    import numpy as np
    from bench_denoise import GAUSSIAN_LEVELS, _setting_name, load_cases, noisy_scan

    from volscore.metrics import psnr

    out: dict[str, Any] = {}
    for case in load_cases(quick=quick):
        r, clean = case.reference_level, case.clean
        levels = {}
        for noise, fraction in GAUSSIAN_LEVELS:
            sigma, noisy = noisy_scan(case, noise, fraction, seed)
            t = time.perf_counter()
            x = np.asarray(bm4d.bm4d(noisy, sigma), np.float32)
            levels[_setting_name(noise, fraction)] = {
                "psnr": round(psnr(x, clean, r), 2),
                "seconds": round(time.perf_counter() - t, 2),
            }
        out[case.name] = levels
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench_denoise import denoiser_figures

    from volscore.run import Run

    runs = {} if args.skip_train else train_variants(args.variants, Path(args.out), args.minutes, args.seed)
    runs = {v["name"]: str(Path(args.out) / v["name"]) for v in args.variants} | runs
    if args.baseline:
        runs = {"baseline": args.baseline} | runs
    models: dict[str, Any] = {}
    for name, spec in runs.items():
        run = Run.load(spec)
        cfg = run.config
        models[name] = {
            "run": spec,
            "preset": cfg.preset,
            "patch_size": cfg.patch_size,
            "batch_size": cfg.batch_size,
            "steps": run.step,
            "figures": denoiser_figures(spec, seed=args.seed, quick=args.quick),
        }
        print(f"{name}: {models[name]['steps']} steps measured", flush=True)
    result: dict[str, Any] = {"minutes": args.minutes, "models": models}
    if not args.no_bm4d:
        result["bm4d"] = bm4d_figures(args.seed, args.quick)
    return result


def report(result: dict[str, Any]) -> None:
    """One row per model: PSNR per case and level (and BM4D's row), seconds on the hold-out."""
    models = result["models"]
    first = next(iter(models.values()))["figures"]
    columns = [(case, level) for case, entry in first.items() for level in entry["levels"]]
    header = ["model", "preset", "patch x batch", "steps"] + [f"{c} {lvl.split()[-1]}" for c, lvl in columns]
    rows = []
    for name, m in models.items():
        cells = []
        for case, level in columns:
            fig = m["figures"][case]["levels"][level]
            cells.append(f"{fig['psnr_denoised']:.2f}" + (" (flag)" if fig["check_flagged"] else ""))
        rows.append([name, m["preset"], f"{m['patch_size']}^3 x {m['batch_size']}", m["steps"], *cells])
    if "bm4d" in result:
        rows.append(["BM4D", "", "", "", *[f"{result['bm4d'][c][lvl]['psnr']:.2f}" for c, lvl in columns]])
    noisy = [f"{first[c]['levels'][lvl]['psnr_noisy']:.2f}" for c, lvl in columns]
    rows.append(["noisy input", "", "", "", *noisy])
    print(harness.markdown_table(header, rows))
    print("\nseconds of one Tweedie pass on the hold-out (gaussian 0.05):")
    for name, m in models.items():
        print(f"  {name}: {m['figures']['holdout']['levels']['gaussian 0.05']['seconds']:.2f} s")
    if "bm4d" in result:
        print(f"  BM4D: {result['bm4d']['holdout']['gaussian 0.05']['seconds']:.2f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", type=parse_variant, required=True, help="NAME:PRESET:PATCH:BATCH")
    p.add_argument("--minutes", type=float, default=42.5, help="training minutes of every variant")
    p.add_argument("--baseline", default="pretrained:t1-denoiser", help="a run measured beside ('' for none)")
    p.add_argument("--skip-train", action="store_true", help="measure the runs already in --out")
    p.add_argument("--no-bm4d", action="store_true", help="leave BM4D out (it needs the bench extra)")
    p.add_argument("--quick", action="store_true", help="central 40^3 blocks (tests)")
    harness.add_common_flags(p, threads=1, out="runs/bench_denoiser_nets")
    args = p.parse_args(argv)
    return harness.run_bench("bench_denoiser_nets", args, lambda _: measure(args), report)


if __name__ == "__main__":
    main()
