"""Benchmark of the score-matching objectives: how well each fits a known score, and what a step costs.

Quality: a small MLP score model (3 hidden layers of 128, SiLU; x -> score) is trained with DSM
(sigma = 0.1), SSM, SSM-VR (one Gaussian projection), exact ISM and ESM on (a) a 2-D Gaussian mixture and
(b) a 16-d anisotropic Gaussian, with fresh samples every step, the same number of steps and the same
batch for every objective, Adam and a warm-up + cosine decay. The metric is the relative Fisher
divergence E|s_theta - s|^2 / E|s|^2 on fresh held-out samples (their own seed) of the density the
objective targets: p for SSM/SSM-VR/ISM/ESM, p_sigma (p convolved with N(0, sigma^2 I)) for DSM.
FD-SSM is only in the cost table: with the same projections it trained to the same numbers as SSM-VR.

Cost: milliseconds per training step (forward, backward, Adam step; batch 128) of the same MLP with d
inputs and outputs for d in {2, 16, 64, 256, 784}. The objectives are timed round-robin, so each ratio
compares steps measured under the same machine load; the table reports medians. One thread by default:
the matmuls are too small for intra-op threads, and on a shared CPU extra OpenMP threads stall.

Reproduce the README's tables (about 7 minutes on the shared 2-core CPU under load, half that when idle;
exact ISM on the 16-d Gaussian is about half of it, and ``--steps`` scales the quality part linearly):

    python scripts/bench_objectives.py --threads 1 --json bench_objectives.json

``--quick`` runs a seconds-long smoke version (used by tests/test_bench_objectives.py).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

from volscore.densities import Gaussian, GaussianMixture  # noqa: E402
from volscore.objectives import dsm_loss, esm_loss, ism_loss, ssm_loss  # noqa: E402

Density = Gaussian | GaussianMixture
QUALITY_OBJECTIVES = ("DSM", "SSM", "SSM-VR", "ISM", "ESM")
COST_OBJECTIVES = ("DSM", "SSM", "SSM-VR", "FD-SSM", "ISM")
TARGET = 0.02  # relative Fisher divergence the README promises for DSM, SSM, SSM-VR


def mlp(d: int, width: int = 128, depth: int = 3, seed: int = 0) -> nn.Sequential:
    """x (B, d) -> score (B, d); the same initial weights for every objective with the same seed."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sizes = [d] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.SiLU()]
        return nn.Sequential(*layers, nn.Linear(width, d))


def mixture_2d() -> GaussianMixture:
    """NCSN's toy (unequal weights, separated modes) shrunk so modes are 5-8 std apart, plus a third."""
    weights = torch.tensor([0.2, 0.5, 0.3])
    means = torch.tensor([[1.5, 1.5], [-1.5, -1.5], [1.5, -1.5]])
    covs = torch.tensor([[0.25, 0.25], [0.36, 0.16], [0.16, 0.36]])  # diagonal variances
    return GaussianMixture(weights, means, covs)


