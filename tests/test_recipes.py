"""volscore.recipes: the training recipes of the bundled models and the baseline, and the main job (``demo``)
end to end with tiny models standing in for the bundled ones."""

from __future__ import annotations

import json

import pytest

from volscore.options import BASELINE_RECIPES, BaselineOptions, DemoOptions
from volscore.recipes import baseline_config, demo, demo_files, denoiser_config, prior_config


@pytest.mark.parametrize("recipe", sorted(BASELINE_RECIPES))
def test_baseline_config_follows_the_recipe_and_an_explicit_lr_wins(recipe):
    cfg = baseline_config(BaselineOptions(recipe=recipe))
    cfg.validate()
    for key, value in BASELINE_RECIPES[recipe].items():
        assert getattr(cfg, key) == value
    assert baseline_config(BaselineOptions(recipe=recipe, lr=3e-4)).lr == 3e-4


def test_baseline_refuses_an_unknown_recipe():
    with pytest.raises(ValueError, match="--recipe"):
        BaselineOptions(recipe="ddpm").validate()


def test_prior_recipe_has_coordinates_with_fourier_features_on_the_whole_template():
    cfg = prior_config("runs/x")
    cfg.validate()
    assert cfg.coords and cfg.coord_frequencies > 0 and cfg.full_volume and cfg.spacing == 3.0
    assert (cfg.sigma_dist, cfg.weighting) == ("lognormal", "edm")


def test_denoiser_recipe_never_sees_the_holdout_and_transfers():
    cfg = denoiser_config("runs/x")
    cfg.validate()
    assert not cfg.full_volume  # the template's y >= 120 hold-out stays out of training
    assert not cfg.coords  # another scan's field of view puts anatomy elsewhere
    assert set(cfg.augment) == {"flip", "affine", "gamma", "bias"} and cfg.multires
    assert cfg.sigma_min < 0.05 < cfg.sigma_max  # the noise levels of scans lie inside the training range


@pytest.mark.parametrize(
    "changes, option",
    [({"minutes": -1.0}, "--minutes"), ({"noise": 0.0}, "--noise"), ({"seed": -1}, "seed")],
)
def test_demo_options_are_checked(changes, option):
    with pytest.raises(ValueError, match=option):
        DemoOptions(**changes).validate()


@pytest.fixture
def tiny_registry(tmp_path, monkeypatch, tiny_run):
    """The tiny 3D run registered as both bundled models the demo uses."""
    from test_pretrained import _register

    folder = tmp_path / "models"
    for name in ("mni152-prior", "t1-denoiser"):
        _register(folder, name, tiny_run)
    monkeypatch.setenv("VOLSCORE_PRETRAINED", str(folder))
    return folder


@pytest.mark.slow
def test_demo_samples_denoises_and_writes_every_file_it_names(tiny_registry, tmp_path):
    from volscore.sampling.settings import SamplerSettings

    out = tmp_path / "demo"
    lines: list[str] = []
    result = demo(DemoOptions(out=str(out)), SamplerSettings(steps=4), say=lines.append)
    files = demo_files(out)
    assert all(path.is_file() for path in files.values())
    record = json.loads(files["record"].read_text())
    assert record["prior"] == "pretrained:mni152-prior" and record["denoiser"] == "pretrained:t1-denoiser"
    # the noisy copy's PSNR follows from its sigma: 20 log10(1 / 0.05) = 26.0 dB, within the Monte Carlo error
    assert abs(result["denoise"]["psnr_noisy"] - 26.02) < 0.1
    assert "PSNR" in "\n".join(lines) and str(files["brain"]) in "\n".join(lines)
    # a second call refuses to replace the files without --force, before any work
    with pytest.raises(Exception, match="exists"):
        demo(DemoOptions(out=str(out)), SamplerSettings(steps=4), say=lines.append)


@pytest.mark.slow
def test_demo_minutes_fine_tunes_the_prior_and_samples_from_the_tuned_run(tiny_registry, tmp_path):
    from volscore.run import Run
    from volscore.sampling.settings import SamplerSettings

    out = tmp_path / "demo"
    result = demo(DemoOptions(out=str(out), minutes=0.01), SamplerSettings(steps=3), say=lambda _: None)
    tuned = Run.load(out / "prior")
    assert tuned.data["init_from"]["init"] == "pretrained:mni152-prior"
    assert result["prior"] == str(out / "prior") and tuned.step >= 1
