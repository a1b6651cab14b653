"""Tests for volscore/checkpoint.py: safe loading (weights_only; unsafe, corrupt, missing and foreign files
refused with the file's name), atomic saving, stale temporaries, and model-argument mismatches named."""

from __future__ import annotations

import pickle

import pytest
import torch

from volscore.checkpoint import (
    CheckpointError,
    check_model_args,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)


class _Evil:
    def __reduce__(self):
        return (print, ("this would have run code",))


@pytest.mark.reliability
def test_unsafe_and_corrupt_checkpoints_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil(), "model_args": {}}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        load_checkpoint(evil)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.reliability
def test_atomic_checkpoint_keeps_previous_file_when_save_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": {}, "model_args": {}, "step": 1})

    def boom(obj, f, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {}, "model_args": {}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    state = {
        "model": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)},
        "model_args": {"preset": "tiny", "net": {"spatial_dims": 3, "channels": [8, 16]}},
        "step": 7,
        "config": {"sigma_max": None, "data": ["mnist"]},
    }
    path = save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(path)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["model"]["n"].item() == 3
    assert {k: back[k] for k in ("model_args", "step", "config")} == {
        k: state[k] for k in ("model_args", "step", "config")
    }


def test_a_readable_file_that_is_not_a_volscore_checkpoint_is_refused(tmp_path):
    for name, obj in (("list.pt", [1, 2]), ("weights.pt", {"model": {}}), ("args.pt", {"model_args": {}})):
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name}: not a volscore checkpoint"):
            load_checkpoint(tmp_path / name)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.zeros(1000)}, "model_args": {}})
    path.write_bytes(path.read_bytes()[:500])  # a copy cut short
    with pytest.raises(CheckpointError, match="c.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_remove_stale_temporaries_removes_only_this_checkpoint_s_temporaries(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}, "model_args": {}})
    stale = [tmp_path / ".checkpoint.a1b2.tmp.pt", tmp_path / ".checkpoint.zz.tmp.pt"]
    others = [tmp_path / ".metrics.a1.tmp.csv", tmp_path / ".other.x.tmp.pt", tmp_path / "notes.txt"]
    for p in stale + others:
        p.write_bytes(b"x")
    assert remove_stale_temporaries(path) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others + [path])
    assert remove_stale_temporaries(path) == []


def test_check_model_args_names_every_mismatch():
    run = {"preset": "tiny", "net": {"spatial_dims": 3, "channels": [8, 16], "coord_channels": True}}
    check_model_args("c.pt", run, {**run})  # the same: no error
    other = {"preset": "small", "net": {"spatial_dims": 3, "channels": [16, 32], "coord_channels": True}}
    with pytest.raises(CheckpointError, match="c.pt: checkpoint is for a different model") as info:
        check_model_args("c.pt", run, other)
    message = str(info.value)
    assert "preset: run has 'tiny', checkpoint has 'small'" in message
    assert "net.channels: run has [8, 16], checkpoint has [16, 32]" in message
    assert "spatial_dims" not in message and "coord_channels" not in message
    with pytest.raises(CheckpointError, match="net.kind: run has 'edm', checkpoint has None"):
        check_model_args("c.pt", {"net": {"kind": "edm"}}, {"net": {}})  # a key missing on one side