def anisotropic_gaussian(d: int = 16, seed: int = 0) -> Gaussian:
    """N(0, Q diag(v) Q^T), variances v log-spaced from 0.1 to 10, Q a seeded random rotation."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # Haar-distributed rotation
    v = torch.logspace(-1, 1, d, dtype=torch.float64)
    cov = (q * v) @ q.T
    return Gaussian(torch.zeros(d), (0.5 * (cov + cov.T)).float())


def objective_loss(
    name: str, model: nn.Module, x: Tensor, density: Density, sigma: float, n_projections: int = 1
) -> Tensor:
    """Per-sample (B,) loss of objective ``name`` on a clean batch x ~ p (the model ignores sigma)."""
    if name == "DSM":
        return dsm_loss(lambda y, _sigma: model(y), x, sigma)
    if name == "SSM":
        return ssm_loss(model, x, n_projections)
    if name == "SSM-VR":
        return ssm_loss(model, x, n_projections, variance_reduced=True)
    if name == "FD-SSM":  # Pang et al. 2020, in its variance-reduced form
        return ssm_loss(model, x, n_projections, variance_reduced=True, method="fd")
    if name == "ISM":
        return ism_loss(model, x)
    if name == "ESM":
        return esm_loss(model, x, density.score(x))
    raise ValueError(f"unknown objective {name!r}")


def train(
    name: str,
    density: Density,
    steps: int,
    batch: int,
    lr: float,
    sigma: float,
    n_projections: int,
    seed: int,
) -> tuple[nn.Module, float]:
    """Adam with a linear warm-up (first 2 % of steps) and a cosine decay to zero; fresh data every step."""
    model = mlp(density.dim, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warm = max(1, steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))
    )
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # the losses draw noise and projections from the global generator
        torch.manual_seed(seed + 1)
        t0 = time.perf_counter()
        for _ in range(steps):
            x = density.sample(batch, g)
            loss = objective_loss(name, model, x, density, sigma, n_projections).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        seconds = time.perf_counter() - t0
    return model, seconds


@torch.no_grad()
def relative_fisher(model: nn.Module, target: Density, n: int, seed: int) -> tuple[float, float]:
    """E|s_theta - s|^2 / E|s|^2 on n fresh samples of ``target``, and its Monte Carlo standard error."""
    x = target.sample(n, torch.Generator().manual_seed(seed))
    s = target.score(x)
    a = ((model(x) - s) ** 2).sum(1).double()  # (n,)
    b = (s**2).sum(1).double()
    r = a.mean() / b.mean()
    # Delta method for a ratio of means: Var(a - r b) / (n E[b]^2).
    se = (a - r * b).std() / (math.sqrt(n) * b.mean())
    return float(r), float(se)


def time_steps(
    objectives: Sequence[str],
    d: int,
    batch: int,
    repeats: int,
    max_seconds: float,
    sigma: float,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Median ms per training step of each objective at dimension d, timed round-robin.

    One warm-up step each, then up to ``repeats`` rounds; an objective leaves the rotation once it has
    three timings and has used ``max_seconds`` (exact ISM at d = 784 takes seconds per step).
    """
    density = Gaussian(torch.zeros(d), torch.ones(d))
    g = torch.Generator().manual_seed(seed)
    models = {k: mlp(d, seed=seed) for k in objectives}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in objectives}

    def step(k: str) -> float:
        x = density.sample(batch, g)
        t0 = time.perf_counter()
        loss = objective_loss(k, models[k], x, density, sigma).mean()
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()
        return time.perf_counter() - t0

    for k in objectives:
        step(k)  # warm-up: allocator, autograd graph caches
    for _ in range(repeats):
        active = [k for k in objectives if len(times[k]) < 3 or sum(times[k]) < max_seconds]
        if not active:
            break
        for k in active:
            times[k].append(step(k))
    return {k: {"ms": 1e3 * statistics.median(t), "n": len(t)} for k, t in times.items()}


def quality_table(results: dict[str, dict[str, dict[str, float]]], densities: Sequence[str]) -> str:
    rows = []
    for obj in QUALITY_OBJECTIVES:
        cells = []
        for dens in densities:
            r = results[dens].get(obj)
            if r is None:
                cells.append("-")
                continue
            mark = " ✗" if obj in ("DSM", "SSM", "SSM-VR") and r["rel_fisher"] > TARGET else ""
            cells.append(f"{100 * r['rel_fisher']:.2f} ± {100 * r['se']:.2f} %{mark}")
        rows.append([obj, "p_sigma" if obj == "DSM" else "p", *cells])
    return harness.markdown_table(
        ["objective", "target density", *densities], rows, "ll" + "r" * len(densities)
    )


def training_time_table(results: dict[str, dict[str, dict[str, float]]], densities: Sequence[str]) -> str:
    rows = [
        [obj] + [f"{results[d][obj]['train_s']:.1f} s" if obj in results[d] else "-" for d in densities]
        for obj in QUALITY_OBJECTIVES
    ]
    return harness.markdown_table(["objective", *densities], rows)


