"""Tests for volscore/config.py: ``TrainConfig.validate`` refuses what cannot run and names the option,
``model_changes`` lists what a resume may not change (not the runtime fields, not None), the dict round
trip, and the constants that mirror other modules (``PRESET_NAMES``, ``PRECONDITIONERS``)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from volscore.config import (
    AMP_MODES,
    AUGMENTATIONS,
    LR_SCHEDULES,
    OBJECTIVES,
    PRECONDITIONERS,
    PRESET_NAMES,
    RUNTIME_FIELDS,
    SIGMA_DISTS,
    WEIGHTINGS,
    TrainConfig,
)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"data": ["mnist"], "out": "r", "steps": 10, **kw})


def test_defaults_with_a_budget_are_valid():
    _cfg().validate()
    _cfg(steps=None, minutes=1.5).validate()
    _cfg(sigma_max=5.0, num_sigmas=2, batch_size=1, warmup=0, ema_decay=0.0, lr_schedule="cosine").validate()


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"steps": 0}, "--steps"),
        ({"steps": -3}, "--steps"),
        ({"batch_size": 0}, "--batch-size"),
        ({"batch_size": -1}, "--batch-size"),
        ({"data_shards": 0}, "--data-shards"),
        ({"patch_size": 0}, "--patch-size"),
        ({"ckpt_every": 0}, "--ckpt-every"),
        ({"log_every": 0}, "--log-every"),
        ({"minutes": math.inf}, "--minutes"),
        ({"minutes": math.nan}, "--minutes"),
        ({"minutes": 0.0}, "--minutes"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": math.nan}, "--lr"),
        ({"sigma_min": 0.0}, "--sigma-min"),
        ({"sigma_min": -0.1}, "--sigma-min"),
        ({"sigma_max": math.inf}, "--sigma-max"),
        ({"sigma_max": 0.01}, "--sigma-max"),  # = sigma_min
        ({"sigma_max": 0.005}, "--sigma-max"),  # < sigma_min
        ({"sigma_data": 0.0}, "--sigma-data"),
        ({"p_std": -1.0}, "--p-std"),
        ({"grad_clip": 0.0}, "--grad-clip"),
        ({"num_sigmas": 1}, "--num-sigmas"),
        ({"warmup": -1}, "--warmup"),
        ({"ema_decay": 1.0}, "--ema-decay"),
        ({"p_mean": math.nan}, "--p-mean"),
        ({"spacing": 0.0}, "--spacing"),
        ({"spacing": math.inf}, "--spacing"),
        ({"steps": None, "minutes": None}, "--steps or --minutes"),
        ({"steps": None, "minutes": 1.0, "lr_schedule": "cosine"}, "--steps"),
        ({"compile": True, "objective": "ssm-vr"}, "--compile"),
        ({"objective": "ism"}, "objective"),
        ({"sigma_dist": "uniform"}, "sigma_dist"),
        ({"amp": "fp8"}, "amp"),
        ({"weighting": "unit"}, "weighting"),
        ({"precond": "ve"}, "precond"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"augment": ["rotate"]}, "--augment"),
        ({"augment": ["flip", "flip"]}, "--augment"),
        ({"multires": []}, "--multires"),
        ({"multires": [2.0, 0.0]}, "--multires"),
        ({"multires": [math.nan]}, "--multires"),
    ],
)
def test_validate_refusals_name_the_option(changes, option):
    with pytest.raises(ValueError) as info:
        _cfg(**changes).validate()
    assert option in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "name, allowed",
    [
        ("objective", OBJECTIVES),
        ("sigma_dist", SIGMA_DISTS),
        ("amp", AMP_MODES),
        ("weighting", WEIGHTINGS),
        ("precond", PRECONDITIONERS),
        ("lr_schedule", LR_SCHEDULES),
    ],
)
def test_every_listed_choice_validates_and_matches_the_flag(name, allowed):
    for value in allowed:
        extra = {"compile": False} if name == "objective" else {}
        _cfg(**{name: value, **extra}).validate()
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    assert tuple(field.metadata["choices"]) == allowed and field.default in allowed


def test_augmentations_are_the_flags_choices_and_round_trip():
    field = {f.name: f for f in dataclasses.fields(TrainConfig)}["augment"]
    assert tuple(field.metadata["choices"]) == AUGMENTATIONS and TrainConfig(data=[], out="r").augment == []
    cfg = _cfg(augment=list(AUGMENTATIONS), multires=[1.0, 2.5])
    cfg.validate()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert "augment" not in RUNTIME_FIELDS and "multires" not in RUNTIME_FIELDS  # the data: fixed on resume


def test_preset_names_are_the_presets_and_preconditioners_are_the_kinds():
    import torch

    from volscore.nets import build_model_from_args, model_args
    from volscore.nets.presets import PRESETS

    assert PRESET_NAMES == tuple(PRESETS)
    # Every listed kind is one the preconditioner implements, each its own way (same net, other outputs).
    x, sigma = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.1, 2.0])
    outputs = []
    for kind in PRECONDITIONERS:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)  # the same initial weights for both kinds
            model = build_model_from_args(model_args("tiny", 2, kind=kind))
            outputs.append(model(x, sigma))
        assert model.kind == kind
    assert not torch.allclose(outputs[0], outputs[1])
    with pytest.raises(ValueError, match="kind must be one of"):
        build_model_from_args(model_args("tiny", 2, kind="ve"))


def test_model_changes_ignores_runtime_fields_and_none():
    saved = _cfg(sigma_max=5.0, num_sigmas=10, batch_size=8)
    runtime = {"steps": 99, "minutes": 3.0, "device": "cuda", "compile": True, "channels_last": True}
    runtime |= {"ckpt_every": 7, "log_every": 3}
    assert set(runtime) == set(RUNTIME_FIELDS)
    resolved_later = {"sigma_max": None, "num_sigmas": None, "batch_size": None}
    assert saved.model_changes(_cfg(out="elsewhere", **runtime, **resolved_later)) == []
    changes = saved.model_changes(_cfg(preset="tiny", lr=1e-3, sigma_max=6.0, **runtime))
    assert changes == ["preset: 'small' -> 'tiny'", "lr: 0.0002 -> 0.001", "sigma_max: 5.0 -> 6.0"]


def test_dict_round_trip_ignores_unknown_keys():
    cfg = _cfg(preset="tiny", sigma_max=2.5, data=["a.nii.gz", "b.nii.gz"], init="runs/x")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({**cfg.to_dict(), "removed_option": 1}) == cfg  # an older run's extra key


@pytest.mark.reliability
@pytest.mark.parametrize(
    "changes, option",
    [
        ({"seed": -1}, "--seed"),
        ({"seed": 2**63}, "--seed"),
        ({"steps": -1}, "--steps"),
        ({"batch_size": -4}, "--batch-size"),
        ({"minutes": -1.0}, "--minutes"),
        ({"minutes": -math.inf}, "--minutes"),
        ({"sigma_min": math.nan}, "--sigma-min"),
        ({"sigma_min": math.inf}, "--sigma-min"),
        ({"sigma_max": math.nan}, "--sigma-max"),
        ({"lr": math.inf}, "--lr"),
        ({"num_sigmas": 0}, "--num-sigmas"),
        ({"coord_frequencies": -1}, "--coord-frequencies"),
        ({"coord_frequencies": 13}, "--coord-frequencies"),
        ({"spacing": -1.0}, "--spacing"),
    ],
)
def test_out_of_range_numbers_are_refused_naming_the_option(changes, option):
    with pytest.raises(ValueError) as info:
        _cfg(**changes).validate()
    assert option in str(info.value), str(info.value)


@pytest.mark.reliability
def test_the_seed_range_is_inclusive():
    _cfg(seed=0).validate()
    _cfg(seed=2**63 - 1).validate()
