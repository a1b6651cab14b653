"""The anchor side by side: MONAI's generative pipeline as its tutorials use it against volscore at its
defaults, trained for the same minutes on the same MNIST data, sampled and scored in one run.

    .venv/bin/python scripts/bench_monai_mnist.py --minutes 8 --n 250 \
        --json scripts/results/bench_monai_mnist.json

- MONAI (``monai.networks``, as the 2D DDPM tutorial): ``DiffusionModelUNet(spatial_dims=2)`` with one
  residual block per level and attention at the coarsest level, its widths chosen so that its parameter
  count is closest to volscore's ``small`` preset (reported); ``DDPMScheduler(1000 steps)``, epsilon
  prediction, MSE at a random timestep through ``DiffusionInferer``, Adam (lr ``--monai-lr``, 2e-4: the
  DDPM paper's; the tutorial's 2.5e-5 is for its 5x wider model trained for hours), batch 64, data scaled to
  [-1, 1]. Sampled with ``DDPMScheduler`` (1,000 evaluations) and ``DDIMScheduler`` (50), as the tutorials do.
- volscore: ``volscore baseline``'s EDM recipe (``BASELINE_RECIPES["edm"]``, preset small, batch 64),
  sampled with the sampler table's MNIST default (EDM's stochastic sampler, 40 levels = 79 evaluations) and
  with 25 levels (49 evaluations, within the issue's 50).
- Both train at once, one thread each, for the same minutes (the same machine load for both); sampling and
  scoring follow one after the other with ``--threads``. Scores: ``volscore.metrics.mnist`` (the fraction
  classified with confidence >= 0.9 by the independent classifier, the class range, and the Frechet distance
  of its features against the test split, with the real-vs-real floor), the same ``--n`` samples per row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness
import harness  # noqa: E402

BATCH = 64


def _count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def monai_unet(channels: tuple[int, int, int]) -> Any:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=2, in_channels=1, out_channels=1, num_res_blocks=1, channels=channels,
        attention_levels=(False, False, True), num_head_channels=channels[-1], norm_num_groups=8,
    )  # fmt: skip


def matched_channels(target: int) -> tuple[int, int, int]:
    """The widths (c, 2c, 2c) or (c, 2c, 4c) whose parameter count is nearest ``target``."""
    options = [tuple(c * m for m in mult) for c in (16, 24, 32, 48, 64) for mult in ((1, 2, 2), (1, 2, 4))]
    return min(options, key=lambda ch: abs(_count(monai_unet(ch)) - target))  # type: ignore[return-value]


def train_monai(
    channels: tuple[int, int, int], minutes: float, lr: float, seed: int, out: str
) -> dict[str, Any]:
    """(Child side.) MONAI's DDPM tutorial loop for ``minutes``; saves the weights to ``out``."""
    import torch
    import torch.nn.functional as F
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDPMScheduler

    from volscore.data.mnist import load_mnist

    torch.manual_seed(seed)
    x_train, _ = load_mnist("train")
    data = x_train * 2 - 1  # [-1, 1]
    model = monai_unet(channels)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    inferer = DiffusionInferer(scheduler)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < minutes * 60:
        batch = data[torch.randint(len(data), (BATCH,), generator=g)]
        noise = torch.randn(batch.shape, generator=g)
        timesteps = torch.randint(0, 1000, (BATCH,), generator=g)
        pred = inferer(inputs=batch, diffusion_model=model, noise=noise, timesteps=timesteps)
        loss = F.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    torch.save(model.state_dict(), out)
    return {"steps": steps, "seconds": time.perf_counter() - t0, "loss": float(loss)}


