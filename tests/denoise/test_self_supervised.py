"""Tests for volscore/denoise/self_supervised.py: 2-step self-supervised fits (Noise2Score) for both
objectives at small extra noise, the run they write, and ``denoise_file`` with ``self_supervised``.
Seeded; 24^3 voxels, patches of 16."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from phantoms import PATCH, head_phantom, noisy_head

from volscore.checkpoint import CHECKPOINT_NAME, load_checkpoint
from volscore.denoise import denoise_file, fit_self_supervised, self_supervised_levels, tweedie_denoise
from volscore.options import DenoiseOptions

FIT = dict(preset="tiny", patch_size=PATCH, steps=2, batch_size=2, amp="off")


@pytest.mark.parametrize("objective", ["ssm-vr", "dsm"])
def test_fit_self_supervised_trains_at_small_extra_noise(tmp_path, objective):
    rng = np.random.default_rng(9)
    noisy = (head_phantom(24) + 0.05 * rng.standard_normal((24,) * 3)).astype(np.float32)
    model = fit_self_supervised(noisy, 0.05, None, objective, out_dir=tmp_path / "ss", seed=0, **FIT).model
    state = load_checkpoint(tmp_path / "ss" / CHECKPOINT_NAME)
    t_min, t_max = self_supervised_levels(0.05, objective)
    assert state["step"] == 2 and state["data"]["kind"] == "self-supervised"
    assert state["config"]["sigma_min"] == t_min < t_max == state["config"]["sigma_max"] <= 0.1
    assert state["data"]["score_sigma"] == t_min <= 0.2 * 0.05 + 1e-12  # level error sqrt(1 + 0.2^2) = 1.02
    out = tweedie_denoise(model, torch.from_numpy(noisy), 0.05, PATCH, True, score_sigma=t_min)
    assert out.shape == noisy.shape and torch.isfinite(out).all()


def test_self_supervised_levels_refuse_an_unknown_objective():
    with pytest.raises(ValueError, match="objective"):
        self_supervised_levels(0.05, "ssm")


def test_denoise_file_self_supervised(tmp_path):
    src = noisy_head(tmp_path / "scan.nii.gz", sigma=0.05)
    options = DenoiseOptions(self_supervised=True, fit_overrides=FIT)
    rec = denoise_file(src, tmp_path / "out.nii.gz", options)
    assert rec["self_supervised"] and rec["run"] is None and rec["scaler"]["source"] == "scan"
    # the default objective is DSM (measured better in bench_denoise), read at t_min = 0.2 sigma
    assert rec["objective"] == "dsm"
    assert rec["sigma"]["network_conditioning"] == pytest.approx(0.2 * rec["sigma"]["model_units"])
    assert nib.load(tmp_path / "out.nii.gz").get_data_dtype() == np.float32
    with pytest.raises(ValueError, match="steps=0"):
        denoise_file(src, tmp_path / "out2.nii.gz", DenoiseOptions(self_supervised=True, steps=3))
