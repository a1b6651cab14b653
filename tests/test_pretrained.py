"""volscore.pretrained: the bundled-model registry. Cards and weights are checked (sha256, weights_only),
unknown names and damaged files are clear errors, ``pretrained:NAME`` works wherever a run is accepted,
and ``volscore denoise`` without a model uses the bundled T1 denoiser. The tests use a registry folder of
their own ($VOLSCORE_PRETRAINED) holding a tiny exported run; ``test_bundled_*`` check the package's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from volscore.checkpoint import CheckpointError
from volscore.pretrained import (
    FOLDER,
    describe,
    export_weights,
    list_models,
    load_card,
    load_pretrained_state,
    sha256,
)
from volscore.run import Run


def _register(folder: Path, name: str, run_dir: Path) -> Path:
    """Export ``run_dir`` as bundled model ``name`` into ``folder`` with a minimal card."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.pt"
    size = export_weights(run_dir, weights)
    card = {"name": name, "summary": "tiny test model", "weights": weights.name, "sha256": sha256(weights)}
    (folder / f"{name}.json").write_text(json.dumps({**card, "size_bytes": size}))
    return weights


@pytest.fixture
def registry(tmp_path, monkeypatch, tiny_run):
    folder = tmp_path / "models"
    _register(folder, "tiny-3d", tiny_run)
    monkeypatch.setenv("VOLSCORE_PRETRAINED", str(folder))
    return folder


def test_export_keeps_the_ema_weights_in_float16_and_loads_like_the_run(registry, tiny_run):
    state = load_pretrained_state("tiny-3d")
    assert "optimizer" not in state and state["data"]["pretrained"] == "tiny-3d"
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    bundled, original = Run.load("pretrained:tiny-3d"), Run.load(tiny_run)
    assert bundled.name == "pretrained:tiny-3d" and bundled.step == original.step
    assert bundled.patch_size == original.patch_size and bundled.coords == original.coords
    x = torch.randn(1, 1, *[bundled.patch_size] * 3, generator=torch.Generator().manual_seed(0))
    c = torch.zeros(1, 3, *x.shape[2:])
    sigma = torch.tensor([0.3])
    with torch.no_grad():
        a, b = bundled.model(x, sigma, c), original.model(x, sigma, c)
    # float16 weights: a relative error of about 2^-11 per weight, so outputs agree to about 1e-3
    assert torch.allclose(a, b, rtol=0, atol=5e-3 * float(b.abs().max()))


def test_list_describe_and_cards(registry):
    assert list_models() == ["tiny-3d"]
    card = load_card("tiny-3d")
    assert card["weights"] == "tiny-3d.pt"
    text = describe("tiny-3d")
    assert text.startswith("pretrained:tiny-3d") and card["sha256"] in text


@pytest.mark.reliability
def test_unknown_name_lists_the_bundled_models(registry):
    with pytest.raises(CheckpointError, match=r"no-such.*bundled: tiny-3d"):
        Run.load("pretrained:no-such")


@pytest.mark.reliability
def test_weights_that_do_not_match_the_card_are_refused(registry):
    weights = registry / "tiny-3d.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tiny-3d.*does not match its card"):
        Run.load("pretrained:tiny-3d")


@pytest.mark.reliability
def test_a_card_that_is_not_json_or_lacks_the_hash_is_refused(registry):
    (registry / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_card("bad")
    (registry / "bad.json").write_text(json.dumps({"weights": "tiny-3d.pt"}))
    with pytest.raises(CheckpointError, match="sha256"):
        load_card("bad")


@pytest.mark.reliability
def test_missing_weights_file_is_a_clear_error(registry):
    (registry / "tiny-3d.pt").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        Run.load("pretrained:tiny-3d")


def test_fine_tuning_from_a_bundled_model_records_where_it_started(registry, tmp_path, tiny_volume):
    from conftest import train_tiny

    run_dir = train_tiny(
        tmp_path / "tuned", [str(tiny_volume)], patch_size=Run.load("pretrained:tiny-3d").patch_size,
        init="pretrained:tiny-3d",
    )  # fmt: skip
    tuned = Run.load(run_dir)
    assert tuned.data["init_from"]["init"] == "pretrained:tiny-3d"


def test_denoise_without_a_model_uses_the_bundled_t1_denoiser(registry, tmp_path, tiny_volume, capsys):
    """``volscore denoise IN OUT`` with neither --run nor --self-supervised: the bundled t1-denoiser, said."""
    import shutil

    from volscore.cli import main

    shutil.copy(registry / "tiny-3d.pt", registry / "t1-denoiser.pt")
    card = load_card("tiny-3d")
    (registry / "t1-denoiser.json").write_text(json.dumps({**card, "weights": "t1-denoiser.pt"}))
    out = tmp_path / "den.nii.gz"
    status = main(
        ["denoise", str(tiny_volume), str(out), "--sigma", "0.05", "--threads", "1", "--check", "off"]
    )
    assert status == 0 and out.is_file()
    text = capsys.readouterr().out
    assert "pretrained:t1-denoiser" in text
    record = json.loads((tmp_path / "den.denoise.json").read_text())
    assert record["run"] == "pretrained:t1-denoiser"


def test_denoise_options_default_model_only_when_none_is_given():
    from volscore.options import DEFAULT_DENOISER, DenoiseOptions

    options, note = DenoiseOptions().with_default_model()
    assert options.run == DEFAULT_DENOISER and note and DEFAULT_DENOISER in note
    given, note = DenoiseOptions(run="runs/x").with_default_model()
    assert given.run == "runs/x" and note is None
    selfsup, note = DenoiseOptions(self_supervised=True).with_default_model()
    assert selfsup.run is None and note is None
    with pytest.raises(ValueError, match="not both"):
        DenoiseOptions(run="runs/x", self_supervised=True).validate()


@pytest.mark.parametrize("name", sorted(p.stem for p in FOLDER.glob("*.json")))
def test_bundled_cards_match_their_weights_and_say_how_they_were_made(name, monkeypatch):
    monkeypatch.delenv("VOLSCORE_PRETRAINED", raising=False)
    card = load_card(name)
    for key in ("command", "reproduce", "steps", "machine", "date", "data", "sha256", "figures"):
        assert key in card, f"{name}.json lacks {key}"
    assert sha256(FOLDER / card["weights"]) == card["sha256"]
    state = load_pretrained_state(name)
    assert state["step"] == card["steps"]
    assert np.all([torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()])


def test_bundled_models_are_small(monkeypatch):
    total = sum(p.stat().st_size for p in FOLDER.glob("*.pt"))
    assert total <= 20 * 2**20, f"bundled weights take {total / 2**20:.1f} MB (limit 20 MB)"
