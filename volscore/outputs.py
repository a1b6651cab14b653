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
                raise OutputError(f"{out}: refusing to write over the input {src}")
        for other in outs[:i]:
            if _same(out, other):
                raise OutputError(f"{out}: given twice as an output ({other})")
        if out.is_dir():
            raise OutputError(f"{out}: is a folder, expected a file name")
        if (out.exists() or out.is_symlink()) and not force:
            raise FileExistsError(f"{out}: exists; pass --force to replace it")
    return outs
