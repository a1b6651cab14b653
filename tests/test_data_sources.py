"""Tests for volscore/data/sources.py: the NIfTI data path the trainer uses (scaling, float16 cache)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from volscore.data.nifti import IntensityScaler
from volscore.data.sources import open_source


def test_nifti_source_scales_in_place_and_caches_float16(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.random((20, 22, 24)) * 300).astype(np.int16)
    path = tmp_path / "scan.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    before = path.read_bytes()
    source = open_source([str(path)], patch_size=8, coords=True)
    cached = source.sampler.volumes[0]
    assert cached.dtype == torch.float16 and tuple(cached.shape) == data.shape
    scaler = IntensityScaler.from_dict(source.meta["scalers"][0])
    expected = scaler.forward(data.astype(np.float32))
    # float16 keeps 11 significant bits: within 2^-11 relative (plus the smallest normal) of the float32
    err = np.abs(cached.float().numpy() - expected)
    assert (err <= np.abs(expected) * 2**-11 + 2**-14).all()
    assert source.meta["shapes"] == [list(data.shape)]
    x, coords = source.sample(3, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (3, 1, 8, 8, 8) and coords.shape == (3, 3, 8, 8, 8)
    assert path.read_bytes() == before  # the input is never written


def test_percentiles_of_a_large_volume_use_a_subsample():
    # above PERCENTILE_SAMPLE voxels the fit looks at a regular subsample: same percentiles within noise
    rng = np.random.default_rng(1)
    x = rng.normal(100.0, 10.0, size=(160, 160, 200)).astype(np.float32)  # 5.1 M voxels
    s = IntensityScaler.fit(x)
    lo, hi = np.percentile(x, [0.5, 99.5])
    assert abs(s.lo - lo) < 0.2 and abs(s.hi - hi) < 0.2  # sd of a 0.5 % quantile at n = 2.6 M: ~0.03
