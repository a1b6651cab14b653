"""The GPU checks behind scripts/gpu_check.sh, one short run on one GPU (under 8 minutes on an H200):

1. ``tests``: ``pytest tests/test_cuda.py tests/test_cuda_ssm.py tests/test_jvp.py`` (fp16 + GradScaler,
   bf16, checkpoints across devices; forward-mode SSM on CUDA against reverse over reverse);
2. ``ddp``: DistributedDataParallel over NCCL. tests/test_train.py's DDP test runs two gloo processes on the
   CPU; NCCL refuses two ranks on one GPU, so with one GPU this is a one-rank NCCL process group whose DDP
   model must give the plain model's gradients (DSM, SSM-VR by both methods: forward-mode through DDP's
   hooks), and with two or more GPUs also that test's comparison (two NCCL ranks against one process
   drawing both shards);
3. ``bench``: ``scripts/bench_perf.py --device cuda`` (fp32, bf16, fp16 + GradScaler; channels-last and
   compiled DSM; SSM-VR exact and forward, FD-SSM; MONAI's DiffusionModelUNet);
4. ``stitch``: one stitched sampling step on a 256^3 volume (``StitchedScore``, the small 3D model, shift
   stitching, float32 and no autograd as ``volscore sample`` runs) and its peak GPU memory
   (``torch.cuda.max_memory_allocated``) per tile batch.

    .venv/bin/python scripts/gpu_check.py --out runs/gpu_check

writes ``gpu_check.json`` into ``--out``: one entry per check with its status, numbers and seconds. Without a
CUDA device it writes ``{"status": "no CUDA device", ...}`` and exits 0; otherwise it exits 1 if a check
failed. ``stitch`` and ``ddp`` also run alone (``--only``), on the CPU too (``--device cpu``, small sizes),
which is how tests/test_gpu_check.py checks them without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("tests", "ddp", "bench", "stitch")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command, echoing its output into ours (the log); its return code, output tail and seconds."""
    start = time.monotonic()
    print("$", " ".join(cmd), flush=True)
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        rc, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        parts = [
            t.decode(errors="replace") if isinstance(t, bytes) else t or "" for t in (e.stdout, e.stderr)
        ]
        text = "".join(parts) + f"\ntimed out after {timeout:.0f} s"
    print(text, flush=True)
    return {"rc": rc, "ok": rc == 0, "seconds": round(time.monotonic() - start, 1), "tail": _tail(text)}


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


# -- stitched sampling step -------------------------------------------------------------------------------


def stitch_check(size: int, tile_batches: list[int], device: str) -> dict[str, Any]:
    """One Langevin step x + g s(x) + sqrt(2 g) z on a (1, 1, size^3) volume with the stitched score of the
    small 3D model: seconds and peak allocated memory per tile batch (GPU; None on the CPU)."""
    import torch

    from volscore.nets import build_model
    from volscore.sampling.stitch import StitchedScore

    torch.manual_seed(0)
    model = build_model("small", 3, coord_channels=True).to(device).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, size, size, size, generator=g).to(device)
    sigma, step = 0.5, 1e-3
    rows = {}
    for tile_batch in tile_batches:
        score = StitchedScore(model, 32, stitch="shift", tile_batch=tile_batch, coords=True, generator=g)
        with torch.no_grad():  # warm-up (cuDNN's algorithm choice, allocator) outside the timing
            score(x[..., :64, :64, :64], sigma)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        with torch.no_grad():
            z = torch.randn(x.shape, generator=g).to(device)
            y = x + step * score(x, sigma) + (2 * step) ** 0.5 * z
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        assert torch.isfinite(y).all(), "non-finite stitched step"
        row: dict[str, Any] = {"seconds": round(seconds, 3), "offset": list(score.offset or ())}
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated(device)
            row.update(peak_mib=round(peak / 2**20, 1), above_inputs_mib=round((peak - base) / 2**20, 1))
        rows[str(tile_batch)] = row
        print(f"stitched step {size}^3, tile batch {tile_batch}: {row}", flush=True)
        del y, z
    return {"size": size, "patch": 32, "stitch": "shift", "dtype": "float32", "tile_batch": rows}


