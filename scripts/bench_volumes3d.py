"""Benchmark of volscore on 3D volumes: training memory vs volume size, stitched sampling, seams, objectives.

(a) Training at patch 32 (preset small, batch 4, bf16 autocast, coordinate channels, DSM) on synthetic
    smooth random volumes of 64^3 and 256^3, written as NIfTI and read through the ordinary data path
    (``open_source`` inside ``Trainer``): median seconds per step, training voxels/s and peak RSS, each
    run in its own child process with the same number of steps. Target: RSS(256^3) / RSS(64^3) <= 1.1.
(b) Stitched sampling of a 256^3 volume with the (untrained: the cost is the same) small 3D model under
    ``torch.no_grad()``: peak RSS of a child process taking a few annealed-Langevin steps with
    ``StitchedScore(mode, tile_batch=8)``, and the time of one step relative to one plain batched pass of
    the same model over as many voxels (512 tiles of 32^3 in batches of 8, no tiling bookkeeping), the two
    timed alternately. Targets for shift: peak RSS <= 2 GiB, step / plain <= 1.2. Blend (overlap 0.5) and
    fixed for context, and shift again with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``): every
    new tile shape otherwise leaves freed activations in a fragmented heap, so RSS grows step by step.
(c) Seams: a model trained for a few minutes on the bundled MNI template (3 mm, patch 32, full volume;
    ``--run`` reuses one, e.g. from ``volscore demo``) samples the training volume's shape with shift,
    blend and fixed stitching (same seed, 40 levels x 2 steps); ``seam_score(volume, patch, offset=0)``
    measures the fixed grid's boundaries (about 1 without seams on a stationary volume; a brain's central
    planes score higher, so the model run on the whole volume at once, with no tiles, is the seam-free
    reference, sampled with the same seed). Also one Tweedie/denoiser pass
    D(x, sigma) = x + sigma^2 s(x, sigma) on a noisy copy of the template: a deterministic case where
    tile-border artefacts are easy to see. Montages go to ``scripts/results/``.
(d) DSM vs SSM-VR and FD-SSM: seconds per training step and peak RSS (the 64^3 setting of (a)).

Child processes of (a) and (d) run round-robin (``--rounds``) so that ratios compare runs under the same
machine load; tables report medians. Peak RSS is ``ru_maxrss`` of each child, one measurement per child.

Reproduce the README's tables (41 minutes measured on the 2-core CPU shared with other jobs, load about 3;
roughly 20-25 minutes on a quiet one; ``--run`` with a ``volscore demo`` run saves the 4 training minutes):

    python scripts/bench_volumes3d.py --threads 1 --json bench_volumes3d.json

``--quick`` runs a smoke version (used by tests/test_bench_volumes3d.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from volscore.machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MODES = ("shift", "blend", "fixed")
RSS_RATIO_TARGET = 1.1  # (a) RSS(largest volume) / RSS(smallest volume)
SAMPLE_RSS_TARGET_GIB = 2.0  # (b) peak RSS of shift sampling at 256^3
STEP_RATIO_TARGET = 1.2  # (b) shift step / plain batched pass
SEAM_TOLERANCE = 0.05  # (c) shift and blend within 5 % of 1
MIB = 1024.0
MALLOC_ROW = "shift, MALLOC_MMAP_THRESHOLD_=131072"
WHOLE = "none"  # (c) the seam-free reference: the model on the whole volume at once


# -- measurement helpers (children and parent) --------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MIB


def rss_now_mib() -> float | None:
    """Current resident set size, from /proc (None where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / MIB
    except OSError:
        pass
    return None


def smooth_volume(n: int, seed: int, correlation: int = 16) -> Any:
    """A smooth random (n, n, n) float32 array: Gaussian noise on a grid every ``correlation`` voxels,
    trilinearly upsampled, so every volume size has the same statistics inside a patch."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, 1, *(n // correlation + 2,) * 3), generator=g)
    fine = F.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True)
    return fine[0, 0].numpy()


def run_child(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (so its peak RSS is its own) and return its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {spec['kind']} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# -- children -----------------------------------------------------------------------------------------
def child_train(spec: dict[str, Any]) -> dict[str, Any]:
    """(a), (d): train_step() of a Trainer on a NIfTI file, timed after ``warmup`` steps."""
    from volscore.config import TrainConfig
    from volscore.train import Trainer

    rss_start = rss_now_mib()
    estimate = spec["estimate_sigmas"]
    cfg = TrainConfig(
        data=[spec["data"]],
        out=spec["out"],
        objective=spec["objective"],
        preset="small",
        steps=spec["warmup"] + spec["steps"],
        batch_size=spec["batch"],
        amp="bf16",
        patch_size=spec["patch"],
        coords=True,
        seed=spec["seed"],
        # Fixed here unless asked: NCSNv2's estimate draws 1000 patches (+ coordinates) once, a transient
        # that would hide how memory scales with the volume.
        sigma_max=None if estimate else 10.0,
        num_sigmas=None if estimate else 100,
        device="cpu",
    )
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    setup_s = time.perf_counter() - t0
    rss_setup = rss_now_mib()
    for _ in range(spec["warmup"]):
        trainer.train_step()
    times, losses = [], []
    for _ in range(spec["steps"]):
        t = time.perf_counter()
        info = trainer.train_step()
        times.append(time.perf_counter() - t)
        losses.append(info["loss"])
    return {
        "sec_per_step": statistics.median(times),
        "times": times,
        "setup_s": setup_s,
        "voxels_per_s": spec["batch"] * spec["patch"] ** 3 / statistics.median(times),
        "rss_start_mib": rss_start,
        "rss_after_setup_mib": rss_setup,
        "peak_rss_mib": peak_rss_mib(),
        "finite_losses": sum(math.isfinite(v) for v in losses),
        "sigma_max": trainer.cfg.sigma_max,
    }


def child_sample(spec: dict[str, Any]) -> dict[str, Any]:
    """(b): alternately one plain batched pass and one annealed-Langevin step with the stitched score."""
    import torch

    from volscore.data.patches import coordinate_patch
    from volscore.nets import build_model
    from volscore.sampling.langevin import annealed_langevin
    from volscore.sampling.stitch import StitchedScore

    rss_start = rss_now_mib()
    n, p, tb = spec["size"], spec["patch"], spec["tile_batch"]
    torch.manual_seed(spec["seed"])
    model = build_model("small", 3, coord_channels=True).eval().requires_grad_(False)
    calls = {"calls": 0, "voxels": 0}
    shapes: set[tuple[int, ...]] = set()  # distinct batch shapes so far (each new one: new oneDNN primitives)

    def patch_fn(x: torch.Tensor, sigma: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
        calls["calls"] += 1
        calls["voxels"] += x[:, 0].numel()
        shapes.add(tuple(x.shape))
        return model(x, sigma, coords)

    g = torch.Generator().manual_seed(spec["seed"])
    stitched = StitchedScore(
        patch_fn,
        p,
        mode=spec["mode"],
        tile_batch=tb,
        overlap=spec["overlap"],
        generator=torch.Generator().manual_seed(spec["seed"] + 1),
    )
    sigma = 1.0
    x = sigma * torch.randn((1, 1, n, n, n), generator=g)  # (B, C, D, H, W)
    # The plain pass: as many voxels as the volume, in full batches of tb tiles of p^3, one batch reused.
    n_batches = math.ceil(n**3 / p**3 / tb)
    xb = torch.randn((tb, 1, p, p, p), generator=g)
    cb = torch.stack([coordinate_patch((n, n, n), (32 * i % n, 0, 0), p) for i in range(tb)])
    sb = torch.full((tb,), sigma)
    timings: dict[str, list[float]] = {"plain": [], "step": []}
    per_step = []
    with torch.no_grad():
        model(xb, sb, cb)  # warm-up: oneDNN primitives for the patch shape
        for _ in range(spec["rounds"]):
            t = time.perf_counter()
            for _ in range(n_batches):
                model(xb, sb, cb)
            timings["plain"].append(time.perf_counter() - t)
            calls.update(calls=0, voxels=0)
            t = time.perf_counter()
            x = annealed_langevin(
                stitched, x, torch.tensor([sigma]), 1, step_lr=1e-4, denoise=False, generator=g
            )
            timings["step"].append(time.perf_counter() - t)
            per_step.append(
                dict(calls, offset=stitched.offset, shapes_so_far=len(shapes), rss_mib=rss_now_mib())
            )
    plain, step = statistics.median(timings["plain"]), statistics.median(timings["step"])
    return {
        "plain_s": plain,
        "step_s": step,
        "ratio": step / plain,
        "ratios": [s / q for s, q in zip(timings["step"], timings["plain"], strict=True)],
        "timings": timings,
        "per_step": per_step,
        "voxel_factor": per_step[-1]["voxels"] / n**3,
        "plain_batches": n_batches,
        "finite": bool(torch.isfinite(x).all()),
        "rss_start_mib": rss_start,
        "peak_rss_mib": peak_rss_mib(),
    }


def child_main(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    kinds: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "train": child_train,
        "sample": child_sample,
    }
    result = kinds[spec["kind"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


# -- (a) and (d): training ----------------------------------------------------------------------------
def bench_training(args: argparse.Namespace, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from volscore.data.nifti import save_nifti

    files = {}
    for n in args.volume_sizes:
        files[n] = tmp / f"smooth_{n}.nii.gz"
        save_nifti(files[n], smooth_volume(n, seed=args.seed + n))
    small, large = min(args.volume_sizes), max(args.volume_sizes)
    configs: dict[str, dict[str, Any]] = {
        f"dsm {n}^3": {"size": n, "objective": "dsm"} for n in args.volume_sizes
    }
    if not args.skip_objectives:
        configs[f"ssm-vr {small}^3"] = {"size": small, "objective": "ssm-vr"}
        configs[f"ssm-fd {small}^3"] = {"size": small, "objective": "ssm-fd"}
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in configs}
    estimated: dict[str, Any] | None = None
    for r in range(args.rounds):
        for name, c in configs.items():
            spec = dict(
                kind="train",
                data=str(files[c["size"]]),
                out=str(tmp / f"run_{name.replace(' ', '_').replace('^', '')}_{r}"),
                objective=c["objective"],
                steps=args.steps,
                warmup=args.warmup,
                batch=args.batch,
                patch=args.patch,
                seed=args.seed,
                threads=args.threads,
                estimate_sigmas=False,
            )
            res = run_child(spec)
            results[name].append(res)
            log(
                f"  (a/d) round {r}: {name:14s} {res['sec_per_step']:.3f} s/step, "
                f"peak RSS {res['peak_rss_mib']:.0f} MiB"
            )
        if r == 0:  # once: the default path, with NCSNv2's sigma_max estimate at start-up
            spec.update(
                data=str(files[small]), out=str(tmp / "run_estimate"), objective="dsm", estimate_sigmas=True
            )
            estimated = run_child(spec)
            log(f"  (a) dsm {small}^3 with sigma estimate: peak RSS {estimated['peak_rss_mib']:.0f} MiB")
    summary = {name: _median_fields(runs) for name, runs in results.items()}
    ratio = summary[f"dsm {large}^3"]["peak_rss_mib"] / summary[f"dsm {small}^3"]["peak_rss_mib"]
    return {"runs": results, "summary": summary, "estimated": estimated, "rss_ratio": ratio}


def _median_fields(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("sec_per_step", "voxels_per_s", "peak_rss_mib", "rss_start_mib", "rss_after_setup_mib", "setup_s")
    return {k: statistics.median(r[k] for r in runs) for k in keys if runs[0].get(k) is not None}


# -- (b): stitched sampling ---------------------------------------------------------------------------
def bench_sampling(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    out = {}
    rows = [(m, m, None) for m in MODES if m in args.sample_modes]
    if args.malloc_row and "shift" in args.sample_modes:
        # glibc raises its mmap threshold (up to 32 MiB) after freeing large blocks; later tensors of new
        # sizes then come from the heap and fragment it. Shift's ever-changing tile shapes make RSS grow
        # with every step; a fixed threshold returns freed tensors to the OS.
        rows.insert(1, (MALLOC_ROW, "shift", {"MALLOC_MMAP_THRESHOLD_": "131072"}))
    for name, mode, env in rows:
        rounds = args.sample_rounds if mode == "shift" else args.context_rounds
        spec = dict(
            kind="sample",
            mode=mode,
            size=args.sample_size,
            patch=args.patch,
            tile_batch=args.tile_batch,
            overlap=args.overlap,
            rounds=rounds,
            seed=args.seed,
            threads=args.threads,
        )
        r = out[name] = run_child(spec, env)
        log(
            f"  (b) {name}: step {r['step_s']:.1f} s, plain {r['plain_s']:.1f} s, "
            f"ratio {r['ratio']:.2f}, peak RSS {r['peak_rss_mib'] / MIB:.2f} GiB"
        )
    return out


# -- (c): seams ---------------------------------------------------------------------------------------
def _seam(volume: Any, patch: int, offset: Sequence[int] | int = 0) -> float:
    from volscore.sampling.stitch import seam_score

    try:
        return seam_score(volume, patch, offset)
    except ValueError:  # no tile boundary at this offset (short axes merge into one tile)
        return float("nan")


def _train_seam_model(args: argparse.Namespace, run_dir: Path, log: Callable[[str], None]) -> None:
    """A short DSM run on the bundled template, with the settings of ``volscore demo``."""
    from volscore.config import TrainConfig
    from volscore.train import Trainer

    cfg = TrainConfig(
        data=["mni152"],
        out=str(run_dir),
        objective="dsm",
        preset="small",
        steps=args.seam_train_steps,
        minutes=None if args.seam_train_steps else args.seam_minutes,
        batch_size=4,
        lr=1e-3,
        patch_size=args.seam_patch,
        coords=True,
        spacing=args.seam_spacing,
        full_volume=True,
        seed=args.seed,
        ckpt_every=10**9,
        device="cpu",
    )
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=False)
    trainer.run()
    log(f"  (c) trained {trainer.step} steps in {time.perf_counter() - t0:.0f} s into {run_dir}")


def bench_seams(args: argparse.Namespace, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from volscore.data.patches import coordinate_grid
    from volscore.data.sources import open_source
    from volscore.generate import load_run, sample_volume, sampling_schedule
    from volscore.plots import save_montage
    from volscore.sampling.langevin import annealed_langevin, randn_like
    from volscore.sampling.stitch import StitchedScore

    run_dir = Path(args.run) if args.run else tmp / "seam_run"
    trained_here = not (run_dir / "checkpoint.pt").exists()
    if trained_here:
        _train_seam_model(args, run_dir, log)
    model, state = load_run(run_dir)
    cfg, patch = state["config"], int(state["config"]["patch_size"])
    shape = state["data"]["shapes"][0]
    sigmas, step_lr = sampling_schedule(cfg, args.seam_levels, args.seam_steps_each)
    out: dict[str, Any] = {
        "run": str(run_dir) if args.run else None,
        "trained_here": trained_here,
        "train_steps": int(state["step"]),
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
    grid = coordinate_grid(shape)[None] if cfg["coords"] else None  # (1, 3, D, H, W)

    def whole(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(x, sigma, grid)

    samples = {}
    for mode in (*MODES, WHOLE):
        t0 = time.perf_counter()
        if mode == WHOLE:  # what sample_volume does, with the whole-volume score
            gen = torch.Generator().manual_seed(args.seed)
            x = float(sigmas[0]) * randn_like(torch.empty(1, 1, *shape), gen)
            x = annealed_langevin(whole, x, sigmas, args.seam_steps_each, step_lr, True, gen)[0, 0]
        else:
            x = sample_volume(
                model,
                shape,
                patch,
                cfg["coords"],
                sigmas,
                args.seam_steps_each,
                step_lr,
                seed=args.seed,
                stitch=mode,
                tile_batch=args.tile_batch,
                progress=False,
            )[0]  # (D, H, W)
        samples[mode] = x
        r = out["samples"][mode] = {"seam": _seam(x, patch), "seconds": time.perf_counter() - t0}
        log(f"  (c) sample {mode}: seam {r['seam']:.3f}, {r['seconds']:.0f} s")

    # The deterministic case: one denoiser pass D(x, sigma) = x + sigma^2 s(x, sigma) on a noisy template.
    source = open_source(
        cfg["data"], patch_size=patch, coords=cfg["coords"], spacing=cfg["spacing"], full_volume=True
    )
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
                    mode=mode,
                    tile_batch=args.tile_batch,
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

    axes = ("sagittal", "coronal", "axial")  # the template is stored (x, y, z), RAS
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out["montage"] = str(
        save_montage(
            [samples[m].clamp(0, 1) for m in (*MODES, WHOLE)],
            args.results_dir / "stitch_modes.png",
            titles=[f"{m} (seam {out['samples'][m]['seam']:.2f})" for m in (*MODES, WHOLE)],
            axis_names=axes,
            vmin=0.0,
            vmax=1.0,
        )
    )
    sigma = max(args.tweedie_sigmas)
    row = out["tweedie"][str(sigma)]
    out["montage_tweedie"] = str(
        save_montage(
            [clean, noisies[sigma].clamp(0, 1)] + [denoised[(sigma, m)].clamp(0, 1) for m in (*MODES, WHOLE)],
            args.results_dir / "stitch_modes_tweedie.png",
            titles=["template", f"noisy, sigma {sigma}"]
            + [f"D {m} (seam {row[m]['seam']:.2f})" for m in (*MODES, WHOLE)],
            axis_names=axes,
            vmin=0.0,
            vmax=1.0,
        )
    )
    return out


# -- tables -------------------------------------------------------------------------------------------
def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def training_table(train: dict[str, Any], sizes: Sequence[int]) -> str:
    s = train["summary"]
    base = s[f"dsm {min(sizes)}^3"]["peak_rss_mib"]
    lines = [
        "| volume | s / step | training voxels/s | RSS at start (MiB) | after data + model (MiB) "
        "| peak RSS (MiB) | peak / smallest |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sorted(sizes):
        r = s[f"dsm {n}^3"]
        lines.append(
            f"| {n}^3 | {r['sec_per_step']:.3f} | {r['voxels_per_s'] / 1e3:.0f} k | {r['rss_start_mib']:.0f} "
            f"| {r['rss_after_setup_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / base:.2f} |"
        )
    e = train.get("estimated")
    if e:
        lines.append(
            f"| {min(sizes)}^3, sigma_max estimated (default) | {e['sec_per_step']:.3f} "
            f"| {e['voxels_per_s'] / 1e3:.0f} k | {e['rss_start_mib']:.0f} | {e['rss_after_setup_mib']:.0f} "
            f"| {e['peak_rss_mib']:.0f} | {e['peak_rss_mib'] / base:.2f} |"
        )
    return "\n".join(lines)


def objectives_table(train: dict[str, Any], small: int) -> str:
    s = train["summary"]
    dsm = s[f"dsm {small}^3"]
    lines = [
        "| objective | s / step | vs DSM | peak RSS (MiB) | vs DSM |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for obj in ("dsm", "ssm-vr", "ssm-fd"):
        r = s.get(f"{obj} {small}^3")
        if r is None:
            continue
        lines.append(
            f"| {obj.upper()} | {r['sec_per_step']:.3f} | {r['sec_per_step'] / dsm['sec_per_step']:.2f}x "
            f"| {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / dsm['peak_rss_mib']:.2f}x |"
        )
    return "\n".join(lines)


def sampling_table(sampling: dict[str, Any]) -> str:
    lines = [
        "| stitching | model calls / step | voxels evaluated / volume | batch shapes seen "
        "| Langevin step (s) | plain pass (s) | step / plain | peak RSS (GiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in sampling.items():
        per_round = ", ".join(f"{v:.2f}" for v in r["ratios"])
        last = r["per_step"][-1]
        lines.append(
            f"| {name} | {last['calls']} | {r['voxel_factor']:.2f} | {last['shapes_so_far']} "
            f"| {r['step_s']:.1f} | {r['plain_s']:.1f} | {r['ratio']:.2f} ({per_round}) "
            f"| {r['peak_rss_mib'] / MIB:.2f} |"
        )
    return "\n".join(lines)


def seam_tables(seams: dict[str, Any]) -> str:
    samples, ref = seams["samples"], seams["samples"][WHOLE]["seam"]
    lines = [
        "| stitching | seam score of the sample (fixed grid) | within 5 % of 1 | / no-tiling reference (5 %) "
        "| sampling time (s) |",
        "| --- | ---: | :---: | ---: | ---: |",
    ]
    for mode, r in samples.items():
        name = "none: whole volume at once (reference)" if mode == WHOLE else mode
        ok, rel = "-", ""
        if mode in ("shift", "blend"):
            ok = _mark(abs(r["seam"] - 1) <= SEAM_TOLERANCE)
            rel = " " + _mark(abs(r["seam"] / ref - 1) <= SEAM_TOLERANCE)
        lines.append(f"| {name} | {r['seam']:.3f} | {ok} | {r['seam'] / ref:.3f}{rel} | {r['seconds']:.0f} |")
    lines.append(f"| (the template itself) | {seams['reference']['template']:.3f} | | | |")
    sigmas = list(seams["tweedie"])
    lines += [
        "",
        "| one denoiser pass D(x, sigma) on the noisy template | "
        + " | ".join(f"sigma {s}: seam (PSNR)" for s in sigmas)
        + " |",
        "| --- |" + " ---: |" * len(sigmas),
    ]
    rows = [("noisy input", lambda t: f"{t['noisy']:.3f}")]
    rows += [(m, lambda t, m=m: f"{t[m]['seam']:.3f} ({t[m]['psnr']:.1f} dB)") for m in MODES]
    rows.append(
        ("none: whole volume at once", lambda t: f"{t[WHOLE]['seam']:.3f} ({t[WHOLE]['psnr']:.1f} dB)")
    )
    rows.append(("shift, at the grid it used", lambda t: f"{t['shift']['seam_own_grid']:.3f}"))
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(seams["tweedie"][s]) for s in sigmas) + " |")
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python scripts/bench_volumes3d.py --threads 1 --json bench_volumes3d.json",
    )
    p.add_argument("--patch", type=int, default=32, help="patch edge for (a), (b), (d)")
    p.add_argument("--batch", type=int, default=4, help="training batch for (a), (d)")
    p.add_argument(
        "--volume-sizes", type=int, nargs="+", default=[64, 256], help="(a) synthetic volume edges"
    )
    p.add_argument("--steps", type=int, default=20, help="(a, d) timed training steps per child")
    p.add_argument("--warmup", type=int, default=3, help="(a, d) untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="(a, d) round-robin repetitions of every child")
    p.add_argument("--sample-size", type=int, default=256, help="(b) volume edge")
    p.add_argument("--sample-rounds", type=int, default=3, help="(b) shift: plain pass + Langevin step pairs")
    p.add_argument("--context-rounds", type=int, default=1, help="(b) blend, fixed: pairs")
    p.add_argument("--sample-modes", nargs="+", default=["shift", "blend", "fixed"], help="(b) which modes")
    p.add_argument("--tile-batch", type=int, default=8, help="(b, c) tiles per model call")
    p.add_argument("--overlap", type=float, default=0.5, help="(b) blend window overlap")
    p.add_argument(
        "--malloc-row",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(b) also shift with glibc's mmap threshold fixed (the RSS growth of changing tile shapes)",
    )
    p.add_argument("--run", type=str, default=None, help="(c) a run directory to reuse (or to train into)")
    p.add_argument("--seam-minutes", type=float, default=4.0, help="(c) training budget when no --run")
    p.add_argument("--seam-train-steps", type=int, default=None, help="(c) train this many steps instead")
    p.add_argument("--seam-spacing", type=float, default=3.0, help="(c) template spacing (mm) when training")
    p.add_argument("--seam-patch", type=int, default=32, help="(c) patch size when training")
    p.add_argument("--seam-levels", type=int, default=40, help="(c) noise levels of the sampling schedule")
    p.add_argument("--seam-steps-each", type=int, default=2, help="(c) Langevin steps per level")
    p.add_argument("--tweedie-sigmas", type=float, nargs="+", default=[0.1, 0.3], help="(c) denoiser pass")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (main process and children); 1 because on a shared CPU a second OpenMP thread "
        "stalls (5-10x slower steps seen under load); use 2 on a quiet 2-core machine",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-training", action="store_true", help="skip (a) and (d)")
    p.add_argument("--skip-objectives", action="store_true", help="skip (d)")
    p.add_argument("--skip-sampling", action="store_true", help="skip (b)")
    p.add_argument("--skip-seams", action="store_true", help="skip (c)")
    p.add_argument(
        "--results-dir", type=Path, default=Path(__file__).resolve().parent / "results", help="pictures"
    )
    p.add_argument("--quick", action="store_true", help="tiny budget: a smoke test, not a measurement")
    p.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    p.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.volume_sizes, args.steps, args.warmup, args.rounds = [40, 48], 2, 1, 1
        args.sample_size, args.sample_rounds, args.context_rounds = 64, 1, 1
        args.seam_train_steps, args.seam_spacing, args.seam_patch = 2, 6.0, 16
        args.seam_levels, args.seam_steps_each, args.tweedie_sigmas = 2, 1, [0.3]
    if min(args.volume_sizes) < args.patch or args.sample_size < args.patch:
        p.error("volumes must be at least one patch per axis")
    if min(args.steps, args.rounds, args.sample_rounds, args.context_rounds, args.seam_levels - 1) < 1:
        p.error("--steps, --rounds, --sample-rounds, --context-rounds must be >= 1, --seam-levels >= 2")
    return args


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict:
    args = parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return {}
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_volumes3d_") as tmp:
            return _run(args, Path(tmp), log)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another process (the smoke test)


def _run(args: argparse.Namespace, tmp: Path, log: Callable[[str], None]) -> dict:
    out: dict = {"machine": describe(args.threads), "args": {k: str(v) for k, v in vars(args).items()}}
    t_start = time.perf_counter()
    if not args.skip_training:
        out["training"] = bench_training(args, tmp, log)
    if not args.skip_sampling:
        out["sampling"] = bench_sampling(args, log)
    if not args.skip_seams:
        out["seams"] = bench_seams(args, tmp, log)
    out["seconds"] = time.perf_counter() - t_start

    m = out["machine"]
    log(
        f"\nMachine: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, {m['threads']} "
        f"thread(s), Python {m['python']}, {m['date']}; load average {m['loadavg']:.1f} at start; "
        f"total {out['seconds']:.0f} s.\n"
    )
    small = min(args.volume_sizes)
    if "training" in out:
        t = out["training"]
        ratio = t["rss_ratio"]
        log(
            f"(a) Training, patch {args.patch}, preset small, batch {args.batch}, bf16 autocast, coordinates,"
            f" DSM, on synthetic smooth NIfTI volumes through open_source/Trainer; {args.steps} timed steps "
            f"after {args.warmup} per child process, medians of {args.rounds} round(s); sigma_max fixed "
            "except in the last row:\n"
        )
        log(training_table(t, args.volume_sizes) + "\n")
        log(
            f"RSS({max(args.volume_sizes)}^3) / RSS({small}^3) = {ratio:.2f} "
            f"(target <= {RSS_RATIO_TARGET}) {_mark(ratio <= RSS_RATIO_TARGET)}\n"
        )
        if any(k.startswith("ssm") for k in t["summary"]):
            log(f"(d) Objectives, same setting ({small}^3 volume), medians of {args.rounds} round(s):\n")
            log(objectives_table(t, small) + "\n")
    if "sampling" in out:
        s = out["sampling"]
        shift = s["shift"]
        n_tiles = args.sample_size**3 // args.patch**3
        log(
            f"(b) Stitched annealed-Langevin sampling of a {args.sample_size}^3 volume, small 3D model"
            f" (fp32, no_grad), tile_batch {args.tile_batch}; plain pass = {n_tiles} tiles of {args.patch}^3"
            f" in batches of {args.tile_batch}; step / plain: median (per round); blend overlap"
            f" {args.overlap}:\n"
        )
        log(sampling_table(s) + "\n")
        rss_ok = shift["peak_rss_mib"] / MIB <= SAMPLE_RSS_TARGET_GIB
        log(
            f"shift: peak RSS {shift['peak_rss_mib'] / MIB:.2f} GiB (target <= {SAMPLE_RSS_TARGET_GIB}) "
            f"{_mark(rss_ok)}; step / plain {shift['ratio']:.2f} (target <= {STEP_RATIO_TARGET}) "
            f"{_mark(shift['ratio'] <= STEP_RATIO_TARGET)}\n"
        )
    if "seams" in out:
        c = out["seams"]
        origin = f"run {c['run']}" if c["run"] and not c["trained_here"] else "trained here"
        log(
            f"(c) Seams: model {origin} ({c['train_steps']} steps), volume {tuple(c['shape'])}, patch "
            f"{c['patch']}, {c['levels']} levels x {c['steps_each']} steps, same seed; seam score at the "
            f"fixed grid (offset 0): 1 without seams on a stationary volume, see the no-tiling reference; "
            f"montages {c['montage']}, {c['montage_tweedie']}:\n"
        )
        log(seam_tables(c) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str))
        log(f"raw numbers written to {args.json}")
    return out


if __name__ == "__main__":
    main()
