"""Denoising scans the model never saw: a trained volscore denoiser (default: the bundled
``pretrained:t1-denoiser``) side by side with BM4D, a Gaussian filter and the noisy input, in one run on this
CPU; and ``denoiser_figures``, the cheap part of it that the bundled model's card reports.

Reproduce (needs the bench extra for BM4D and dipy: ``pip install -e .[bench]``):

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_denoise.py --threads 1

Protocol
- Cases (``CASES``), each a clean volume with its own affine, none of it seen in training:
  ``holdout``: the 96^3 crop x 51:147, y 120:216, z 37:133 of the 1 mm MNI template
  (``volscore.data.patches.MNI152_HOLDOUT_CROP``), inside the hold-out y >= 120 that the mni152 training
  never sees; ``anatomical``: nibabel's test T1 of another subject (``nibabel/tests/data/anatomical.nii``,
  33 x 41 x 25 at 2 mm, int16); ``aniso``: dipy's ``aniso_vox.nii.gz`` (58 x 58 x 24 at 4 x 4 x 5 mm;
  skipped with a note where dipy is not installed). The real scans carry their own noise: "clean" is the
  scan as acquired, so a method's PSNR there measures how well it removes the noise we add.
- Noise (``volscore.corrupt.add_noise``, seeded): Gaussian with sigma 0.05 and 0.10 of the scan's reference
  level R (``reference_level``, the 99.5th percentile; for the hold-out crop the template's, as before),
  and Rician 0.05 on the hold-out only. Every method is given the true sigma (volscore's own estimate is
  reported beside it). PSNR and SSIM (MONAI) over the whole volume with data range R, so the noisy input's
  PSNR is about 20 log10(1 / fraction).
- Methods: the noisy input; a Gaussian filter at its best width (an oracle: the width is picked by PSNR
  against the clean volume, an upper bound for the filter); BM4D (``bm4d`` package, sigma_psd = sigma,
  default profile); dipy ``nlmeans`` (skipped by default: slower and weaker than BM4D); and volscore through
  ``denoise_file`` (NIfTI in, NIfTI out), as a user's ``volscore denoise`` would run, with the default
  options but for: ``Tweedie`` (one stitched pass, ``check="warn"``: the record says whether the SURE
  self-check flagged the result), ``ensemble K=8`` (flips and tile offsets averaged), ``check shrink``
  (what a user gets when the self-check fires: the output mixed with the input by the SURE-optimal weight;
  the same as Tweedie when it does not), ``spacing auto`` (only where the scan's voxel size is not one the
  model was trained at), and the ``refined`` chain of ``--steps`` levels. With ``--selfsup``: Noise2Score fits
  on each noisy scan at Gaussian 0.05 for ``--fit-minutes``, from scratch and fine-tuned from the run
  (``DenoiseOptions.init``).
- Seconds are wall-clock on this machine for the denoising itself: volscore's ``timings["denoise"]``
  (its self-check pass is reported apart, and added for the ``check shrink`` row, which needs it).
- The check column: pass / FLAG, and the SURE estimate of the gain over the input (compare it with the
  measured "vs input").

The old path is kept: ``--train`` trains a model (DSM on the template's y < 120, ``--train-minutes``,
``--train-sigmas``) into ``--out``/run and measures that instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402

DEFAULT_RUN = "pretrained:t1-denoiser"
CASES = ("holdout", "anatomical", "aniso")
GAUSSIAN_LEVELS = (("gaussian", 0.05), ("gaussian", 0.10))
HOLDOUT_EXTRA = (("rician", 0.05),)
GAUSS_WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
ENSEMBLE = 8
SKIPPABLE = ("bm4d", "nlmeans", "ensemble", "shrink", "spacing", "refined")


class Case(NamedTuple):
    """A clean volume, its affine and reference level R (sigma and PSNR's data range are fractions of R)."""

    name: str
    title: str
    source: str
    clean: Any  # float32 array
    affine: Any
    reference_level: float

    @property
    def zooms(self) -> list[float]:
        from volscore.data.sources import voxel_sizes

        return [round(float(z), 3) for z in voxel_sizes(self.affine)]

    def settings(self) -> tuple[tuple[str, float], ...]:
        return GAUSSIAN_LEVELS + (HOLDOUT_EXTRA if self.name == "holdout" else ())

    def describe(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "source": self.source,
            "shape": list(self.clean.shape),
            "voxel_mm": self.zooms,
            "reference_level": self.reference_level,
        }


def _quick_crop(shape: tuple[int, ...], size: int = 40) -> tuple[slice, ...]:
    """The central ``size``^3 block (or the whole axis where smaller): --quick's stand-in for a volume."""
    return tuple(slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + min(n, size)) for n in shape)


