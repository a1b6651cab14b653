import json
import tempfile
from pathlib import Path

import nibabel
import nibabel as nib
import numpy as np
import torch

from volscore.corrupt import add_noise, reference_level
from volscore.data.nifti import resolve_paths
from volscore.data.patches import MNI152_HOLDOUT_CROP
from volscore.denoise import denoise_file
from volscore.metrics import psnr
from volscore.options import DenoiseOptions

torch.set_num_threads(2)
img = nib.load(resolve_paths("mni152")[0])
full = np.asarray(img.dataobj, np.float32)
crop = img.slicer[MNI152_HOLDOUT_CROP]
anat = nib.load(Path(nibabel.__file__).parent / "tests/data/anatomical.nii")
cases = [("holdout", crop, reference_level(full), 0.05), ("anatomical", anat, None, 0.10)]
d = Path(tempfile.mkdtemp())
for name, im, r, frac in cases:
    clean = np.asarray(im.dataobj, np.float32)
    r = r or reference_level(clean)
    noisy = add_noise(clean, frac * r, "gaussian", seed=0)
    p = d / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(noisy, im.affine), p)
    for init in (None, "pretrained:t1-denoiser"):
        o = DenoiseOptions(
            self_supervised=True, minutes=2.0, init=init, sigma=str(frac * r), seed=0, check="warn"
        )
        out = d / f"o_{name}_{init is not None}.nii.gz"
        rec = denoise_file(p, out, o, force=True, fit_dir=d / f"fit_{name}_{init is not None}")
        x = np.asarray(nib.load(out).dataobj, np.float32)
        print(
            json.dumps(
                {
                    "case": name,
                    "fraction": frac,
                    "init": init,
                    "psnr_noisy": round(psnr(noisy, clean, r), 2),
                    "psnr": round(psnr(x, clean, r), 2),
                    "fit_s": round(rec["timings"].get("fit", 0)),
                    "fit_steps": rec.get("model", {}).get("step"),
                    "check": rec.get("check", {}).get("passed", rec.get("check")),
                },
                default=str,
            ),
            flush=True,
        )