# -- DDP over NCCL ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_one_rank_check(backend: str, device: str) -> dict[str, Any]:
    """A one-rank process group: DDP-wrapped and plain copies of the small 3D model must give the same loss
    and gradients for DSM and SSM-VR (exact and forward mode) on one batch."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from volscore.nets import build_model
    from volscore.train import training_loss

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = build_model("small", 3, coord_channels=True).to(device)
        with torch.no_grad():  # conv_out starts at zero: give every parameter a gradient
            for p in plain.parameters():
                p.add_(0.02 * torch.randn_like(p))
        twin = build_model("small", 3, coord_channels=True).to(device)
        twin.load_state_dict(plain.state_dict())
        ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
        wrapped = DistributedDataParallel(twin, device_ids=ids)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(2, 1, 16, 16, 16, generator=g).to(device)
        coords = (torch.rand(2, 3, 16, 16, 16, generator=g) * 2 - 1).to(device)
        sigma = torch.tensor([0.1, 2.0]).to(device)
        rows = {}
        for objective, method in (("dsm", "auto"), ("ssm-vr", "exact"), ("ssm-vr", "forward")):
            grads, losses = [], []
            for net, module in ((plain, plain), (wrapped, twin)):
                module.zero_grad(set_to_none=True)
                gen = torch.Generator().manual_seed(2)
                loss = training_loss(net, objective, x, coords, sigma, gen, ssm_method=method).mean()
                loss.backward()
                losses.append(float(loss.detach()))
                grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
            err = float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())
            rows[f"{objective} {method}"] = {"loss": losses[0], "relative_gradient_difference": err}
            print(
                f"DDP ({backend}, one rank) {objective} {method}: gradient difference {err:.2e}", flush=True
            )
        ok = all(r["relative_gradient_difference"] < 1e-5 for r in rows.values())
        return {"backend": backend, "world_size": 1, "ok": ok, "objectives": rows}
    finally:
        dist.destroy_process_group()


def ddp_two_rank_check(work: Path, timeout: float) -> dict[str, Any]:
    """tests/test_train.py's DDP comparison with NCCL: two GPUs, torchrun, against one process drawing both
    shards. Reported as the largest weight difference; passes below 1e-3 (cuDNN picks its algorithms per
    process and bf16 rounds them differently; gloo on the CPU gives exactly equal weights)."""
    import torch

    common = ["train", "--data", "mnist", "--steps", "3", "--preset", "tiny", "--batch-size", "2",
              "--objective", "ssm-vr", "--sigma-max", "5", "--num-sigmas", "4", "--amp", "bf16",
              "--device", "cuda"]  # fmt: skip
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "volscore", *common, "--out", str(work / "ddp2")]  # fmt: skip
    one = [sys.executable, "-m", "volscore", *common, "--out", str(work / "one2"), "--data-shards", "2"]
    runs = [_run(cmd, timeout / 2, _env()) for cmd in (ddp, one)]
    if not all(r["ok"] for r in runs):
        return {"ok": False, "runs": runs}
    a = torch.load(work / "ddp2" / "checkpoint.pt", weights_only=True, map_location="cpu")
    b = torch.load(work / "one2" / "checkpoint.pt", weights_only=True, map_location="cpu")
    diff = max(float((v.float() - b["model"][k].float()).abs().max()) for k, v in a["model"].items())
    return {"ok": diff < 1e-3, "max_weight_difference": diff, "runs": runs}


# -- the whole check ----------------------------------------------------------------------------------------


def _device_info() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
    }


def run_all(work: Path, budget: float) -> dict[str, Any]:
    """Every check in turn, each in its own process (a fresh CUDA context and memory counter), the bench
    last with what is left of ``budget`` seconds; intermediate files go to ``work``."""
    start = time.monotonic()
    try:
        info = _device_info()
    except ImportError as e:
        return {"status": f"error: torch does not import ({e})", "device": None}
    report: dict[str, Any] = {"status": "no CUDA device" if info is None else "running", "device": info}
    if info is None:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check.")
        return report
    checks: dict[str, Any] = {}
    report["checks"] = checks
    me = [sys.executable, str(Path(__file__).resolve())]

    def left() -> float:
        return max(30.0, budget - (time.monotonic() - start))

    def merge(name: str, path: Path) -> None:
        if path.exists():
            ok = checks[name]["ok"]
            checks[name].update(json.loads(path.read_text()))
            checks[name]["ok"] = ok and checks[name].get("ok", True)

    tests = ["tests/test_cuda.py", "tests/test_cuda_ssm.py", "tests/test_jvp.py"]
    checks["tests"] = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], 150, _env()
    )
    checks["ddp"] = _run([*me, "--only", "ddp", "--json", str(work / "ddp.json")], 90, _env())
    merge("ddp", work / "ddp.json")
    if info["gpus"] >= 2:
        checks["ddp_two_ranks"] = ddp_two_rank_check(work, min(200.0, left()))
    checks["stitch"] = _run([*me, "--only", "stitch", "--json", str(work / "stitch.json")], 90, _env())
    merge("stitch", work / "stitch.json")
    bench = work / "bench_perf_cuda.json"
    bench_cmd = [
        sys.executable,
        "scripts/bench_perf.py",
        "--device",
        "cuda",
        "--steps",
        "10",
        "--rounds",
        "2",
    ]
    checks["bench"] = _run([*bench_cmd, "--json", str(bench)], min(300.0, left()), _env())
    if bench.exists():
        results = json.loads(bench.read_text())["results"]
        checks["bench"]["report"] = json.loads(bench.read_text())
        checks["bench"]["ssm_vr_over_dsm"] = {
            dtype: {
                method: results[f"volscore SSM-VR{suffix} {dtype}"]["sec_per_step"]
                / results[f"volscore DSM {dtype}"]["sec_per_step"]
                for method, suffix in (("exact", ""), ("forward", " forward"))
            }
            for dtype in ("fp32", "bf16", "fp16")
            if f"volscore DSM {dtype}" in results
        }
    failed = [name for name, c in checks.items() if not c.get("ok")]
    report["status"] = "failed: " + ", ".join(failed) if failed else "ok"
    report["seconds"] = round(time.monotonic() - start, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all checks (bench gets the rest)")
    p.add_argument("--only", choices=("ddp", "stitch"), help="run one check in this process")
    p.add_argument("--json", type=Path, help="--only: where to write its result")
    p.add_argument("--device", default="cuda", help="--only: the device (cpu for a smoke test)")
    p.add_argument("--size", type=int, default=256, help="--only stitch: volume edge")
    p.add_argument("--tile-batch", type=int, nargs="+", default=[8, 32], help="--only stitch: tile batches")
    args = p.parse_args(argv)

    if args.only is not None:
        if args.only == "stitch":
            result = stitch_check(args.size, args.tile_batch, args.device)
        else:
            result = ddp_one_rank_check("nccl" if args.device.startswith("cuda") else "gloo", args.device)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if result.get("ok", True) else 1

    import tempfile

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        report = run_all(Path(work), args.budget)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {report['status']}; {args.out / 'gpu_check.json'}", flush=True)
    return 0 if report["status"] in ("ok", "no CUDA device") else 1


if __name__ == "__main__":
    sys.exit(main())
