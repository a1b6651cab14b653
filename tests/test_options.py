"""Tests for volscore/options.py: every ``validate()`` refusal of the option records names its option, the
defaults (with what each command requires) are valid, and each choice field's choices are its constant."""

from __future__ import annotations

import dataclasses
import math

import pytest

from volscore.options import (
    BACKGROUND_RULES,
    CHECK_MODES,
    DENOISE_CHAINS,
    INFERENCE_AMP,
    NOISE_MODELS,
    SELF_SUPERVISED_OBJECTIVES,
    BaselineOptions,
    DemoOptions,
    DenoiseOptions,
    NoisyOptions,
    SampleOptions,
)
from volscore.sampling.settings import STITCH_MODES, SamplerSettings


def test_defaults_are_valid():
    SampleOptions(out="g.png").validate()
    DenoiseOptions(run="runs/x").validate()
    DenoiseOptions(self_supervised=True).validate()
    DemoOptions().validate()
    BaselineOptions().validate()
    SamplerSettings().validate()


def _refused(options, *names: str) -> str:
    with pytest.raises(ValueError) as info:
        options.validate()
    message = str(info.value)
    for name in names:
        assert name in message, message
    return message


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"n": 0}, "--n"),
        ({"tile_batch": 0}, "--tile-batch"),
        ({"stitch": "sliding"}, "stitch"),
        ({"shape": [16]}, "--shape"),
        ({"shape": [16, 16, 16, 16]}, "--shape"),
        ({"shape": [16, 0, 16]}, "--shape"),
    ],
)
def test_sample_options_refusals_name_the_option(changes, option):
    _refused(SampleOptions(out="g.png", **changes), option)


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"run": None}, "--run"),  # neither a run nor --self-supervised
        ({"self_supervised": True}, "--self-supervised"),  # both
        ({"sigma": "loud"}, "--sigma"),
        ({"sigma": "-0.1"}, "--sigma"),
        ({"sigma": "nan"}, "--sigma"),
        ({"sigma": "inf"}, "--sigma"),
        ({"noise": "poisson"}, "noise"),
        ({"sampler": "euler"}, "sampler"),
        ({"objective": "ssm"}, "objective"),
        ({"stitch": "sliding"}, "stitch"),
        ({"background": "zero"}, "background"),
        ({"steps": -1}, "--steps"),
        ({"chains": 0}, "--chains"),
        ({"tile_batch": 0}, "--tile-batch"),
        ({"minutes": 0.0}, "--minutes"),
        ({"minutes": math.inf}, "--minutes"),
        ({"spacing": "coarse"}, "--spacing"),
        ({"spacing": "0"}, "--spacing"),
        ({"spacing": "-1.5"}, "--spacing"),
        ({"spacing": "inf"}, "--spacing"),
        ({"spacing": "nan"}, "--spacing"),
        ({"ensemble": 0}, "--ensemble"),
        ({"ensemble": 2, "steps": 3}, "--ensemble"),  # the ensemble is for Tweedie
        ({"ensemble_axes": [0, 0]}, "--ensemble-axes"),
        ({"ensemble_axes": [3]}, "--ensemble-axes"),
        ({"ensemble_axes": [-1]}, "--ensemble-axes"),
        ({"overlap": 1.0}, "--overlap"),
        ({"overlap": -0.1}, "--overlap"),
        ({"overlap": math.nan}, "--overlap"),
        ({"amp": "fp16"}, "amp"),
        ({"check": "maybe"}, "check"),
        ({"init": "runs/prior"}, "--init"),  # a prior is for --self-supervised fits
    ],
)
def test_denoise_options_refusals_name_the_option(changes, option):
    _refused(DenoiseOptions(**{"run": "runs/x", **changes}), option)


def test_self_supervised_denoising_refuses_an_annealed_chain():
    _refused(DenoiseOptions(self_supervised=True, steps=3), "steps=0")


def test_denoise_sigma_value():
    assert DenoiseOptions(run="r").sigma_value is None
    assert DenoiseOptions(run="r", sigma="0.05").sigma_value == 0.05


