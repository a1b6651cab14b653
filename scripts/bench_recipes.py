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
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

# What differs between the recipes; everything else is the TrainConfig default or the kind's data settings.
RECIPES: dict[str, dict[str, Any]] = {
    "ncsn": dict(sigma_dist="loguniform", weighting="sigma2"),
    "edm": dict(sigma_dist="lognormal", weighting="edm"),
}
KINDS: dict[str, dict[str, Any]] = {
    "mnist": dict(data=["mnist"], preset="small", lr=1e-3),
    "mni152": dict(
        data=["mni152"], full_volume=True, spacing=3.0, preset="small", patch_size=32, lr=1e-3, warmup=50
    ),
}


def _train(kwargs: dict[str, Any], threads: int) -> None:
    import torch

    from volscore.config import TrainConfig
    from volscore.train import Trainer

    torch.set_num_threads(threads)
    with Trainer(TrainConfig(**kwargs), progress=False) as trainer:
        trainer.run()


def train_all(
    kind: str, minutes: float, out: Path, recipes: list[str], lr: float | None, extra: dict
) -> dict:
    """Train every recipe at once in its own process with one thread, for ``minutes`` each."""
    ctx = mp.get_context("spawn")
    procs = {}
    for name in recipes:
        kwargs = {
            **KINDS[kind],
            **RECIPES[name],
            **extra,
            "out": str(out / f"{kind}_{name}"),
            "minutes": minutes,
        }
        if lr is not None:
            kwargs["lr"] = lr
        procs[name] = ctx.Process(target=_train, args=(kwargs, 1))
        procs[name].start()
    for p in procs.values():
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a training process failed (exit {p.exitcode})")
    return {name: str(out / f"{kind}_{name}") for name in recipes}


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
        levels = len(__import__("volscore.generate", fromlist=["run_sigmas"]).run_sigmas(run, settings))
        rows.append({**r, "sampler": spec, "nfe": settings.network_evaluations(levels), "steps_trained": run.step,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "class_histogram"}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=sorted(KINDS), default="mnist")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--lr", type=float, help="override the kind's learning rate")
    p.add_argument("--n", type=int, default=500, help="MNIST samples per setting")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--out", default="runs/bench_recipes")
    args = p.parse_args(argv)
    out = Path(args.out)
    runs = {name: str(out / f"{args.kind}_{name}") for name in args.recipes}
    if not args.skip_train:
        runs = train_all(args.kind, args.minutes, out, args.recipes, args.lr, {})
    samplers = [
        {"sampler": "edm", "steps": 18},
        {"sampler": "heun", "steps": 18},
        {"sampler": "annealed", "n_steps_each": 3, "step_lr_scale": 3.0}
        if args.kind == "mnist"
        else {"sampler": "annealed", "steps": 60, "n_steps_each": 2},
    ]
    result = {
        "args": vars(args),
        "runs": {name: evaluate(args.kind, d, samplers, args.n) for name, d in runs.items()},
    }
    (out / f"bench_recipes_{args.kind}.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