def load_cases(names: tuple[str, ...] = CASES, quick: bool = False, log: Any = print) -> list[Case]:
    """The cases of ``names`` that can be loaded here (dipy's scan needs dipy: skipped with a note)."""
    import nibabel as nib
    import numpy as np

    from volscore.corrupt import reference_level
    from volscore.data.nifti import resolve_paths
    from volscore.data.patches import MNI152_HOLDOUT_CROP as CROP

    cases = []
    for name in names:
        if name == "holdout":
            (template,) = resolve_paths("mni152")
            img = nib.load(template)
            r = reference_level(np.asarray(img.dataobj, dtype=np.float32))  # the template's R, as before
            crop = img.slicer[CROP]  # keeps the affine of the crop
            title = "template hold-out crop (96^3, 1 mm)"
            source = f"{Path(template).name}[{_crop_text(CROP)}]"
        elif name == "anatomical":
            import nibabel

            path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
            crop, r = nib.load(path), None
            title, source = "nibabel anatomical.nii (33x41x25, 2 mm)", "nibabel/tests/data/anatomical.nii"
        elif name == "aniso":
            try:
                import dipy
            except ImportError:
                log("note: dipy is not installed (pip install -e .[bench]): the aniso_vox case is skipped")
                continue
            path = Path(dipy.__file__).parent / "data" / "files" / "aniso_vox.nii.gz"
            if not path.is_file():
                log(f"note: {path} not found: the aniso_vox case is skipped")
                continue
            crop, r = nib.load(path), None
            title, source = "dipy aniso_vox (58x58x24, 4x4x5 mm)", "dipy/data/files/aniso_vox.nii.gz"
        else:
            raise ValueError(f"unknown case {name!r}; cases: {', '.join(CASES)}")
        if quick:
            crop = crop.slicer[_quick_crop(crop.shape[:3])]
        clean = np.asarray(crop.dataobj, dtype=np.float32)
        r = float(reference_level(clean)) if r is None else float(r)
        cases.append(Case(name, title, source, clean, crop.affine, r))
    return cases


def noisy_scan(
    case: Case, noise: str, fraction: float, seed: int, path: Path | None = None
) -> tuple[float, Any]:
    """The case's clean volume with ``add_noise`` of sd ``fraction`` x its reference level (seeded: the same
    noisy volume in every bench that asks), saved as NIfTI with the case's affine to ``path`` if given;
    (sigma, noisy)."""
    import nibabel as nib

    from volscore.corrupt import add_noise

    sigma = fraction * case.reference_level
    noisy = add_noise(case.clean, sigma, noise, seed=seed)
    if path is not None:
        nib.save(nib.Nifti1Image(noisy, case.affine), path)
    return sigma, noisy


def _crop_text(crop: tuple[slice, ...]) -> str:
    return ", ".join(f"{s.start}:{s.stop}" for s in crop)


def _setting_name(noise: str, fraction: float) -> str:
    return f"{noise} {fraction:.2f}"


def _train(
    run: Path, minutes: float, seed: int, sigma_range: tuple[float, float], threads: int | None
) -> None:
    """DSM on the template's training region (y < 120), in a child process."""
    from volscore.config import TrainConfig

    cfg = TrainConfig(
        data=["mni152"],
        out=str(run),
        objective="dsm",
        patch_size=32,
        preset="small",
        minutes=minutes,
        sigma_min=sigma_range[0],
        sigma_max=sigma_range[1],
        seed=seed,
    )
    (rec,) = harness.train_in_children([cfg], threads=threads, logs=[os.devnull])
    print(f"trained {rec['step']} steps in {rec['seconds']:.0f} s into {run}", flush=True)


def _check_summary(rec: dict[str, Any]) -> dict[str, Any] | None:
    """What a bench row keeps of ``denoise_file``'s self-check record."""
    check = rec.get("check")
    if check is None:
        return None
    whole = check["sure_volume"]
    return {
        "passed": bool(check["passed"]),
        "flagged": not check["passed"],
        "failures": list(check["failures"]),
        "action": check["action"],
        "sure_gain_db": float(check["sure_head"]["gain_db"]),
        "sure_gain_se_db": float(check["sure_head"]["gain_se_db"]),
        "sure_gain_volume_db": None if whole is None else float(whole["gain_db"]),
        "shrink_weight": float(check["sure_head"]["shrink_weight"]),
    }


