"""BM4D's Wiener stage with volscore's Tweedie estimate as its pilot (instead of BM4D's own hard-thresholding
stage), on bench_denoise's cases and noise: does a learned pilot lift BM4D? Run from the repository root:
OMP_NUM_THREADS=2 .venv/bin/python scripts/results/denoise_extra/bm4d_pilot.py (needs the bench extra);
the output of the README's run is bm4d_pilot.txt."""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # scripts/

import bm4d  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from bench_denoise import GAUSSIAN_LEVELS, load_cases, run_volscore  # noqa: E402

from volscore.corrupt import add_noise  # noqa: E402
from volscore.metrics import psnr  # noqa: E402
from volscore.options import DenoiseOptions  # noqa: E402
from volscore.run import Run  # noqa: E402

spec = "pretrained:t1-denoiser"
run = Run.load(spec)
tmp = Path(tempfile.mkdtemp())
for case in load_cases():
    r, clean = case.reference_level, case.clean
    for noise, fraction in GAUSSIAN_LEVELS:
        sigma = fraction * r
        noisy = add_noise(clean, sigma, noise, seed=0)
        src = tmp / f"{case.name}_{fraction}.nii.gz"
        nib.save(nib.Nifti1Image(noisy, case.affine), src)
        options = DenoiseOptions(run=spec, sigma=str(sigma), noise=noise, seed=0, check="off")
        x, _, _ = run_volscore(src, tmp / f"o_{src.name}", options, run=run)
        t = time.perf_counter()
        w = np.asarray(bm4d.bm4d(noisy, sigma, stage_arg=x.astype(np.float32)), np.float32)
        seconds = time.perf_counter() - t
        print(
            f"{case.name} {fraction} tweedie {psnr(x, clean, r):.2f} wiener(pilot=tweedie) "
            f"{psnr(w, clean, r):.2f} ({seconds:.1f} s) avg {psnr(0.5 * (x + w), clean, r):.2f}",
            flush=True,
        )
