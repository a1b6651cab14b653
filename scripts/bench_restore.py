"""Restoration benchmark: ``volscore restore`` (thick-slice super-resolution and inpainting with the bundled
prior) against the classical tools, on the template hold-out and on another subject's scan.

Reproduce (scikit-image for the biharmonic baseline and SSIM maps: ``pip install -e .[test]``)::

    python scripts/bench_restore.py --json scripts/results/bench_restore.json

- Scans: ``holdout``, the template's 96^3 hold-out crop at 1 mm (``MNI152_HOLDOUT_CROP``, inside y >= 120,
  which the bundled t1-denoiser never saw); ``anatomical``, nibabel's test T1 of another subject
  (33 x 41 x 25 at 2 mm). The restore settings (levels, first and last sigma) were chosen on a crop of the
  template's training half (y < 120), never on these.
- Super-resolution: thick slices simulated along axis 2 (inferior-superior) as the mean of ``factor`` fine
  slices (box profile) for factors 2, 4 and 5, written as NIfTI with the thick voxel size in the affine; the
  methods get that file and return the fine grid. Trilinear and cubic B-spline interpolation
  (``restore.geometry.interpolate_slices``, scipy) against ``volscore restore`` (``restore_file``, default
  options: deterministic proximal iterations, 10 levels, noise estimated from the scan). A scan that carries
  its own noise (``anatomical``, about 4.7 % of R) is a noisy reference: the thick slices average that
  noise, a result that reproduces it scores higher than one that removes it, so ``--noise-sigma 0`` (exact
  data, as interpolation takes it) is reported beside the default there.
- Inpainting: seeded masks inside the head, ``boxes16`` (4 holes of 16^3 voxels), ``boxes8`` (8 of 8^3) and
  ``blobs`` (smooth random blobs, ~3 % of the volume); scikit-image's ``inpaint_biharmonic`` against
  ``volscore restore --task inpaint``. PSNR and SSIM inside the holes only; the seam figure is the gradient
  across the hole's border over the known voxels' beside it (``restore.files.border_gradient_ratio``),
  relative to the same statistic of the clean volume (1 = no seam).
- PSNR with the scan's reference level R (99.5th percentile; the whole template's for the hold-out); SSIM
  (scikit-image, Gaussian window sigma 1.5, data range R) over the whole volume, or averaged over the holes.
- Uncertainty (``--draws K``, default 4, hold-out x4 and boxes16): K posterior draws (DPM-Solver++(2M)),
  their mean and per-voxel sd; calibration as rms error / rms predicted error, the predicted error of a mean
  of K draws being sd sqrt(1 + 1/K), the share of voxels within 2 predicted errors (95 % if calibrated) and
  the correlation of |error| with sd, over the head (super-resolution) or the holes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness
import harness  # noqa: E402

CASES = ("holdout", "anatomical")
FACTORS = (2, 4, 5)
MASKS = ("boxes16", "boxes8", "blobs")
DEFAULT_RUN = "pretrained:t1-denoiser"
AXIS = 2


def load_case(name: str, quick: bool) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np

    from volscore.corrupt import reference_level
    from volscore.data.nifti import resolve_paths
    from volscore.data.patches import MNI152_HOLDOUT_CROP

    if name == "holdout":
        (template,) = resolve_paths("mni152")
        img = nib.load(template)
        r = float(reference_level(np.asarray(img.dataobj, dtype=np.float32)))
        crop = img.slicer[MNI152_HOLDOUT_CROP]
        title, source = "template hold-out crop (96^3, 1 mm)", f"{Path(template).name} hold-out crop"
    else:
        import nibabel

        path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
        crop, r = nib.load(path), None
        title, source = "nibabel anatomical.nii (33x41x25, 2 mm)", "nibabel/tests/data/anatomical.nii"
    if quick:
        shape = crop.shape[:3]
        crop = crop.slicer[
            tuple(slice(max(0, (n - 40) // 2), max(0, (n - 40) // 2) + min(n, 40)) for n in shape)
        ]
    clean = np.asarray(crop.dataobj, dtype=np.float32)
    r = float(reference_level(clean)) if r is None else r
    return {"name": name, "title": title, "source": source, "clean": clean, "affine": crop.affine, "r": r}


def thick_scan(clean: Any, affine: Any, factor: int) -> tuple[Any, Any, Any]:
    """(fine reference cropped to a multiple of ``factor`` slices, thick slices, thick affine)."""
    import numpy as np
    import torch

    from volscore.restore.operators import SliceProfile

    n = clean.shape[AXIS] // factor * factor
    fine = np.ascontiguousarray(clean[..., :n])
    thick = SliceProfile(n, AXIS, factor).forward(torch.from_numpy(fine)[None, None])[0, 0].numpy()
    a = np.array(affine, dtype=np.float64)
    a[:3, 3] = a[:3, 3] + a[:3, AXIS] * (factor - 1) / 2  # thick slice 0 centred on fine slices 0..f-1
    a[:3, AXIS] *= factor
    return fine, thick.astype(np.float32), a


def make_mask(kind: str, clean: Any, seed: int) -> Any:
    """Missing voxels (bool) of ``kind``, seeded, inside the head (holes at least 2 voxels from the edge)."""
    import numpy as np
    from scipy import ndimage

    from volscore.denoise.background import foreground_mask

    rng = np.random.default_rng(seed)
    head = ndimage.binary_erosion(foreground_mask(clean), iterations=4)
    missing = np.zeros(clean.shape, bool)
    if kind == "blobs":
        field = ndimage.gaussian_filter(rng.standard_normal(clean.shape), 4.0)
        missing = (field > np.quantile(field[head], 0.965)) & head
        return missing
    size, count = {"boxes16": (16, 4), "boxes8": (8, 8)}[kind]
    if size > min(clean.shape) // 3:  # no room for such holes in this scan
        return missing
    for _ in range(2000):
        if count == 0:
            break
        start = [int(rng.integers(2, n - size - 2)) for n in clean.shape]
        box = tuple(slice(s, s + size) for s in start)
        grown = tuple(slice(max(0, s - 3), s + size + 3) for s in start)
        if head[box].all() and not missing[grown].any():
            missing[box] = True
            count -= 1
    return missing


def psnr(x: Any, ref: Any, r: float, region: Any = None) -> float:
    import numpy as np

    d = (np.asarray(x, np.float64) - ref) if region is None else (np.asarray(x, np.float64) - ref)[region]
    return float(10 * np.log10(r**2 / max(float(np.mean(d**2)), 1e-20)))


def ssim(x: Any, ref: Any, r: float, region: Any = None) -> float:
    import numpy as np
    from skimage.metrics import structural_similarity

    _, full = structural_similarity(
        np.asarray(x, np.float64), np.asarray(ref, np.float64), data_range=r, gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, full=True,
    )  # fmt: skip
    return float(full.mean() if region is None else full[region].mean())


def calibration(mean: Any, std: Any, ref: Any, k: int, region: Any) -> dict[str, float]:
    import numpy as np

    err = (np.asarray(mean, np.float64) - ref)[region]
    pred = np.asarray(std, np.float64)[region] * np.sqrt(1 + 1 / k)
    return {
        "rms_error_over_predicted": float(np.sqrt((err**2).mean() / max((pred**2).mean(), 1e-20))),
        "within_2_predicted": float((np.abs(err) <= 2 * pred).mean()),
        "corr_abs_error_sd": float(np.corrcoef(np.abs(err), pred)[0, 1]),
    }


def run_volscore(src: Path, dst: Path, options: Any, run: Any) -> tuple[Any, Any, dict[str, Any]]:
    import nibabel as nib

    from volscore.restore.files import restore_file

    t = time.perf_counter()
    rec = restore_file(src, dst, options, run=run, force=True, progress=False)
    rec["seconds_wall"] = time.perf_counter() - t
    std = nib.load(rec["std_output"]).get_fdata(dtype="float32") if rec["std_output"] else None
    return nib.load(dst).get_fdata(dtype="float32"), std, rec


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import numpy as np

    from volscore.data.nifti import save_nifti
    from volscore.denoise.background import foreground_mask
    from volscore.options import RestoreOptions
    from volscore.plots import save_slices
    from volscore.restore.files import border_gradient_ratio
    from volscore.restore.geometry import interpolate_slices
    from volscore.run import Run

    run = Run.load(args.run)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    steps = {"steps": 2} if args.quick else {}
    report: dict[str, Any] = {"run": args.run, "cases": {}}
    for name in args.cases:
        case = load_case(name, args.quick)
        clean, r = case["clean"], case["r"]
        entry: dict[str, Any] = {"title": case["title"], "source": case["source"], "shape": list(clean.shape)}
        entry["r"], entry["superres"], entry["inpaint"] = r, {}, {}
        report["cases"][name] = entry
        for factor in args.factors:
            fine, thick, thick_affine = thick_scan(clean, case["affine"], factor)
            src = tmp / f"{name}_thick{factor}.nii.gz"
            save_nifti(src, thick, thick_affine)
            rows: dict[str, Any] = {}
            for method, order in (("trilinear", 1), ("cubic B-spline", 3)):
                t = time.perf_counter()
                out = interpolate_slices(thick, AXIS, factor, order)
                rows[method] = {"seconds": time.perf_counter() - t, "x": out}
            out, _, rec = run_volscore(src, tmp / f"{name}_sr{factor}.nii.gz", RestoreOptions(**steps), run)
            rows["volscore"] = {"seconds": rec["seconds_wall"], "x": out, "nfe": rec["nfe_per_sample"]}
            rows["volscore"]["check_passed"] = rec["check"]["passed"]
            if name != "holdout":  # a scan with its own noise: also as exact data, as interpolation takes it
                out, _, rec = run_volscore(
                    src,
                    tmp / f"{name}_sr{factor}_exact.nii.gz",
                    RestoreOptions(noise_sigma="0", **steps),
                    run,
                )
                rows["volscore --noise-sigma 0"] = {
                    "seconds": rec["seconds_wall"],
                    "x": out,
                    "nfe": rec["nfe_per_sample"],
                }
            if args.draws > 1 and name == "holdout" and factor == 4:
                options = RestoreOptions(n_samples=args.draws, **steps)
                mean, std, rec = run_volscore(src, tmp / f"{name}_sr{factor}_draws.nii.gz", options, run)
                rows[f"volscore, mean of {args.draws} draws"] = {
                    "seconds": rec["seconds_wall"], "x": mean, "nfe": rec["nfe_per_sample"] * args.draws,
                    "calibration": calibration(mean, std, fine, args.draws, foreground_mask(fine)),
                }  # fmt: skip
            for row in rows.values():
                x = row.pop("x")
                row.update(psnr=psnr(x, fine, r), ssim=ssim(x, fine, r))
                row["_x"] = x
            if name == "holdout" and factor == 4:
                index = fine.shape[0] // 2
                panels = {"clean": fine, "thick slices": np.repeat(thick, factor, axis=AXIS)}
                panels |= {"cubic B-spline": rows["cubic B-spline"]["_x"], "volscore": rows["volscore"]["_x"]}
                save_slices(panels, results / "restore_superres.png", axis=0, index=index)
            for row in rows.values():
                row.pop("_x")
            entry["superres"][str(factor)] = rows
            log_rows(f"{name} x{factor}", rows)
        for kind in args.masks:
            missing = make_mask(kind, clean, args.seed)
            if not missing.any():
                continue
            src, mask = tmp / f"{name}_scan.nii.gz", tmp / f"{name}_{kind}.nii.gz"
            save_nifti(src, clean, case["affine"])
            save_nifti(mask, missing.astype(np.uint8), case["affine"])
            rows = {}
            from skimage.restoration import inpaint_biharmonic

            t = time.perf_counter()
            bih = inpaint_biharmonic(np.where(missing, 0, clean), missing)
            rows["biharmonic (scikit-image)"] = {"seconds": time.perf_counter() - t, "x": bih}
            options = RestoreOptions(task="inpaint", mask=str(mask), **steps)
            out, _, rec = run_volscore(src, tmp / f"{name}_{kind}_out.nii.gz", options, run)
            rows["volscore"] = {"seconds": rec["seconds_wall"], "x": out, "nfe": rec["nfe_per_sample"]}
            rows["volscore"]["check_passed"] = rec["check"]["passed"]
            if args.draws > 1 and name == "holdout" and kind == "boxes16":
                options = RestoreOptions(task="inpaint", mask=str(mask), n_samples=args.draws, **steps)
                mean, std, rec = run_volscore(src, tmp / f"{name}_{kind}_draws.nii.gz", options, run)
                rows[f"volscore, mean of {args.draws} draws"] = {
                    "seconds": rec["seconds_wall"], "x": mean, "nfe": rec["nfe_per_sample"] * args.draws,
                    "calibration": calibration(mean, std, clean, args.draws, missing),
                }  # fmt: skip
            seam_clean = border_gradient_ratio(clean, missing)
            for row in rows.values():
                x = row["x"]
                row.update(psnr=psnr(x, clean, r, missing), ssim=ssim(x, clean, r, missing))
                row["seam"] = border_gradient_ratio(x, missing) / seam_clean
            if name == "holdout" and kind == "boxes16":
                z = np.nonzero(missing.any(axis=(0, 1)))[0]
                index = int(z[len(z) // 2])
                panels = {"clean": clean, "holes": np.where(missing, 0, clean)}
                panels |= {
                    "biharmonic": rows["biharmonic (scikit-image)"]["x"],
                    "volscore": rows["volscore"]["x"],
                }
                save_slices(panels, results / "restore_inpaint.png", axis=2, index=index)
            for row in rows.values():
                row.pop("x")
            entry["inpaint"][kind] = {"voxels": int(missing.sum()), "seam_clean": seam_clean, "rows": rows}
            log_rows(f"{name} {kind} ({int(missing.sum())} voxels)", rows)
    return report


def log_rows(title: str, rows: dict[str, Any]) -> None:
    parts = [f"{m} {v['psnr']:.2f} dB {v['seconds']:.1f} s" for m, v in rows.items()]
    print(f"{title}: " + "; ".join(parts), flush=True)


def report_tables(out: dict[str, Any]) -> None:
    for entry in out["cases"].values():
        print(f"\n### {entry['title']}\n")
        rows = []
        for factor, methods in entry["superres"].items():
            base = methods["cubic B-spline"]["psnr"]
            for method, v in methods.items():
                rows.append(
                    [f"x{factor}", method, f"{v['psnr']:.2f}", f"{v['psnr'] - base:+.2f}", f"{v['ssim']:.4f}",
                     v.get("nfe", "-"), f"{v['seconds']:.1f}"]
                )  # fmt: skip
        if rows:
            print(harness.markdown_table(
                ["super-res", "method", "PSNR dB", "vs B-spline", "SSIM", "NFE", "s"], rows, "llrrrrr"
            ))  # fmt: skip
        rows = []
        for kind, item in entry["inpaint"].items():
            base = item["rows"]["biharmonic (scikit-image)"]["psnr"]
            for method, v in item["rows"].items():
                rows.append(
                    [f"{kind} ({item['voxels']})", method, f"{v['psnr']:.2f}", f"{v['psnr'] - base:+.2f}",
                     f"{v['ssim']:.4f}", f"{v['seam']:.3f}", v.get("nfe", "-"), f"{v['seconds']:.1f}"]
                )  # fmt: skip
        if rows:
            print()
            print(harness.markdown_table(
                ["holes (voxels)", "method", "PSNR in holes", "vs biharmonic", "SSIM in holes",
                 "seam / clean", "NFE", "s"], rows, "llrrrrrr",
            ))  # fmt: skip
        cal = [
            (where, method, v["calibration"])
            for where, methods in list(entry["superres"].items())
            + [(k, i["rows"]) for k, i in entry["inpaint"].items()]
            for method, v in methods.items()
            if "calibration" in v
        ]
        if cal:
            print()
            print(harness.markdown_table(
                ["task", "draws", "rms error / predicted", "within 2 predicted", "corr(|error|, sd)"],
                [[f"x{w}" if w.isdigit() else w, m, f"{c['rms_error_over_predicted']:.2f}",
                  f"{c['within_2_predicted']:.3f}", f"{c['corr_abs_error_sd']:.3f}"] for w, m, c in cal],
                "llrrr",
            ))  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_flags(p, threads=None, threads_help="torch threads (default: as the CLI)")
    p.add_argument("--run", default=DEFAULT_RUN, help="the prior: run folder or pretrained:NAME")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--factors", nargs="+", type=int, default=list(FACTORS))
    p.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    p.add_argument("--draws", type=int, default=4, help="posterior draws for the calibration rows (1: none)")
    p.add_argument("--results", default="scripts/results", help="folder of the pictures")
    p.add_argument("--quick", action="store_true", help="central 40^3 blocks, 2 levels: a smoke test")
    args = p.parse_args(argv)
    return harness.run_bench("bench_restore", args, lambda tmp: bench(args, tmp), report_tables)


if __name__ == "__main__":
    main()
