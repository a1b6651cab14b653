"""Models bundled with volscore: weights (``NAME.pt``) beside their cards (``NAME.json``) in this folder.

Each was produced by volscore's own training (``scripts/train_pretrained.py NAME`` reproduces it) and is
stored compactly: the EMA weights in float16 with the arguments that rebuild the model, its training
configuration and data description, no optimizer. The card holds the exact command, steps, minutes, machine,
date, data, the sha256 of the weights file and the figures measured on data the model never saw. Loading
checks the hash and reads the weights with ``torch.load(..., weights_only=True)``. Use a model wherever a
run is accepted as ``pretrained:NAME`` (``volscore sample --run pretrained:mni152-prior``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from volscore.checkpoint import CheckpointError, load_checkpoint

FOLDER = Path(__file__).resolve().parent


def models_dir() -> Path:
    """The folder of bundled models ($VOLSCORE_PRETRAINED overrides it, e.g. for tests)."""
    override = os.environ.get("VOLSCORE_PRETRAINED")
    return Path(override).expanduser() if override else FOLDER


def list_models() -> list[str]:
    """Names of the bundled models (those with a card)."""
    return sorted(p.stem for p in models_dir().glob("*.json"))


def load_card(name: str) -> dict[str, Any]:
    """The model card of ``name``; a clear error naming the known models for an unknown one."""
    path = models_dir() / f"{name}.json"
    if not path.is_file():
        known = ", ".join(list_models()) or "none"
        raise CheckpointError(
            f"pretrained:{name}: no such bundled model (bundled: {known}; see `volscore models`)"
        )
    try:
        card = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: model card is not valid JSON ({e})") from e
    if not isinstance(card, dict) or "sha256" not in card or "weights" not in card:
        raise CheckpointError(f"{path}: model card without weights file name or sha256")
    return card


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(name: str) -> Path:
    """The weights file of ``name``, after checking it against the sha256 on its card."""
    card = load_card(name)
    path = models_dir() / str(card["weights"])
    if not path.is_file():
        raise CheckpointError(f"pretrained:{name}: weights file {path} is missing")
    found = sha256(path)
    if found != card["sha256"]:
        raise CheckpointError(
            f"pretrained:{name}: {path} does not match its card (sha256 {found[:16]}..., card says "
            f"{str(card['sha256'])[:16]}...): the file was modified or damaged; reinstall volscore"
        )
    return path


def load_pretrained_state(name: str, map_location: Any = "cpu") -> dict[str, Any]:
    """A bundled model's checkpoint dict (hash-checked, ``weights_only=True``), for ``Run.from_state``."""
    state = load_checkpoint(weights_path(name), map_location=map_location)
    state.setdefault("data", {})["pretrained"] = name
    return state


def export_weights(run_dir: str | os.PathLike, weights: str | os.PathLike) -> int:
    """Write a run's EMA weights in float16 with what rebuilds and describes the model (arguments, training
    configuration, data description, step), no optimizer: a bundled model's weights file. Returns its size.
    float16 is harmless here: the measured figures on each card come from the exported file itself."""
    import torch

    from volscore.atomic import atomic_write

    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    slim = {
        "model": {k: v.half() if v.is_floating_point() else v for k, v in ema.items()},
        "model_args": state["model_args"],
        "config": state["config"],
        "data": state["data"],
        "step": state["step"],
    }
    atomic_write(Path(weights), lambda tmp: torch.save(slim, tmp))
    return Path(weights).stat().st_size


def describe(name: str) -> str:
    """A few lines about a bundled model for ``volscore models``."""
    card = load_card(name)
    lines = [f"pretrained:{name}  {card.get('summary', '')}".rstrip()]
    for key in ("command", "steps", "minutes", "machine", "date", "data", "parameters", "size_bytes"):
        if key in card:
            lines.append(f"  {key}: {card[key]}")
    for key, value in (card.get("figures") or {}).items():
        lines.append(f"  {key}: {value}")
    lines.append(f"  sha256: {card['sha256']}")
    return "\n".join(lines)
