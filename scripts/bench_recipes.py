"""Training recipes side by side at equal wall-clock: today's NCSN-era recipe against the EDM-grade one.

    .venv/bin/python scripts/bench_recipes.py --kind mnist --minutes 20 --out runs/bench_recipes

Both recipes train at once, one thread each, for the same minutes on the same data (so both see the same
machine), then each model is sampled with the sampler table's default and with the recipe's own historical
sampler, and scored: MNIST by confidence, class range and Frechet distance against the test split
(``fd_train``, against the training split, is the figure settings were chosen by); the 3D template by SSIM,
noise ratio and histogram distance against the (resampled) template.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

# What differs between the recipes (sigmas, weighting, learning rate: volscore baseline's --recipe table);
# everything else is the TrainConfig default or the kind's data settings.
from volscore.config import PRESET_NAMES  # noqa: E402
from volscore.options import BASELINE_RECIPES as RECIPES  # noqa: E402

KINDS: dict[str, dict[str, Any]] = {
    "mnist": dict(data=["mnist"], preset="small"),
    # the bundled prior's setting (``recipes.prior_config``: coordinates with Fourier features), from scratch
    "mni152": dict(
        data=["mni152"],
        full_volume=True,
        spacing=3.0,
        preset="small",
        patch_size=32,
        coord_frequencies=5,
        warmup=50,
    ),
}


def variants(recipes: list[str], presets: list[str] | None) -> dict[str, dict[str, Any]]:
    """Every recipe, crossed with every preset when presets are given: {name: TrainConfig overrides}."""
    if not presets:
        return {name: dict(RECIPES[name]) for name in recipes}
    return {f"{name}-{preset}": {**RECIPES[name], "preset": preset} for name in recipes for preset in presets}


def train_all(
    kind: str, minutes: float, out: Path, runs: dict[str, dict[str, Any]], lr: float | None
) -> None:
    """Train every variant at once, each in its own process with one thread, for ``minutes`` each."""
    from volscore.config import TrainConfig

    out.mkdir(parents=True, exist_ok=True)  # the children's logs go here
    configs = []
    for name, overrides in runs.items():
        kwargs = {**KINDS[kind], **overrides, "out": str(out / f"{kind}_{name}"), "minutes": minutes}
        configs.append(TrainConfig(**(kwargs | ({"lr": lr} if lr is not None else {}))))
    logs = [out / f"{kind}_{name}.log" for name in runs]
    harness.train_in_children(configs, parallel=True, threads=1, logs=logs)


def evaluate(kind: str, run_dir: str, samplers: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    from volscore.run import Run
    from volscore.sampling.settings import SamplerSettings

    run = Run.load(run_dir)
    rows = []
    for spec in samplers:
        settings = SamplerSettings(**spec)
        t0 = time.perf_counter()
        if kind == "mnist":
            from bench_samplers import mnist_quality

            r = mnist_quality(run, settings, n, seed=0)
            r.pop("samples")
        else:
            from volscore.generate import sample_run_tensor
            from volscore.metrics.volumes import volume_sample_quality

            x = sample_run_tensor(run, settings, n=1, seed=0, progress=False)[0, 0]
            r = volume_sample_quality(x.numpy(), run.training_volume())
        from volscore.generate import run_sigmas

        levels = len(run_sigmas(run, settings))
        seconds = time.perf_counter() - t0
        nfe = settings.network_evaluations(levels)
        rows.append({**r, "sampler": spec, "nfe": nfe, "steps_trained": run.step, "seconds": seconds})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "class_histogram"}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=sorted(KINDS), default="mnist")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--presets", nargs="+", choices=PRESET_NAMES, help="cross recipes with these net sizes")
    p.add_argument("--lr", type=float, help="override the kind's learning rate")
    p.add_argument("--n", type=int, default=500, help="MNIST samples per setting")
    p.add_argument("--skip-train", action="store_true")
    harness.add_common_flags(p, threads=2, seed=False, out="runs/bench_recipes")
    args = p.parse_args(argv)
    return harness.run_bench("bench_recipes", args, lambda _: measure(args), report)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    todo = variants(args.recipes, args.presets)
    if not args.skip_train:
        train_all(args.kind, args.minutes, out, todo, args.lr)
    runs = {name: str(out / f"{args.kind}_{name}") for name in todo}
    samplers = (
        [{"sampler": "edm", "steps": 40}, {"sampler": "annealed", "n_steps_each": 3, "step_lr_scale": 3.0}]
        if args.kind == "mnist"
        else [{"sampler": "dpm", "steps": 35}, {"sampler": "annealed", "steps": 60, "n_steps_each": 2}]
    )  # the kind's default sampler and the lecture's annealed Langevin
    return {
        "kind": args.kind,
        "runs": {name: evaluate(args.kind, d, samplers, args.n) for name, d in runs.items()},
    }


def report(result: dict[str, Any]) -> None:
    """One markdown row per recipe and sampler."""
    rows = []
    for name, evaluations in result["runs"].items():
        for r in evaluations:
            s = r["sampler"]
            sampler = f"{s['sampler']} {s.get('steps', 'run')} levels"
            if result["kind"] == "mnist":
                lo, hi = r["class_range"]
                figures = [f"{100 * r['confident_fraction']:.1f} %", f"{r['fd']:.2f} ({r['fd_floor']:.2f})",
                           f"{r['fd_train']:.2f}", f"{100 * lo:.1f}-{100 * hi:.1f} %"]  # fmt: skip
            else:
                figures = [f"{r['ssim']:.3f}", f"{r['noise_ratio']:.2f}", f"{r['histogram_distance']:.3f}"]
            rows.append([name, r["steps_trained"], sampler, r["nfe"], *figures])
    cols = (
        ["confident", "FD test (floor)", "FD train", "classes"]
        if result["kind"] == "mnist"
        else ["SSIM", "noise ratio", "histogram distance"]
    )
    print(harness.markdown_table(["recipe", "steps", "sampler", "NFE", *cols], rows))


if __name__ == "__main__":
    main()
