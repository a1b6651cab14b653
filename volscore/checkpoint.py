"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with weights_only=True.

A checkpoint holds the model, EMA, optimizer and scaler state dicts, the step, the RNG states and the
arguments that rebuild the model; no pickled classes, so ``torch.load(..., weights_only=True)`` reads
it and a file that would need arbitrary code to unpickle is refused.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from volscore.atomic import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupted, unsafe or for another model."""


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a process killed while saving ``path`` left beside it.

    ``atomic_write`` names them ``.<stem>.<random>.tmp<suffix>``; they were never renamed into place, so
    nothing refers to them. Call only when no other process is writing this checkpoint.
    """
    p = Path(path)
    stale = sorted(p.parent.glob(f".{p.stem}.*.tmp{p.suffix}"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a kill mid-write leaves the previous file intact."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; every failure names the file and the problem."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no checkpoint at this path")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{p}: refused: the file holds objects that safe (weights_only) loading does not allow; "
            f"it may run code when unpickled, so volscore will not open it ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a readable checkpoint (corrupted or truncated?): {e}") from e
    if not isinstance(state, dict) or "model" not in state or "model_args" not in state:
        raise CheckpointError(f"{p}: not a volscore checkpoint (no model state or model arguments)")
    return state


def check_finite(path: str | os.PathLike, tensors: dict[str, Any], what: str) -> None:
    """Refuse weights holding NaN or Inf, naming the tensors: every output of such a model is non-finite
    (a run that diverged, or a damaged file), which would otherwise surface only as NaN samples."""
    bad = [
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{path}: non-finite {what} (NaN or Inf) in {', '.join(bad[:3])}{more}; the run diverged or the "
            "file is damaged: use an earlier checkpoint or train again"
        )


def check_model_args(path: str | os.PathLike, expected: dict[str, Any], found: dict[str, Any]) -> None:
    """Refuse a checkpoint whose model arguments differ from the run's, naming each mismatch."""
    diffs = _diff(expected, found)
    if diffs:
        raise CheckpointError(f"{path}: checkpoint is for a different model: " + "; ".join(diffs))


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if a != b:
        return [f"{prefix.rstrip('.')}: run has {a!r}, checkpoint has {b!r}"]
    return []
