"""What ``volscore denoise`` does around ``denoise_file`` and ``denoise_folder``: the two argument forms
(INPUT OUTPUT, or -i IN_DIR -o OUT_DIR), the before/after PNG and the JSON record, all checked first."""

from __future__ import annotations

import os
from pathlib import Path

from volscore.denoise.files import denoise_file, denoise_folder
from volscore.options import DenoiseOptions
from volscore.outputs import check_outputs
from volscore.run import run_files

PathLike = str | os.PathLike


def _sigma_text(record: dict) -> str:
    s = record["sigma"]
    return f"sigma {s['input_units']:.4g} ({s['source']}; {s['model_units']:.4g} in model units)"


def denoise_paths(
    options: DenoiseOptions,
    input: PathLike | None = None,
    output: PathLike | None = None,
    in_dir: PathLike | None = None,
    out_dir: PathLike | None = None,
    png: PathLike | None = None,
    record: PathLike | None = None,
    force: bool = False,
    fit_dir: PathLike | None = None,
) -> tuple[int, list[str]]:
    """Denoise one scan or a folder; return the exit status (1 if any file of a folder failed) and the lines
    to print. File mode writes OUTPUT, its JSON record (``record``, default OUTPUT's name + .denoise.json)
    and the optional before/after ``png``; every one of them is checked by the output guard first."""
    from volscore.atomic import atomic_write_json

    folder = in_dir is not None or out_dir is not None
    if folder == (input is not None or output is not None) or (folder and None in (in_dir, out_dir)):
        raise ValueError("give INPUT OUTPUT, or -i IN_DIR -o OUT_DIR (not both)")
    if folder:
        if png is not None or record is not None:
            raise ValueError(
                "--png and --record are for one scan; folder mode writes OUT_DIR/denoise_record.json"
            )
        result = denoise_folder(in_dir, out_dir, options, force=force, fit_dir=fit_dir)  # type: ignore[arg-type]
        lines = []
        for f in result["files"]:
            detail = f.get("error") or f.get("reason") or _sigma_text(f)
            lines.append(f"{f['status']:>7}  {f['input']} -> {f['output']}  {detail}")
        lines.append(
            f"record: {Path(out_dir) / 'denoise_record.json'}  ({result['n_done']} done, "  # type: ignore[arg-type]
            f"{result['n_skipped']} skipped, {result['n_failed']} failed)"
        )
        return (0 if result["n_failed"] == 0 else 1), lines
    if output is None:
        raise ValueError("give both INPUT and OUTPUT")
    src, dst = Path(input), Path(output)  # type: ignore[arg-type]
    json_path = Path(record) if record else dst.parent / (dst.name.split(".nii")[0] + ".denoise.json")
    extras = [json_path] + ([Path(png)] if png else [])
    # before minutes of work: no output over the scan or the run's files
    check_outputs([dst, *extras], inputs=[src, *run_files(options.run)], force=force)
    rec = denoise_file(src, dst, options, force=force, fit_dir=fit_dir)
    lines = [f"{src} -> {dst}  {_sigma_text(rec)}, {rec['method']}, {rec['timings']['total']:.1f} s"]
    lines += [f"warning: {w}" for w in rec["warnings"]]
    if png:
        before_after_png(src, dst, Path(png), options.volume_index)
        lines.append(f"before/after: {png}")
    atomic_write_json(json_path, rec)
    lines.append(f"record: {json_path}")
    return 0, lines


def before_after_png(src: Path, dst: Path, png: Path, volume_index: int | None = None) -> None:
    from volscore.data.nifti import load_volume
    from volscore.plots import save_slices

    before, after = load_volume(src, volume_index).data, load_volume(dst).data
    # the middle slice across the last axis (axial for RAS-ordered files such as the MNI template)
    save_slices({"input": before, "denoised": after}, png, axis=2)
