"""Tests for volscore/atomic.py: files appear whole or not at all, keep their suffixes while being written,
and follow the umask like any other new file (``mkstemp`` alone would leave them 0600)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from volscore.atomic import atomic_write, atomic_write_json, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "hello")
    plain = tmp_path / "plain.txt"
    plain.write_text("hello")  # what open() makes under the same umask
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == 0o666 & ~mask == stat.S_IMODE(plain.stat().st_mode)
    assert mode != 0o600 or mask == 0o077


def test_atomic_write_replaces_whole_and_leaves_nothing_on_failure(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1} and path.read_text().endswith("\n")
    seen = []

    def fail(tmp):
        seen.append(tmp.name)
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary left
    assert seen[0].startswith(".r.") and seen[0].endswith(".tmp.json")


def test_atomic_write_keeps_a_double_suffix_and_makes_the_folder(tmp_path):
    names = []

    def write(tmp):
        names.append(tmp.name)
        tmp.write_bytes(b"nii")

    out = atomic_write(tmp_path / "new" / "scan.nii.gz", write)
    assert out.read_bytes() == b"nii" and names[0].endswith(".tmp.nii.gz")
