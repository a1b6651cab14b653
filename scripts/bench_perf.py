"""Training-step performance of volscore's 3D score U-Net against MONAI's DiffusionModelUNet, in one process.

    .venv/bin/python scripts/bench_perf.py --threads 2 --json bench_perf.json
    .venv/bin/python scripts/bench_perf.py --device cuda --json bench_perf_cuda.json

Setting: patch 32^3, batch 4, one image channel, Adam, forward + backward + optimizer step; fp32 and
bf16 autocast (CPU: bf16 is what ``--amp auto`` picks), and on CUDA also fp16 autocast with a GradScaler
(``--amp fp16``). Models:
- volscore: ``build_model("small", 3, coord_channels=True)`` trained with DSM (``training_loss``, the
  trainer's own loss: EDM preconditioning, sigma^2 weighting), and with SSM-VR (v^T J v by reverse over
  reverse, ``ssm_method="exact"``, and by forward-mode AD, ``"forward"``) and FD-SSM on the same model;
- MONAI: ``DiffusionModelUNet(spatial_dims=3)`` with no attention, one residual block per level and its
  channels chosen so that its parameter count is closest to volscore's (reported), trained the way MONAI's
  tutorials do (epsilon-prediction MSE at a random timestep).
The two run alternately (``--rounds``), so both see the same machine load; medians are reported.
The DSM step also runs with the trainer's two switches, ``--channels-last`` (weights in channels-last-3d
memory format) and ``--compile`` (``torch.compile``, inductor; compiled during the warm-up), to decide
whether either should be on by default.
FLOPs of a training step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matrix products, forward and backward); achieved FLOP/s are set against a measured conv3d peak: the best
of a few large 3x3x3 convolutions (64 -> 64 channels at 32^3, batch 4, forward only) in the same dtype.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

PATCH, BATCH = 32, 4


def _count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _monai_unet(channels: tuple[int, int, int]) -> Any:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        num_res_blocks=1,
        channels=channels,
        attention_levels=(False, False, False),
        norm_num_groups=8,
    )


def _matched_monai(target: int) -> tuple[Any, tuple[int, int, int]]:
    """The DiffusionModelUNet (three levels, widths c, 2c, 4c or c, 2c, 2c) nearest ``target`` parameters."""
    best = None
    for c in (8, 16, 24, 32):
        for mult in ((1, 2, 4), (1, 2, 2)):
            ch = tuple(c * m for m in mult)
            n = _count(_monai_unet(ch))
            if best is None or abs(n - target) < abs(best[0] - target):
                best = (n, ch)
    assert best is not None
    return _monai_unet(best[1]), best[1]


# A step runs under the dtype's autocast; it takes the dtype to know whether to scale its loss (fp16).
Step = Callable[[str], None]


def _backward_and_step(loss: Any, opt: Any, scaler: Any, dtype: str) -> None:
    """Backward and Adam step; fp16 goes through the GradScaler as ``volscore train --amp fp16`` does."""
    if dtype == "fp16":
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


def _volscore_step(
    objective: str,
    channels_last: bool = False,
    compile: bool = False,
    ssm_method: str = "auto",
    device: str = "cpu",
) -> tuple[Any, Step]:
    import torch

    from volscore.nets import build_model
    from volscore.train import training_loss

    torch.manual_seed(0)
    model = build_model("small", 3, coord_channels=True).to(device)
    if channels_last:  # as ``volscore train --channels-last`` does
        model = model.to(memory_format=torch.channels_last_3d)
    net = torch.compile(model) if compile else model  # as ``volscore train --compile`` does
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, PATCH, PATCH, PATCH, generator=g).to(device)
    coords = (torch.rand(BATCH, 3, PATCH, PATCH, PATCH, generator=g) * 2 - 1).to(device)
    sigma = torch.exp(torch.empty(BATCH).uniform_(-4, 2, generator=g)).to(device)

    def step(dtype: str) -> None:
        opt.zero_grad(set_to_none=True)
        loss = training_loss(net, objective, x, coords, sigma, g, ssm_method=ssm_method).float().mean()
        _backward_and_step(loss, opt, scaler, dtype)

    return model, step


def _monai_step(model: Any, device: str = "cpu") -> Step:
    import torch
    import torch.nn.functional as F

    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, PATCH, PATCH, PATCH, generator=g).to(device)

    def step(dtype: str) -> None:
        opt.zero_grad(set_to_none=True)
        noise = torch.randn(x.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (BATCH,), generator=g).to(device)
        loss = F.mse_loss(model(x + noise, t).float(), noise)
        _backward_and_step(loss, opt, scaler, dtype)

    return step


def _autocast(dtype: str, device: str = "cpu"):
    import contextlib

    import torch

    if dtype in ("bf16", "fp16"):
        kind = torch.device(device).type
        return torch.autocast(kind, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)
    return contextlib.nullcontext()


def _sync(device: str) -> None:
    """Wait for queued GPU work, so the clock measures it (CUDA runs asynchronously)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _time(step: Step, dtype: str, n: int, device: str = "cpu") -> list[float]:
    times = []
    for _ in range(n):
        _sync(device)
        t = time.perf_counter()
        with _autocast(dtype, device):
            step(dtype)
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def _flops(step: Step, dtype: str, device: str = "cpu") -> int | None:
    """FLOPs of one step, or None where the counter cannot follow it (its hooks refuse the double
    backward of SSM, torch 2.13: "A leaf node was passed to _will_engine_execute_node")."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with counter, _autocast(dtype, device):
            step(dtype)
    except RuntimeError:
        return None
    return int(counter.get_total_flops())


def _conv_peak(dtype: str, repeats: int = 5, device: str = "cpu") -> float:
    """FLOP/s of the best of ``repeats`` large 3x3x3 convolutions (forward): the machine's conv3d peak."""
    import torch

    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).to(device)
    x = torch.randn(BATCH, 64, PATCH, PATCH, PATCH, generator=g).to(device)
    flops = 2 * 64 * 64 * 27 * BATCH * PATCH**3
    best = float("inf")
    with torch.no_grad(), _autocast(dtype, device):
        conv(x)
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            conv(x)
            _sync(device)
            best = min(best, time.perf_counter() - t)
    return flops / best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_flags(p, threads=2, seed=False)
    p.add_argument("--steps", type=int, default=8, help="timed steps per model, dtype and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--dtypes", nargs="+", choices=("fp32", "bf16", "fp16"), help="default: fp32 bf16, and fp16 on CUDA"
    )
    args = p.parse_args(argv)
    return harness.run_bench("bench_perf", args, lambda _: measure(args), report)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA device here")
    dtypes = args.dtypes or (["fp32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "bf16"])
    if "fp16" in dtypes and not device.startswith("cuda"):
        raise SystemExit("fp16 autocast needs --device cuda (as volscore train --amp fp16)")
    vs_model, vs_dsm = _volscore_step("dsm", device=device)
    monai_model, channels = _matched_monai(_count(vs_model))
    steps: dict[str, Step] = {
        "volscore DSM": vs_dsm,
        "MONAI DiffusionModelUNet": _monai_step(monai_model, device),
        "volscore SSM-VR": _volscore_step("ssm-vr", ssm_method="exact", device=device)[1],
        "volscore SSM-VR forward": _volscore_step("ssm-vr", ssm_method="forward", device=device)[1],
        "volscore FD-SSM": _volscore_step("ssm-fd", device=device)[1],
        "volscore DSM channels-last": _volscore_step("dsm", channels_last=True, device=device)[1],
        "volscore DSM compiled": _volscore_step("dsm", compile=True, device=device)[1],
    }
    same_flops = {"volscore DSM channels-last": "volscore DSM", "volscore DSM compiled": "volscore DSM"}
    result: dict[str, Any] = {
        "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "dtypes": dtypes,
        "params": {"volscore": _count(vs_model), "monai": _count(monai_model), "monai_channels": channels},
        "results": {},
    }
    n = result["params"]
    print(f"parameters: volscore {n['volscore']:,}, MONAI {n['monai']:,} (channels {channels})")
    for dtype in dtypes:
        peak = _conv_peak(dtype, device=device)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for step in steps.values():  # warm-up (oneDNN primitive creation; compilation per dtype)
            _time(step, dtype, 2, device)
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name] += _time(step, dtype, args.steps, device)
        for name, step in steps.items():
            sec = statistics.median(times[name])
            # The counter sees no ops inside a compiled graph: the variants do the plain step's FLOPs.
            flops = (
                result["results"][f"{same_flops[name]} {dtype}"]["flops_per_step"]
                if name in same_flops
                else _flops(step, dtype, device)
            )
            row = {
                "sec_per_step": sec,
                "voxels_per_s": BATCH * PATCH**3 / sec,
                "flops_per_step": flops,
                "flops_per_s": None if flops is None else flops / sec,
                "fraction_of_conv_peak": None if flops is None else flops / sec / peak,
            }
            result["results"][f"{name} {dtype}"] = row
            counted = (
                "FLOPs not countable"
                if flops is None
                else f"{flops / 1e9:6.1f} GFLOP  {flops / sec / 1e9:6.1f} GFLOP/s  "
                f"{100 * flops / sec / peak:5.1f} % of conv peak {peak / 1e9:.1f} GFLOP/s"
            )
            speed = f"{sec:7.3f} s/step  {BATCH * PATCH**3 / sec / 1e3:7.1f} k voxels/s"
            print(f"{dtype} {name:<27} {speed}  {counted}", flush=True)
        result["results"][f"conv3d peak {dtype}"] = {"flops_per_s": peak}
    return result


def report(out: dict[str, Any]) -> None:
    r = out["results"]
    names = [k.removesuffix(" fp32") for k in r if k.endswith(" fp32") and not k.startswith("conv3d")]
    for dtype in out.get("dtypes", ["fp32", "bf16"]):
        sec = {name: r[f"{name} {dtype}"]["sec_per_step"] for name in names}
        dsm = sec["volscore DSM"]
        print(
            f"{dtype}: volscore / MONAI voxels/s {sec['MONAI DiffusionModelUNet'] / dsm:.2f}x; "
            f"SSM-VR / DSM {sec['volscore SSM-VR'] / dsm:.2f}x (forward-mode "
            f"{sec['volscore SSM-VR forward'] / dsm:.2f}x); "
            f"FD-SSM / DSM {sec['volscore FD-SSM'] / dsm:.2f}x; "
            f"channels-last / plain {dsm / sec['volscore DSM channels-last']:.2f}x speed; "
            f"compiled / plain {dsm / sec['volscore DSM compiled']:.2f}x speed"
        )


if __name__ == "__main__":
    main()