def test_denoise_quality_options_accepted():
    assert DenoiseOptions(run="r").spacing_value is None
    assert DenoiseOptions(run="r", spacing="auto").spacing_value is None
    assert DenoiseOptions(run="r", spacing="1.5").spacing_value == 1.5
    for changes in (
        {"spacing": "auto"},
        {"spacing": "2"},
        {"ensemble": 8, "ensemble_axes": []},
        {"ensemble": 3, "ensemble_axes": [2, 0]},
        {"overlap": 0.0},
        {"overlap": 0.875},
        {"amp": "bf16"},
        {"check": "refuse"},
        {"check": "off", "steps": 3},
    ):
        DenoiseOptions(run="r", **changes).validate()
    DenoiseOptions(self_supervised=True, init="pretrained:t1-denoiser", spacing="auto").validate()
    defaults = DenoiseOptions(run="r")  # one pass on the scan's grid, as before; the check warns
    assert (defaults.spacing, defaults.ensemble, defaults.overlap, defaults.amp) == ("native", 1, 0.5, "off")
    assert defaults.check == "warn" and defaults.ensemble_axes == [0, 1, 2] and defaults.init is None


@pytest.mark.parametrize(
    "options, option",
    [
        (DemoOptions(minutes=-1.0), "--minutes"),
        (DemoOptions(minutes=math.nan), "--minutes"),
        (DemoOptions(minutes=math.inf), "--minutes"),
        (DemoOptions(noise=0.0), "--noise"),
        (DemoOptions(noise=math.nan), "--noise"),
        (DemoOptions(noise=math.inf), "--noise"),
        (DemoOptions(seed=-1), "seed"),
        (BaselineOptions(minutes=math.inf), "--minutes"),
        (BaselineOptions(lr=0.0), "--lr"),
        (BaselineOptions(lr=math.nan), "--lr"),
        (BaselineOptions(n=1), "--n"),
    ],
)
def test_recipe_options_refusals_name_the_option(options, option):
    _refused(options, option)


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"sampler": "ddim"}, "sampler"),
        ({"steps": 1}, "--steps"),
        ({"n_steps_each": 0, "sampler": "annealed"}, "--n-steps-each"),
        ({"n_steps_each": -1, "sampler": "pc"}, "--n-steps-each"),
        ({"sigma_max": math.nan}, "--sigma-max"),
        ({"sigma_min": 0.0}, "--sigma-min"),
        ({"sigma_max": 1.0, "sigma_min": 2.0}, "--sigma-max"),
        ({"step_lr": -1.0}, "--step-lr"),
        ({"step_lr_scale": 0.0}, "--step-lr-scale"),
        ({"rho": math.inf}, "--rho"),
        ({"snr": 0.0}, "--snr"),
        ({"s_noise": 0.0}, "--s-noise"),
        ({"s_churn": -1.0}, "--s-churn"),
        ({"s_tmin": math.nan}, "--s-tmin"),
        ({"s_tmax": -1.0}, "--s-tmax"),
    ],
)
def test_sampler_settings_refusals_name_the_option(changes, option):
    _refused(SamplerSettings(**changes), option)


@pytest.mark.parametrize(
    "cls, name, allowed",
    [
        (SampleOptions, "stitch", STITCH_MODES),
        (SampleOptions, "amp", INFERENCE_AMP),
        (DenoiseOptions, "noise", NOISE_MODELS),
        (DenoiseOptions, "sampler", DENOISE_CHAINS),
        (DenoiseOptions, "objective", SELF_SUPERVISED_OBJECTIVES),
        (DenoiseOptions, "stitch", STITCH_MODES),
        (DenoiseOptions, "background", BACKGROUND_RULES),
        (DenoiseOptions, "amp", INFERENCE_AMP),
        (DenoiseOptions, "check", CHECK_MODES),
    ],
)
def test_choice_fields_offer_their_constant(cls, name, allowed):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    assert tuple(field.metadata["choices"]) == allowed and field.default in allowed


