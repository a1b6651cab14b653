"""volscore.sampling.settings: the sampler record, its validation and the per-kind default (``auto``)."""

from __future__ import annotations

import pytest

from volscore.sampling.settings import (
    AUTO,
    DEFAULT_SAMPLERS,
    FALLBACK_SAMPLER,
    SAMPLERS,
    SamplerSettings,
)
from volscore.sampling.table import run_sampler, sampling_sigmas


@pytest.mark.parametrize("kind", ["mnist", "nifti", "shapes", "self-supervised"])
def test_auto_resolves_to_the_measured_best_for_the_kind(kind):
    chosen = DEFAULT_SAMPLERS.get(kind, FALLBACK_SAMPLER)
    resolved = SamplerSettings().for_kind(kind)
    assert (resolved.sampler, resolved.steps) == (chosen["sampler"], chosen["steps"])
    assert resolved.sampler in SAMPLERS
    resolved.validate()


def test_auto_keeps_asked_steps_and_a_named_sampler_is_left_alone():
    assert SamplerSettings(steps=7).for_kind("nifti").steps == 7
    named = SamplerSettings(sampler="annealed", n_steps_each=2)
    assert named.for_kind("mnist") is named


def test_auto_fills_the_kinds_measured_constants_unless_given():
    assert SamplerSettings().for_kind("mnist").sigma_min == DEFAULT_SAMPLERS["mnist"]["sigma_min"]
    assert SamplerSettings(sigma_min=0.02).for_kind("mnist").sigma_min == 0.02  # asked: kept
    assert SamplerSettings().for_kind("self-supervised").sigma_min is None  # the run's own
    assert SamplerSettings(sampler="edm").for_kind("mnist").sigma_min is None  # a named sampler: as given


def test_a_last_level_above_the_first_is_refused_naming_both():
    settings = SamplerSettings().for_kind("nifti")  # ends at 0.06
    with pytest.raises(ValueError, match="sigma_min 0.06 .* sigma_max 0.05"):
        sampling_sigmas(settings, 0.001, 0.05, 10)  # a run trained on sigma <= 0.05 only
    assert len(sampling_sigmas(settings, 0.001, 1.0, 10)) == settings.steps


def test_every_kind_default_is_a_known_sampler_with_levels():
    for chosen in [*DEFAULT_SAMPLERS.values(), FALLBACK_SAMPLER]:
        assert chosen["sampler"] in SAMPLERS and chosen["steps"] >= 2


def test_an_unresolved_auto_is_refused_where_a_sampler_is_needed():
    auto = SamplerSettings()
    assert auto.sampler == AUTO
    with pytest.raises(ValueError, match="for_kind"):
        auto.network_evaluations(18)
    with pytest.raises(ValueError, match="for_kind"):
        sampling_sigmas(auto, 0.01, 10.0, 10)
    with pytest.raises(ValueError, match="for_kind"):
        run_sampler(auto, lambda x, s: x, None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sampler, levels, nfe", [("heun", 18, 35), ("edm", 40, 79), ("dpm", 35, 35), ("annealed", 94, 283)]
)
def test_network_evaluations(sampler, levels, nfe):
    extra = {"n_steps_each": 3} if sampler == "annealed" else {}
    assert SamplerSettings(sampler=sampler, **extra).network_evaluations(levels) == nfe


def test_unknown_sampler_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="auto"):
        SamplerSettings(sampler="ddim").validate()
