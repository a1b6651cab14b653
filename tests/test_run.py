"""Tests for volscore/run.py: ``Run.load`` of the tiny runs (conftest) reports the facts their readers need
(2D MNIST, 3D NIfTI patches with coordinates, whole shapes); missing folders, corrupted checkpoints and
weights that do not fit are clear ``CheckpointError``s; ``pretrained:NAME`` goes to ``volscore.pretrained``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from phantoms import PATCH, ZOOMS

from volscore.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from volscore.data.nifti import IntensityScaler, load_volume
from volscore.nets.precond import Preconditioner
from volscore.run import Run


def _frozen(model: torch.nn.Module) -> bool:
    return not model.training and not any(p.requires_grad for p in model.parameters())


def test_mnist_run_facts(tiny_mnist_run):
    run = Run.load(tiny_mnist_run)
    assert run.name == str(tiny_mnist_run) and run.step == 2
    assert isinstance(run.model, Preconditioner) and _frozen(run.model)
    assert (run.spatial_dims, run.channels, run.coords, run.kind) == (2, 1, False, "mnist")
    assert run.patch_size is None and run.sample_shape == [28, 28] and run.zooms == [1.0, 1.0]
    assert run.scaler() is None
    assert run.sigma_range == (0.01, 1.0) and run.num_sigmas == 10
    assert run.config.preset == "tiny" and run.config.data == ["mnist"]
    with torch.no_grad():
        out = run.model(torch.zeros(2, 1, 28, 28), torch.tensor([0.1, 1.0]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


def test_nifti_run_facts(tiny_run, tiny_volume):
    run = Run.load(str(tiny_run))
    assert (run.spatial_dims, run.channels, run.coords, run.kind) == (3, 1, True, "nifti")
    assert run.patch_size == PATCH and run.sample_shape == [24, 24, 24]
    assert run.zooms == pytest.approx(list(ZOOMS))
    scaler = run.scaler()
    expected = IntensityScaler.fit(load_volume(tiny_volume).data)
    assert isinstance(scaler, IntensityScaler)
    assert (scaler.lo, scaler.hi) == pytest.approx((expected.lo, expected.hi))
    assert run.data["paths"] == [str(tiny_volume)] and run.data["shapes"] == [[24, 24, 24]]
    x, coords = torch.zeros(1, 1, PATCH, PATCH, PATCH), torch.zeros(1, 3, PATCH, PATCH, PATCH)
    with torch.no_grad():
        assert run.model(x, torch.tensor([0.5]), coords).shape == x.shape


def test_shapes_run_facts(tiny_shapes_run):
    run = Run.load(tiny_shapes_run)
    assert (run.spatial_dims, run.coords, run.kind) == (3, False, "shapes")
    assert run.patch_size is None and run.sample_shape == [16, 16, 16]
    assert run.data["shape_kind"] == "primitives" and run.data["size"] == 16


def test_ema_weights_by_default_raw_weights_on_request(tiny_mnist_run):
    state = load_checkpoint(tiny_mnist_run / CHECKPOINT_NAME)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    loaded = Run.load(tiny_mnist_run).model.state_dict()
    raw = Run.load(tiny_mnist_run, use_ema=False).model.state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in loaded)
    assert all(torch.equal(raw[k], state["model"][k]) for k in raw)
    assert any(not torch.equal(loaded[k], raw[k]) for k in raw)  # two steps apart: not the same weights


def test_missing_folder_and_folder_without_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no run directory here.*volscore train --out"):
        Run.load(tmp_path / "nope")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CheckpointError, match="no run directory"):
        Run.load(tmp_path / "a_file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint at this path"):
        Run.load(tmp_path / "empty")


@pytest.mark.reliability
def test_corrupted_checkpoint_is_a_clear_error(tmp_path, tiny_mnist_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_run, run)
    data = (run / CHECKPOINT_NAME).read_bytes()
    (run / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT_NAME}: not a readable checkpoint"):
        Run.load(run)


@pytest.mark.reliability
def test_weights_that_do_not_fit_the_model_arguments_are_a_clear_error(tmp_path, tiny_mnist_run):
    state = load_checkpoint(tiny_mnist_run / CHECKPOINT_NAME)
    state["model_args"]["net"]["channels"] = [16, 32]  # tampered: another width than the weights
    state.pop("ema")
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / CHECKPOINT_NAME, state)
    with pytest.raises(CheckpointError, match="weights do not fit the stored model arguments"):
        Run.load(tmp_path / "run")


def test_older_run_without_kind_or_sigma_max(tiny_mnist_run):
    state = load_checkpoint(tiny_mnist_run / CHECKPOINT_NAME)
    state["data"] = {}  # an older run: the kind follows from the dimension
    state["config"]["sigma_max"] = None
    run = Run.from_state(state, "old run")
    assert run.kind == "mnist" and run.sample_shape == [28, 28]
    with pytest.raises(CheckpointError, match="old run: the run stores no sigma_max"):
        _ = run.sigma_range


def test_pretrained_prefix_goes_to_volscore_pretrained(monkeypatch, tiny_mnist_run):
    state = load_checkpoint(tiny_mnist_run / CHECKPOINT_NAME)
    asked = []

    def load_pretrained_state(name, map_location="cpu"):
        asked.append(name)
        return state

    fake = types.ModuleType("volscore.pretrained")
    fake.load_pretrained_state = load_pretrained_state
    monkeypatch.setitem(sys.modules, "volscore.pretrained", fake)
    run = Run.load("pretrained:mnist-tiny")
    assert asked == ["mnist-tiny"] and run.name == "pretrained:mnist-tiny" and run.kind == "mnist"
    assert run.step == 2


@pytest.mark.skipif(
    importlib.util.find_spec("volscore.pretrained") is None, reason="volscore.pretrained not written yet"
)
def test_unknown_pretrained_name_is_a_clear_error():
    with pytest.raises((CheckpointError, ValueError, KeyError)) as info:
        Run.load("pretrained:no-such-model-xyz")
    assert "no-such-model-xyz" in str(info.value)


def test_sample_shape_and_zooms_from_the_data_record():
    from volscore.config import TrainConfig

    net = {"spatial_dims": 3, "in_channels": 2, "coord_channels": False}
    data = {"kind": "nifti", "sample_shape": [5, 6, 7], "zooms": [[0.5, 0.5, 3.0]]}
    cfg = TrainConfig(data=["x"], out="", patch_size=8, sigma_max=2.0, num_sigmas=None)
    run = Run("x", lambda *a: None, cfg, {"net": net}, data, 0)
    assert run.sample_shape == [5, 6, 7] and run.zooms == [0.5, 0.5, 3.0] and run.channels == 2
    assert run.patch_size == 8 and run.num_sigmas == 2 and np.isclose(run.sigma_range[1], 2.0)
