"""What ``volscore restore`` does around ``restore_file``: every output checked first, the before/after PNG
and the JSON record."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from volscore.options import RestoreOptions
from volscore.outputs import check_outputs
from volscore.restore.files import default_std_path, restore_file
from volscore.run import run_files

PathLike = str | os.PathLike


def restore_paths(
    options: RestoreOptions,
    input: PathLike,
    output: PathLike,
    png: PathLike | None = None,
    record: PathLike | None = None,
    std_out: PathLike | None = None,
    force: bool = False,
) -> list[str]:
    """Restore one scan; return the lines to print. Writes OUTPUT, the sd map (``n_samples`` > 1), the JSON
    record (default OUTPUT's name + .restore.json) and the optional ``png``, all checked before any work."""
    from volscore.atomic import atomic_write_json

    options.validate()
    src, dst = Path(input), Path(output)
    json_path = Path(record) if record else dst.parent / (dst.name.split(".nii")[0] + ".restore.json")
    std_path = None if options.n_samples == 1 else Path(std_out) if std_out else default_std_path(dst)
    extras = [json_path] + ([Path(png)] if png else []) + ([std_path] if std_path else [])
    inputs = [src, *([Path(options.mask)] if options.mask else []), *run_files(options.run)]
    check_outputs([dst, *extras], inputs=inputs, force=force)
    rec = restore_file(src, dst, options, force=force, std_out=std_path)
    what = (
        f"x{rec['superres']['factor']} along axis {rec['superres']['axis']}"
        if rec["superres"]
        else f"{rec['inpaint']['voxels']} voxels filled in"
    )
    lines = [
        f"{src} -> {dst}  {rec['task']} ({what}), {rec['method']}, {rec['nfe_per_sample']} network "
        f"evaluations x {rec['n_samples']}, {rec['seconds']['total']:.1f} s"
    ]
    if std_path:
        lines.append(f"per-voxel sd of {rec['n_samples']} draws: {std_path}")
    lines += [f"warning: {w}" for w in rec["warnings"]]
    if png:
        before_after_png(src, dst, Path(png), rec, options.volume_index)
        lines.append(f"before/after: {png}")
    atomic_write_json(json_path, rec)
    lines.append(f"record: {json_path}")
    return lines


def before_after_png(src: Path, dst: Path, png: Path, rec: dict, volume_index: int | None = None) -> None:
    """The input (thick slices repeated onto the fine grid) beside the restored volume: for super-resolution
    a slice across the first in-plane axis, so the thick axis lies in the picture; for inpainting the slice
    through the middle of the mask across the last axis."""
    from volscore.data.nifti import load_volume
    from volscore.plots import save_slices

    before, after = load_volume(src, volume_index).data, load_volume(dst).data
    if rec["superres"]:
        axis, factor = rec["superres"]["axis"], rec["superres"]["factor"]
        before = np.repeat(before, factor, axis=axis)
        show = min(a for a in range(3) if a != axis)
        save_slices({"thick slices": before, "restored": after}, png, axis=show)
    else:
        mask = load_volume(rec["inpaint"]["mask"]).data != 0
        index = int(np.round(np.nonzero(mask)[2].mean()))
        save_slices(
            {"input (hole zeroed)": np.where(mask, 0, before), "restored": after}, png, axis=2, index=index
        )
