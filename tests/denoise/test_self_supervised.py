"""Tests for volscore/denoise/self_supervised.py: 2-step self-supervised fits (Noise2Score) for both
objectives at small extra noise, the run they write, and ``denoise_file`` with ``self_supervised``; fits
fine-tuned from a prior (``init``): conditioned on the total level (``TotalLevel``), started from the prior's
weights with its network settings, read at sqrt(sigma^2 + t_min^2), in the prior's units.
Seeded; 24^3 voxels, patches of 16."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from phantoms import PATCH, head_phantom, noisy_head

from volscore.checkpoint import CHECKPOINT_NAME, load_checkpoint
from volscore.denoise import denoise_file, fit_self_supervised, self_supervised_levels, tweedie_denoise
from volscore.denoise.self_supervised import FINE_TUNE_LR, PRIOR_FIELDS, TotalLevel
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


# -- fine-tuning a prior (init) ------------------------------------------------------------------------------
def test_total_level_conditions_on_the_total_noise_level():
    seen = {}

    class Net(torch.nn.Module):
        def forward(self, x, sigma, coords=None):
            seen["sigma"] = sigma
            return x

    wrapped = TotalLevel(Net(), 0.3)
    wrapped(torch.zeros(2, 1, 4, 4, 4), torch.tensor([0.4, 0.0]))
    torch.testing.assert_close(seen["sigma"], torch.tensor([0.5, 0.3]))


def test_fine_tuned_fit_starts_from_the_prior_and_reads_the_total_level(tmp_path, tiny_run):
    from volscore.run import Run

    rng = np.random.default_rng(10)
    noisy = (head_phantom(24) + 0.05 * rng.standard_normal((24,) * 3)).astype(np.float32)
    fit = dict(steps=2, batch_size=2, amp="off")  # the network settings come from the prior
    tuned = fit_self_supervised(
        noisy, 0.05, None, "dsm", out_dir=tmp_path / "ft", seed=1, init=str(tiny_run), **fit
    )
    state = load_checkpoint(tmp_path / "ft" / CHECKPOINT_NAME)
    t_min, _ = self_supervised_levels(0.05, "dsm")
    assert state["data"]["conditioning"] == "total"
    assert state["data"]["score_sigma"] == pytest.approx(math.sqrt(0.05**2 + t_min**2))
    prior = Run.load(str(tiny_run))
    config = state["config"]
    assert config["lr"] == FINE_TUNE_LR and config["init"] == str(tiny_run)
    assert all(config[k] == getattr(prior.config, k) for k in PRIOR_FIELDS)
    # two steps from the prior (EMA 0.99): still the prior's weights, unlike a fit from scratch
    scratch = fit_self_supervised(noisy, 0.05, None, "dsm", out_dir=tmp_path / "sc", seed=1, **FIT)
    prior_weights = prior.model.state_dict()

    def distance(model):
        return max(float((v - prior_weights[k]).abs().max()) for k, v in model.state_dict().items())

    assert distance(tuned.model) < 0.01 < 0.1 < distance(scratch.model)


def test_denoise_file_fine_tunes_in_the_priors_units(tmp_path, tiny_run):
    src = noisy_head(tmp_path / "scan.nii.gz", sigma=0.05, seed=12)
    fit = dict(steps=2, batch_size=2, amp="off")
    options = DenoiseOptions(self_supervised=True, init=str(tiny_run), fit_overrides=fit, check="off")
    rec = denoise_file(src, tmp_path / "out.nii.gz", options)
    assert rec["self_supervised"] and rec["init"] == str(tiny_run)
    assert rec["scaler"]["source"] == "run"  # the scan is in the prior's intensity range
    sigma = rec["sigma"]["model_units"]
    assert rec["sigma"]["network_conditioning"] == pytest.approx(math.sqrt(sigma**2 + (0.2 * sigma) ** 2))
    assert np.isfinite(np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj)).all()
