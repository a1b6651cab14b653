"""How ``volscore restore``'s defaults were chosen: on a 64^3 crop of the template's training half (y < 120,
which the bundled t1-denoiser was trained on; never the benchmark's hold-out or other subjects' scans).

    .venv/bin/python scripts/tune_restore.py --threads 2

Rows: thick slices x4 (box profile) of the crop, restored with deterministic proximal iterations at a few
level ranges, and with the mean of 4 posterior draws (DPM-Solver++(2M)) at two first levels; then noisy thick
slices (2 % and 4 % of R added, x2 and x4) restored with the estimated noise level (the default) and as
exact data. PSNR against the clean crop with the template's R.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness
import harness  # noqa: E402

CROP = (slice(60, 124), slice(30, 94), slice(50, 114))  # inside y < 120


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np
    import torch

    from volscore.corrupt import reference_level
    from volscore.data.nifti import resolve_paths, save_nifti
    from volscore.options import RestoreOptions
    from volscore.restore.files import restore_file
    from volscore.restore.geometry import interpolate_slices
    from volscore.restore.operators import SliceProfile
    from volscore.run import Run

    (template,) = resolve_paths("mni152")
    img = nib.load(template)
    r = float(reference_level(np.asarray(img.dataobj, dtype=np.float32)))
    crop = img.slicer[CROP]
    clean = np.asarray(crop.dataobj, dtype=np.float32)
    run = Run.load("pretrained:t1-denoiser")
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []

    def psnr(x: Any) -> float:
        return float(10 * np.log10(r**2 / np.mean((np.asarray(x, np.float64) - clean) ** 2)))

    def restore(thick: Any, factor: int, **options: Any) -> float:
        a = np.array(crop.affine, dtype=np.float64)
        a[:3, 3] += a[:3, 2] * (factor - 1) / 2
        a[:3, 2] *= factor
        save_nifti(tmp / "thick.nii.gz", thick, a)
        restore_file(tmp / "thick.nii.gz", tmp / "out.nii.gz", RestoreOptions(**options), run=run, force=True,
                     progress=False)  # fmt: skip
        return psnr(nib.load(tmp / "out.nii.gz").get_fdata())

    def add(setting: str, method: str, value: float) -> None:
        rows.append({"setting": setting, "method": method, "psnr": value})
        print(f"{setting}: {method} {value:.2f} dB", flush=True)

    for factor, noise in ((4, 0.0), (2, 0.02), (2, 0.04), (4, 0.02), (4, 0.04)):
        thick = SliceProfile(64, 2, factor).forward(torch.from_numpy(clean)[None, None])[0, 0].numpy()
        thick = (thick + noise * r * rng.standard_normal(thick.shape)).astype(np.float32)
        setting = f"x{factor}, noise {noise:g}"
        add(setting, "cubic B-spline", psnr(interpolate_slices(thick, 2, factor, 3)))
        if noise == 0:
            for hi, lo, steps in ((0.1, 0.01, 10), (0.2, 0.01, 10), (0.05, 0.01, 10), (0.1, 0.02, 20)):
                psnr_db = restore(thick, factor, sigma_max=hi, sigma_min=lo, steps=steps, noise_sigma="0")
                add(setting, f"proximal {steps} levels {hi}-{lo}", psnr_db)
            for hi in (0.1, 0.2):
                psnr_db = restore(thick, factor, n_samples=4, sigma_max=hi, noise_sigma="0")
                add(setting, f"mean of 4 dpm draws from {hi}", psnr_db)
        else:
            add(setting, "proximal, noise estimated (default)", restore(thick, factor))
            add(setting, "proximal, slices as exact data", restore(thick, factor, noise_sigma="0"))
    return {"crop": [[s.start, s.stop] for s in CROP], "r": r, "rows": rows}


def report(out: dict[str, Any]) -> None:
    rows = [[r["setting"], r["method"], f"{r['psnr']:.2f}"] for r in out["rows"]]
    print(harness.markdown_table(["setting", "method", "PSNR dB"], rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_flags(p, threads=None)
    args = p.parse_args(argv)
    return harness.run_bench("tune_restore", args, lambda tmp: measure(args, tmp), report)


if __name__ == "__main__":
    main()