def cost_table(cost: dict[int, dict[str, dict[str, float]]]) -> str:
    objs = list(next(iter(cost.values())))
    rows = []
    for d, row in cost.items():
        ism = row["ISM"]["ms"] / row["SSM"]["ms"]
        ssm = row["SSM"]["ms"] / row["DSM"]["ms"]
        rows.append([d, *(f"{row[o]['ms']:.2f}" for o in objs), f"{ism:.1f}x", f"{ssm:.1f}x"])
    header = ["d", *(f"{o} ms" for o in objs), "ISM / SSM", "SSM / DSM"]
    return harness.markdown_table(header, rows, "r" * len(header))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/bench_objectives.py --threads 1 --json bench_objectives.json",
    )
    p.add_argument("--steps", type=int, default=2500, help="training steps per objective and density")
    p.add_argument("--batch", type=int, default=256, help="training batch for the quality runs")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (cosine decay to 0)")
    p.add_argument("--sigma", type=float, default=0.1, help="DSM noise level")
    p.add_argument("--projections", type=int, default=1, help="projections per sample for SSM variants")
    p.add_argument("--eval-samples", type=int, default=20000, help="held-out samples for the metric")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64, 256, 784], help="d for the cost table")
    p.add_argument("--cost-batch", type=int, default=128, help="batch for the cost table")
    p.add_argument("--repeats", type=int, default=50, help="timed steps per objective and d (at most)")
    p.add_argument("--max-seconds", type=float, default=6.0, help="timing budget per objective and d")
    harness.add_common_flags(
        p,
        threads=1,
        threads_help="torch.set_num_threads; 1 because these matmuls are too small for intra-op threads to "
        "pay, and on a shared CPU the extra OpenMP threads stall (up to 50x slower steps seen with 2)",
        seed_help="seed for model init and training data",
    )
    p.add_argument("--eval-seed", type=int, default=12345, help="seed of the held-out samples")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny budget: a smoke test, not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.eval_samples = 20, 32, 500
        args.dims, args.cost_batch, args.repeats, args.max_seconds = [2, 16], 16, 2, 0.5
    if min(args.steps, args.batch, args.eval_samples, args.repeats, args.projections) < 1:
        p.error("--steps, --batch, --eval-samples, --repeats and --projections must be >= 1")
    return args


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict:
    args = parse_args(argv)
    return harness.run_bench(
        "bench_objectives", args, lambda _: measure(args, log), lambda out: report(out, args, log), log
    )


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    out: dict = {}
    if not args.skip_quality:
        densities = {"2-D mixture": mixture_2d(), "16-d Gaussian": anisotropic_gaussian(16, seed=args.seed)}
        quality: dict[str, dict[str, dict[str, float]]] = {}
        for dname, p in densities.items():
            quality[dname] = {}
            for obj in QUALITY_OBJECTIVES:
                model, secs = train(
                    obj, p, args.steps, args.batch, args.lr, args.sigma, args.projections, args.seed
                )
                target = p.perturbed(args.sigma) if obj == "DSM" else p
                r, se = relative_fisher(model, target, args.eval_samples, args.eval_seed)
                quality[dname][obj] = {"rel_fisher": r, "se": se, "train_s": secs}
                log(f"  {dname:14s} {obj:7s} rel. Fisher {100 * r:6.2f} % (± {100 * se:.2f})  {secs:6.1f} s")
        out["quality"] = quality

    if not args.skip_cost:
        cost = {}
        for d in args.dims:
            cost[d] = time_steps(
                COST_OBJECTIVES, d, args.cost_batch, args.repeats, args.max_seconds, args.sigma, args.seed
            )
            log(f"  d={d:4d} " + "  ".join(f"{k} {v['ms']:.2f} ms" for k, v in cost[d].items()))
        out["cost"] = cost
    return out


def report(out: dict, args: argparse.Namespace, log: Callable[[str], None]) -> None:
    if "quality" in out:
        names = list(out["quality"])
        log(
            f"Relative Fisher divergence E|s_theta - s|^2 / E|s|^2 on {args.eval_samples} held-out samples "
            f"({args.steps} steps x batch {args.batch} for every objective, DSM sigma = {args.sigma}, "
            f"{args.projections} Gaussian projection(s)):\n"
        )
        log(quality_table(out["quality"], names) + "\n")
        log("Training wall-clock:\n\n" + training_time_table(out["quality"], names) + "\n")
    if "cost" in out:
        log(
            f"Milliseconds per training step (forward + backward + Adam), batch {args.cost_batch}, "
            f"MLP d-128-128-128-d, median of round-robin timings:\n"
        )
        log(cost_table(out["cost"]) + "\n")


if __name__ == "__main__":
    main()
