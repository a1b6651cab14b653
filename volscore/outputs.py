"""The one output guard: every file a command writes is checked here, before any work is done.

An output is refused if it is one of the command's inputs (also through symlinks, hard links or a name
that differs only in case), if two outputs are the same file, or if it exists and ``force`` is not given.
Checking first means a refusal costs nothing and leaves every file as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class OutputError(ValueError):
    """An output path that would destroy an input or another output."""


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    # Compare names case-insensitively: on macOS and Windows file systems SCAN.nii and scan.nii are one file.
    return str(a.resolve()).casefold() == str(b.resolve()).casefold()


def check_outputs(
    outputs: Iterable[str | os.PathLike],
    inputs: Iterable[str | os.PathLike] = (),
    force: bool = False,
) -> list[Path]:
    """Refuse outputs that are inputs or each other, or that exist without ``force``; return them as Paths."""
    outs = [Path(o).expanduser() for o in outputs]
    ins = [Path(i).expanduser() for i in inputs]
    for i, out in enumerate(outs):
        for src in ins:
            if _same(out, src):
                raise OutputError(f"{out}: refusing to overwrite the input {src}")
        for other in outs[:i]:
            if _same(out, other):
                raise OutputError(f"{out}: given twice as an output ({other})")
        if out.is_dir():
            raise OutputError(f"{out}: is a folder, expected a file name")
        if (out.exists() or out.is_symlink()) and not force:
            raise FileExistsError(f"{out}: exists; pass --force to replace it")
    return outs


RUN_FILES = ("config.json", "checkpoint.pt", "metrics.csv", "loss.png")


def check_run_folder(path: str | os.PathLike) -> Path:
    """A new run may go into a missing or empty folder, or one holding only a run's own files (a run that
    stopped before its first checkpoint); any other folder is refused, so no file of the user's is lost."""
    import json

    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; give a new folder for the run")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    config = out / "config.json"
    try:
        ours = {"config", "model_args"} <= set(json.loads(config.read_text()))
    except (OSError, ValueError, TypeError):
        ours = False
    others = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.startswith("."))
    if not ours or others:
        listed = ", ".join(others[:5]) or "config.json of something else"
        raise OutputError(f"{out}: not an empty folder or a volscore run (holds {listed}); give a new --out")
    return out