def run_volscore(
    noisy_path: Path, dst: Path, options: Any, run: Any = None
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``denoise_file`` as a user's ``volscore denoise`` runs it: the output volume, its record, and the
    bench row's extras (check summary, timings, warnings)."""
    import nibabel as nib
    import numpy as np

    from volscore.denoise import denoise_file

    rec = denoise_file(noisy_path, dst, options, run=run, force=True)
    x = np.asarray(nib.load(dst).dataobj, dtype=np.float32)
    extra = {
        "check": _check_summary(rec),
        "check_seconds": rec["timings"].get("check", 0.0),
        "sigma_model_units": rec["sigma"]["model_units"],
        "scaler": rec["scaler"]["source"],
        "resampled": rec["spacing"]["resampled"],
        "warnings": rec["warnings"],
    }
    return x, rec, extra


def denoiser_figures(run_spec: str, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """The bundled denoiser's card figures: per case (``CASES``) and Gaussian level (0.05 and 0.10 of the
    scan's reference level), PSNR of the noisy input and of volscore's Tweedie step (K = 1, default options,
    ``check="warn"``), SSIM, seconds of the denoising and whether the self-check flagged the result. No BM4D:
    cheap enough for the model card (tens of seconds). ``quick``: central 40^3 blocks (tests)."""

    from volscore.metrics import psnr, ssim
    from volscore.options import DenoiseOptions
    from volscore.run import Run

    run = Run.load(run_spec)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="denoiser_figures_") as tmp:
        for case in load_cases(quick=quick):
            r, clean = case.reference_level, case.clean
            levels: dict[str, Any] = {}
            for noise, fraction in GAUSSIAN_LEVELS:
                src = Path(tmp) / f"{case.name}_{noise}_{fraction:.2f}.nii.gz"
                sigma, noisy = noisy_scan(case, noise, fraction, seed, src)
                options = DenoiseOptions(run=run_spec, sigma=str(sigma), noise=noise, seed=seed, check="warn")
                x, rec, extra = run_volscore(src, Path(tmp) / f"out_{src.name}", options, run=run)
                check = extra["check"]
                levels[_setting_name(noise, fraction)] = {
                    "psnr_noisy": round(psnr(noisy, clean, r), 2),
                    "psnr_denoised": round(psnr(x, clean, r), 2),
                    "ssim_noisy": round(ssim(noisy, clean, r), 4),
                    "ssim": round(ssim(x, clean, r), 4),
                    "seconds": round(float(rec["timings"]["denoise"]), 2),
                    "check_flagged": bool(check["flagged"]),
                    "check_sure_gain_db": round(check["sure_gain_db"], 2),
                }
            out[case.name] = {**case.describe(), "reference_level": round(r, 3), "levels": levels}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_flags(
        p,
        threads=None,
        threads_help="torch threads (default: volscore.machine.set_threads(None), as the CLI)",
        json_flag=False,
        out="runs/bench_denoise",
        out_help="folder of the noisy and denoised volumes (and of the run with --train)",
    )
    p.add_argument("--run", default=None, help=f"the trained run or pretrained:NAME (default: {DEFAULT_RUN})")
    p.add_argument("--train", action="store_true", help="train a model into OUT/run and measure it instead")
    p.add_argument("--train-minutes", type=float, default=30.0, help="--train: training budget")
    p.add_argument(
        "--train-sigmas",
        type=float,
        nargs=2,
        default=[0.01, 0.5],
        metavar=("MIN", "MAX"),
        help="--train: the model's sigma range in model units",
    )
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, help="scans to measure on")
    p.add_argument("--steps", type=int, default=10, help="levels of the refined chain")
    p.add_argument("--ensemble", type=int, default=ENSEMBLE, help="passes of the ensemble row")
    p.add_argument(
        "--skip",
        nargs="*",
        default=["nlmeans"],
        choices=SKIPPABLE,
        help="methods to leave out (default: nlmeans, slower and weaker than BM4D; a list replaces it)",
    )
    p.add_argument("--selfsup", action="store_true", help="add self-supervised fits (scratch, fine-tuned)")
    p.add_argument("--fit-minutes", type=float, default=5.0, help="--selfsup: fitting budget per fit")
    p.add_argument("--quick", action="store_true", help="central 40^3 blocks, K=2, 2 refined levels (tests)")
    p.add_argument("--results", default="scripts/results")
    args = p.parse_args(argv)
    if args.train and args.run:
        p.error("give --run or --train, not both")
    with harness.using_threads(args.threads):
        return bench(args)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from scipy import ndimage

    from volscore.data.sources import voxel_sizes
    from volscore.denoise import estimate_sigma, estimate_sigma_rician, foreground_mask
    from volscore.denoise.spacing import target_zooms, trained_zooms
    from volscore.metrics import psnr
    from volscore.options import DenoiseOptions
    from volscore.plots import save_slices
    from volscore.run import Run

    out, results = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip)
    machine = harness.machine_info()
    report: dict[str, Any] = {"date": machine["date"], "machine": machine, "cases": {}}
    if args.train:
        run_spec = str(out / "run")
        t = time.perf_counter()
        if not (out / "run" / "checkpoint.pt").exists():
            _train(out / "run", args.train_minutes, args.seed, tuple(args.train_sigmas), args.threads)
        report["train_seconds"] = time.perf_counter() - t
    else:
        run_spec = args.run or DEFAULT_RUN
    loaded = Run.load(run_spec)
    report.update({"run": run_spec, "run_steps": loaded.step, "ensemble": args.ensemble, "steps": args.steps})
    report["train_steps"] = loaded.step  # the old key

    for case in load_cases(tuple(args.cases), quick=args.quick):
        r, clean = case.reference_level, case.clean
        entry: dict[str, Any] = {**case.describe(), "settings": {}}
        report["cases"][case.name] = entry
        print(f"\n{case.title}: {case.source}, R = {r:.4g}", flush=True)
        auto = target_zooms(voxel_sizes(case.affine), trained_zooms(loaded), "auto")

        for noise, fraction in case.settings():
            name = _setting_name(noise, fraction)
            stem = f"{case.name}_{noise}_{fraction:.2f}"
            noisy_path = out / f"noisy_{stem}.nii.gz"
            sigma, noisy = noisy_scan(case, noise, fraction, args.seed, noisy_path)
            head = foreground_mask(noisy)
            try:
                if noise == "rician":
                    est = estimate_sigma_rician(noisy, ~head)
                else:
                    est = estimate_sigma(noisy, head)
            except ValueError as exc:  # a scan without background, or a foreground too small
                print(f"  no sigma estimate: {exc}", flush=True)
                est = None
            table = _Rows(name, clean, r, head)
            add = table.add
            add("noisy input", noisy, 0.0)
            best: tuple[float, float, Any, float] | None = None
            for w in GAUSS_WIDTHS:
                t = time.perf_counter()
                x = ndimage.gaussian_filter(noisy, w)
                sec = time.perf_counter() - t
                value = psnr(x, clean, r)
                if best is None or value > best[0]:
                    best = (value, w, x, sec)
            assert best is not None
            add("gaussian filter (best)", best[2], best[3], width=best[1])

            if "nlmeans" not in skip:
                from dipy.denoise.nlmeans import nlmeans

                t = time.perf_counter()
                x = nlmeans(noisy, sigma, rician=noise == "rician")
                add("dipy nlmeans", np.asarray(x, np.float32), time.perf_counter() - t)
            if "bm4d" not in skip:
                import bm4d

                t = time.perf_counter()
                x = bm4d.bm4d(noisy, sigma)
                add("BM4D", np.asarray(x, np.float32), time.perf_counter() - t)

            base = dict(run=run_spec, sigma=str(sigma), noise=noise, seed=args.seed)
            variants: list[tuple[str, str, dict[str, Any]]] = [
                ("volscore Tweedie", "tweedie", {"check": "warn"})
            ]
            if "ensemble" not in skip:
                k = 2 if args.quick else args.ensemble
                variants.append((f"volscore ensemble K={k}", "ensemble", {"check": "warn", "ensemble": k}))
            if "shrink" not in skip:
                variants.append(("volscore Tweedie, check shrink", "shrink", {"check": "shrink"}))
            if "spacing" not in skip and auto is not None:
                label = "volscore Tweedie, spacing auto (" + "x".join(f"{z:g}" for z in auto) + " mm)"
                variants.append((label, "spacing", {"check": "warn", "spacing": "auto"}))
            if "refined" not in skip:
                steps = 2 if args.quick else args.steps
                variants.append((f"volscore refined ({steps})", "refined", {"check": "warn", "steps": steps}))
            for method, key, extra_options in variants:
                options = DenoiseOptions(**base, **extra_options)
                x, rec, extra = run_volscore(noisy_path, out / f"{key}_{stem}.nii.gz", options, run=loaded)
                seconds = rec["timings"]["denoise"] + (extra["check_seconds"] if key == "shrink" else 0.0)
                add(method, x, seconds, **extra)

            if args.selfsup and (noise, fraction) == ("gaussian", 0.05):
                for label, init in (("scratch", None), ("fine-tuned", run_spec)):
                    minutes = 0.1 if args.quick else args.fit_minutes
                    options = DenoiseOptions(
                        self_supervised=True, minutes=minutes, sigma=str(sigma), noise=noise, seed=args.seed,
                        init=init, check="warn",
                    )  # fmt: skip
                    x, rec, extra = run_volscore(noisy_path, out / f"selfsup_{label}_{stem}.nii.gz", options)
                    add(f"volscore self-sup. {label}", x, rec["timings"]["denoise"], **extra,
                        fit_seconds=rec["timings"]["fit"], fit_steps=rec["model"]["step"])  # fmt: skip

            entry["settings"][name] = {"sigma": sigma, "sigma_estimate": est, "methods": table.rows}
            png = results / f"denoise_{case.name}_{noise}_{round(100 * fraction):02d}.png"
            save_slices(table.pictures, png, axis=2, vmin=0.0, vmax=r)

    harness.finish(machine)
    harness.write_json(results / "bench_denoise.json", report)
    print(f"\n{harness.header_line(machine)} Model: {run_spec}, {report['run_steps']} steps.")
    for name, entry in report["cases"].items():
        print(f"\n**{entry['title']}** ({name}; R = {entry['reference_level']:.4g})\n")
        print(case_table(entry))
    return report