def sample_monai(channels: tuple[int, int, int], weights: str, kind: str, n: int, seed: int) -> Any:
    """``n`` samples in [0, 1] with MONAI's DDPM (1,000 steps) or DDIM (50 steps) sampler."""
    import torch
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    model = monai_unet(channels)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    if kind == "ddpm":
        scheduler = DDPMScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(1000)
    else:
        scheduler = DDIMScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(50)
    inferer = DiffusionInferer(scheduler)
    torch.manual_seed(seed)  # the schedulers draw their noise from the global generator
    noise = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x = inferer.sample(input_noise=noise, diffusion_model=model, scheduler=scheduler, verbose=False)
    return ((x + 1) / 2).clamp(0, 1)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench_samplers import score_mnist

    from volscore.config import TrainConfig
    from volscore.nets.presets import build_model
    from volscore.options import BASELINE_RECIPES
    from volscore.run import Run
    from volscore.sampling.settings import SamplerSettings

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = _count(build_model("small", 2))
    channels = matched_channels(target)
    params = {"volscore": target, "monai": _count(monai_unet(channels)), "monai_channels": list(channels)}
    cfg = TrainConfig(
        data=["mnist"], out=str(out / "volscore"), preset="small", minutes=args.minutes, batch_size=BATCH,
        seed=args.seed, **BASELINE_RECIPES["edm"],
    )  # fmt: skip
    weights = str(out / "monai.pt")
    if not args.skip_train:
        starts = [
            lambda: harness.start_child(harness.train_config, cfg, threads=1, log=out / "volscore.log"),
            lambda: harness.start_child(
                train_monai, channels, args.minutes, args.monai_lr, args.seed, weights, threads=1,
                log=out / "monai.log",
            ),
        ]  # fmt: skip
        trained = harness.run_children(starts, parallel=True)
    else:
        trained = [None, None]
    rows = []
    run = Run.load(cfg.out)
    from bench_samplers import mnist_quality

    for steps in (40, 25):
        settings = SamplerSettings(sampler="edm", steps=steps)
        r = mnist_quality(run, settings, args.n, seed=args.seed)
        r.pop("samples")
        rows.append({**r, "pipeline": "volscore (EDM recipe)", "sampler": f"EDM stochastic, {steps} levels"})
        print(rows[-1]["pipeline"], rows[-1]["sampler"], r["confident_fraction"], r["fd"], flush=True)
    for kind, nfe in (("ddim", 50), ("ddpm", 1000)):
        t0 = time.perf_counter()
        x = sample_monai(channels, weights, kind, args.n, args.seed)
        seconds = time.perf_counter() - t0
        r = score_mnist(x)
        rows.append({**r, "pipeline": "MONAI DDPM", "sampler": f"{kind.upper()} {nfe} steps", "nfe": nfe,
                     "seconds": seconds})  # fmt: skip
        print(rows[-1]["pipeline"], rows[-1]["sampler"], r["confident_fraction"], r["fd"], flush=True)
    return {"minutes": args.minutes, "n": args.n, "params": params, "trained": trained, "rows": rows}


def report(result: dict[str, Any]) -> None:
    p = result["params"]
    steps = result["trained"]
    print(
        f"parameters: volscore {p['volscore']:,}, MONAI {p['monai']:,} (channels {p['monai_channels']}); "
        f"training steps in {result['minutes']} minutes: "
        + (f"volscore {steps[0]['step']}, MONAI {steps[1]['steps']}" if steps[0] else "(not trained here)")
    )
    rows = []
    for r in result["rows"]:
        lo, hi = r["class_range"]
        rows.append(
            [r["pipeline"], r["sampler"], r["nfe"], f"{100 * r['confident_fraction']:.1f} %",
             f"{r['fd']:.2f} ({r['fd_floor']:.2f})", f"{100 * lo:.1f}-{100 * hi:.1f} %",
             f"{r['seconds']:.0f}"]
        )  # fmt: skip
    print(harness.markdown_table(
        ["pipeline", "sampler", "NFE", "confident", "FD test (floor)", "classes", "sampling s"], rows,
        "llrrrrr",
    ))  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=8.0, help="training minutes of each pipeline")
    p.add_argument("--n", type=int, default=250, help="samples per row")
    p.add_argument("--monai-lr", type=float, default=2e-4)
    p.add_argument("--skip-train", action="store_true", help="reuse the models in --out")
    harness.add_common_flags(p, threads=2, out="runs/bench_monai_mnist")
    args = p.parse_args(argv)
    return harness.run_bench("bench_monai_mnist", args, lambda _: measure(args), report)


if __name__ == "__main__":
    main()
