import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from volscore.corrupt import add_noise, reference_level
from volscore.data.nifti import resolve_paths
from volscore.data.patches import MNI152_HOLDOUT_CROP
from volscore.denoise import denoise_file
from volscore.metrics import psnr
from volscore.options import DenoiseOptions
from volscore.run import Run

torch.set_num_threads(2)
img = nib.load(resolve_paths("mni152")[0])
full = np.asarray(img.dataobj, np.float32)
r = reference_level(full)
crop = img.slicer[MNI152_HOLDOUT_CROP]
clean = np.asarray(crop.dataobj, np.float32)
run = Run.load("pretrained:t1-denoiser")
d = Path(tempfile.mkdtemp())
for frac in (0.05, 0.10):
    noisy = add_noise(clean, frac * r, "gaussian", seed=0)
    p = d / f"n{frac}.nii.gz"
    nib.save(nib.Nifti1Image(noisy, crop.affine), p)
    for amp in ("off", "bf16"):
        for overlap in (0.5, 0.25):
            o = DenoiseOptions(
                run=run.name, sigma=str(frac * r), seed=0, amp=amp, overlap=overlap, check="off"
            )
            out = d / f"o_{frac}_{amp}_{overlap}.nii.gz"
            rec = denoise_file(p, out, o, run=run, force=True)
            x = np.asarray(nib.load(out).dataobj, np.float32)
            t = rec["timings"]["denoise"]
            print(
                json.dumps(
                    {
                        "fraction": frac,
                        "amp": amp,
                        "overlap": overlap,
                        "psnr": round(psnr(x, clean, r), 2),
                        "seconds": round(t, 2),
                        "s_per_megavoxel": round(t / (clean.size / 1e6), 2),
                    }
                ),
                flush=True,
            )
