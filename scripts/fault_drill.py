"""Fault drill: training killed with SIGKILL (also in the middle of writing a checkpoint) and resumed ends
with the same weights as a run that was never interrupted.

    .venv/bin/python scripts/fault_drill.py --kills 8 --out runs/fault_drill

1. Reference: ``--steps`` training steps (tiny 2D preset on MNIST, DSM, bf16 autocast, a checkpoint every
   step so that most kills land while a checkpoint is being written), one thread, in a child process
   (``volscore.recipes.train_or_resume``, as ``volscore train`` does).
2. Drill: the same configuration in a child process SIGKILLed at a random moment after its first
   checkpoint, then restarted (``train_or_resume`` resumes the run in its folder); repeated ``--kills``
   times, then run to the end. After every kill the checkpoint on disk
   must load (``weights_only=True``) and hold a step no later than the kill.
3. The final checkpoint's model, EMA, optimizer state and step must equal the reference's bit for bit.
Also counted: temporary files a kill during a save leaves next to the checkpoint (``.checkpoint.*.tmp.pt``);
a resumed run deletes them (``remove_stale_temporaries``), so after the last resume there should be none.

``--signal TERM`` (or ``INT``) drills the polite stop instead: checkpoints are written only when a signal
comes (``ckpt_every`` beyond the run), the child is sent SIGTERM (SIGINT) at a random moment, and each time
it must finish its step, save, and report the shell's status for that signal (143, 130:
``TrainingInterrupted``);
the checkpoint must hold more steps than the one before. A signal that lands before the training loop has
installed its handler (during start-up) kills the child with nothing to lose; such starts are counted apart.

Exit code 0 when every check passes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402


def _config(out: Path, steps: int, ckpt_every: int = 1):
    from volscore.config import TrainConfig

    return TrainConfig(
        data=["mnist"],
        out=str(out),
        preset="tiny",
        objective="dsm",
        steps=steps,
        ckpt_every=ckpt_every,
        batch_size=16,
        amp="bf16",
        seed=3,
        device="cpu",
    )


def _start(out: Path, steps: int) -> harness.Child:
    """Train (or resume) the drill's run in a child process, one thread, output discarded."""
    return harness.start_child(harness.train_config, _config(out, steps), threads=1, log=os.devnull)


def _train_reporting_interrupts(cfg: Any) -> dict[str, Any]:
    """Train or resume ``cfg``; a stop signal's ``TrainingInterrupted`` is reported, not raised."""
    from volscore.recipes import train_or_resume
    from volscore.train import TrainingInterrupted

    try:
        train_or_resume(cfg, say=lambda _: None)
    except TrainingInterrupted as e:
        return {"status": int(getattr(e, "exit_status", 0))}
    return {"status": 0}


def _signal_drill(args: argparse.Namespace, drill: Path, problems: list[str]) -> int:
    """Send SIGTERM/SIGINT ``args.kills`` times; check each stop saved its progress; return the count."""
    import signal

    from volscore.checkpoint import CHECKPOINT_NAME, load_checkpoint

    sig = getattr(signal, f"SIG{args.signal}")
    rng = random.Random(args.seed)
    ckpt, before, sent, early = drill / CHECKPOINT_NAME, 0, 0, 0
    while sent < args.kills:
        child = harness.start_child(
            _train_reporting_interrupts, _config(drill, args.steps, ckpt_every=10**9), threads=1,
            log=os.devnull,
        )  # fmt: skip
        time.sleep(rng.uniform(4.0, 8.0))
        if not child.process.is_alive():
            child.result()
            break
        os.kill(child.process.pid, sig)
        sent += 1
        try:
            status = child.result()["status"]
        except harness.ChildError:
            early += 1
            print(f"signal {sent}: arrived during start-up (no handler yet): nothing to save")
            continue
        if status != 128 + sig:
            problems.append(f"signal {sent}: status {status}, expected {128 + sig}")
        step = load_checkpoint(ckpt)["step"] if ckpt.exists() else 0
        if step <= before:
            problems.append(
                f"signal {sent}: checkpoint at step {step}, no progress saved since step {before}"
            )
        print(f"signal {sent}: status {status}, checkpoint loads, step {step}")
        before = step
    print(f"{sent} SIG{args.signal} sent, {early} during start-up")
    return sent


def _tensors_equal(a: Any, b: Any, where: str, problems: list[str]) -> None:
    import torch

    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)):
            problems.append(where)
    elif isinstance(a, dict):
        if set(a) != set(b):
            problems.append(f"{where}: keys differ")
        for k in a:
            if k in b:
                _tensors_equal(a[k], b[k], f"{where}.{k}", problems)
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _tensors_equal(x, y, f"{where}[{i}]", problems)
    elif a != b:
        problems.append(f"{where}: {a!r} != {b!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--out", default="runs/fault_drill")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    p.add_argument("--signal", choices=("KILL", "TERM", "INT"), default="KILL", help="how to stop the child")
    args = p.parse_args(argv)

    from volscore.checkpoint import CHECKPOINT_NAME, load_checkpoint

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    ref, drill = out / "reference", out / "drill"
    t0 = time.monotonic()
    _start(ref, args.steps).result()
    ref_seconds = time.monotonic() - t0
    print(f"reference: {args.steps} steps in {ref_seconds:.0f} s")

    rng = random.Random(args.seed)
    ckpt = drill / CHECKPOINT_NAME
    problems: list[str] = []
    kills = 0
    if args.signal != "KILL":
        kills = _signal_drill(args, drill, problems)
    while args.signal == "KILL" and kills < args.kills:
        child = _start(drill, args.steps)
        before = load_checkpoint(ckpt)["step"] if ckpt.exists() else 0
        while not ckpt.exists() or load_checkpoint(ckpt)["step"] <= before:  # progress since the last start
            if not child.process.is_alive():
                break
            time.sleep(0.05)
        if not child.process.is_alive():
            child.result()  # finished before we could kill it: the run is complete (or its error is raised)
            break
        time.sleep(rng.uniform(0.0, 0.5))
        child.kill()
        kills += 1
        try:
            step = load_checkpoint(ckpt)["step"]
            print(f"kill {kills}: checkpoint loads, step {step}")
        except Exception as exc:  # the drill's point: report, do not stop
            problems.append(f"kill {kills}: checkpoint unreadable: {exc}")
            print(problems[-1])
            break
    _start(drill, args.steps).result()
    a, b = load_checkpoint(ref / CHECKPOINT_NAME), load_checkpoint(ckpt)
    for key in ("step", "model", "ema", "optimizer"):
        _tensors_equal(a[key], b[key], key, problems)
    stale = sorted(x.name for x in drill.glob(".checkpoint.*"))
    print(
        f"{kills} kills; final step {b['step']} (reference {a['step']}); stale temporary files: {len(stale)}"
    )
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems[:20]))
        return 1
    print("resumed run equals the uninterrupted run bit for bit (model, EMA, optimizer, step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