class _Rows:
    """One setting's rows: every method's PSNR and SSIM over the volume, PSNR inside the head mask (the
    self-check's region; its gain over the input is set beside SURE's estimate), seconds, extras; and the
    pictures."""

    def __init__(self, setting: str, clean: Any, r: float, head: Any) -> None:
        self.setting, self.clean, self.r, self.head = setting, clean, r, head
        self.rows: dict[str, dict[str, Any]] = {}
        self.pictures: dict[str, Any] = {"clean": clean}

    def add(self, method: str, x: Any, seconds: float, **extra: Any) -> None:
        import numpy as np

        from volscore.metrics import psnr, ssim

        mse_head = float(np.mean((np.asarray(x, np.float64)[self.head] - self.clean[self.head]) ** 2))
        q = {
            "psnr": psnr(x, self.clean, self.r),
            "ssim": ssim(x, self.clean, self.r),
            "psnr_head": float(10 * np.log10(self.r**2 / max(mse_head, 1e-12))),
        }
        if self.rows:  # the first row is the noisy input
            q["head_gain_db"] = q["psnr_head"] - self.rows["noisy input"]["psnr_head"]
        self.rows[method] = {**q, "seconds": seconds, **extra}
        self.pictures[_short(method)] = x
        check = extra.get("check")
        flag = "" if check is None else ("  check FLAG" if check["flagged"] else "  check pass")
        print(f"  {self.setting:>14} {method:<46} {q['psnr']:6.2f} dB  {seconds:7.1f} s{flag}", flush=True)