@pytest.mark.reliability
@pytest.mark.parametrize(
    "options, option",
    [
        (SampleOptions(out="g.png", seed=-1), "--seed"),
        (SampleOptions(out="g.png", seed=2**63), "--seed"),
        (SampleOptions(out="g.png", n=-5), "--n"),
        (SampleOptions(out="g.png", tile_batch=-1), "--tile-batch"),
        (SampleOptions(out="g.png", shape=[-16, 16, 16]), "--shape"),
        (DenoiseOptions(run="r", seed=-1), "--seed"),
        (DenoiseOptions(run="r", minutes=math.nan), "--minutes"),
        (DenoiseOptions(run="r", minutes=-1.0), "--minutes"),
        (DenoiseOptions(run="r", sigma="0"), "--sigma"),
        (DenoiseOptions(run="r", sigma="-inf"), "--sigma"),
        (DenoiseOptions(run="r", chains=-1, steps=2), "--chains"),
        (NoisyOptions(fraction=0.0), "--fraction"),
        (NoisyOptions(fraction=-0.05), "--fraction"),
        (NoisyOptions(fraction=math.nan), "--fraction"),
        (NoisyOptions(fraction=math.inf), "--fraction"),
        (NoisyOptions(seed=-1), "--seed"),
        (NoisyOptions(noise="poisson"), "noise"),
        (BaselineOptions(seed=-1), "--seed"),
        (BaselineOptions(minutes=0.0), "--minutes"),
        (BaselineOptions(minutes=math.nan), "--minutes"),
        (DemoOptions(seed=2**63), "--seed"),
        (SamplerSettings(steps=0), "--steps"),
        (SamplerSettings(steps=-3), "--steps"),
        (SamplerSettings(sigma_min=-0.01), "--sigma-min"),
        (SamplerSettings(sigma_min=math.nan), "--sigma-min"),
        (SamplerSettings(sigma_max=math.inf), "--sigma-max"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_out_of_range_numbers_are_refused_naming_the_option(options, option):
    _refused(options, option)


@pytest.mark.reliability
def test_noisy_defaults_and_limits_are_valid():
    NoisyOptions().validate()
    NoisyOptions(fraction=1e-6, seed=2**63 - 1, noise="rician").validate()


def test_restore_defaults_resolve_the_method_and_levels():
    from volscore.options import RESTORE_LEVELS, RestoreOptions

    RestoreOptions().validate()
    assert RestoreOptions().method == "pnp" and RestoreOptions().levels() == RESTORE_LEVELS["pnp"]
    draws = RestoreOptions(n_samples=4)
    assert draws.method == "dpm" and draws.levels() == RESTORE_LEVELS["draws"]
    assert RestoreOptions(sampler="heun", steps=6, sigma_min=0.02).levels() == (6, 0.1, 0.02)


@pytest.mark.reliability
@pytest.mark.parametrize(
    "changes, option",
    [
        ({"task": "deblur"}, "task"),
        ({"task": "inpaint"}, "--mask"),
        ({"mask": "m.nii.gz"}, "--mask"),
        ({"slice_axis": "3"}, "--slice-axis"),
        ({"factor": "2.5"}, "--factor"),
        ({"factor": "1"}, "--factor"),
        ({"sampler": "pnp", "n_samples": 2}, "pnp is deterministic"),
        ({"n_samples": 0}, "--n-samples"),
        ({"steps": 0}, "--steps"),
        ({"sigma_max": 0.01, "sigma_min": 0.1}, "--sigma-max"),
        ({"sigma_min": float("nan")}, "--sigma-min"),
        ({"noise_sigma": "-1"}, "--noise-sigma"),
        ({"noise_sigma": "loud"}, "--noise-sigma"),
        ({"seed": -1}, "seed"),
    ],
)
def test_restore_options_refusals_name_the_option(changes, option):
    from volscore.options import RestoreOptions

    _refused(RestoreOptions(**changes), option)