def _short(method: str) -> str:
    """A short picture title: "volscore Tweedie, spacing auto (3x3x3 mm)" -> "spacing auto"."""
    text = method.removeprefix("volscore ").removeprefix("Tweedie, ")
    return text.split(" (")[0] if text.startswith(("spacing", "gaussian")) else text


def _check_cell(row: dict[str, Any]) -> str:
    check = row.get("check")
    if check is None:
        return "-"
    text = f"{'FLAG' if check['flagged'] else 'pass'}; head gain SURE {check['sure_gain_db']:+.2f}"
    if "head_gain_db" in row:
        text += f", true {row['head_gain_db']:+.2f}"
    if check["action"] == "shrink":
        text += f", shrunk a={check['shrink_weight']:.2f}"
    return text


def case_table(entry: dict[str, Any]) -> str:
    """One markdown table per case: a row per method, per setting PSNR / SSIM / s, the PSNR difference to
    BM4D and to the noisy input, and the self-check (pass or FLAG, SURE's estimated gain in dB)."""
    settings = entry["settings"]
    methods = list(dict.fromkeys(m for s in settings.values() for m in s["methods"]))
    header, align = ["method"], "l"
    for n in settings:
        header += [f"{n}: PSNR / SSIM / s", "vs BM4D (dB)", "vs input (dB)", "check"]
        align += "rrrl"
    rows = []
    for m in methods:
        row = [m]
        for s in settings.values():
            cell = s["methods"].get(m)
            if cell is None:
                row += ["-"] * 4
                continue
            bm4d = s["methods"].get("BM4D")
            row += [
                f"{cell['psnr']:.2f} / {cell['ssim']:.3f} / {cell['seconds']:.1f}",
                "-" if bm4d is None else f"{cell['psnr'] - bm4d['psnr']:+.2f}",
                f"{cell['psnr'] - s['methods']['noisy input']['psnr']:+.2f}",
                _check_cell(cell),
            ]
        rows.append(row)
    return harness.markdown_table(header, rows, align)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
