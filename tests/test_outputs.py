"""Tests for volscore/outputs.py: the output guard (an output that is an input, through a symlink, a hard
link or a name differing only in case; an output given twice; an existing file without force; a folder)
and ``check_run_folder`` (foreign files or a foreign config.json refused; an empty, missing or volscore run
folder accepted). Every refusal leaves the files as they were."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from volscore.outputs import OutputError, check_outputs, check_run_folder


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"input")
    return path


def test_new_outputs_pass_and_come_back_as_paths(tmp_path, scan):
    outs = check_outputs([str(tmp_path / "a.nii.gz"), tmp_path / "b.png"], inputs=[scan])
    assert outs == [tmp_path / "a.nii.gz", tmp_path / "b.png"]
    assert check_outputs([], inputs=[scan]) == []


@pytest.mark.reliability
def test_output_that_is_the_input_is_refused_even_with_force(tmp_path, scan):
    with pytest.raises(OutputError, match="refusing to overwrite the input"):
        check_outputs([scan], inputs=[scan], force=True)
    with pytest.raises(OutputError, match="refusing to overwrite the input"):  # another spelling of it
        check_outputs([tmp_path / "sub" / ".." / "scan.nii.gz"], inputs=[scan], force=True)
    assert scan.read_bytes() == b"input"


@pytest.mark.reliability
def test_output_through_a_symlink_or_hard_link_to_the_input_is_refused(tmp_path, scan):
    link = tmp_path / "link.nii.gz"
    os.symlink(scan, link)
    hard = tmp_path / "hard.nii.gz"
    os.link(scan, hard)
    for out in (link, hard):
        with pytest.raises(OutputError, match="refusing to overwrite the input"):
            check_outputs([out], inputs=[scan], force=True)
    with pytest.raises(OutputError, match="refusing to overwrite the input"):  # the input given by its link
        check_outputs([scan], inputs=[link], force=True)


@pytest.mark.reliability
def test_output_differing_from_the_input_only_in_case_is_refused(tmp_path, scan):
    # On case-insensitive file systems (macOS, Windows) SCAN.NII.GZ is scan.nii.gz: refused everywhere.
    with pytest.raises(OutputError, match="refusing to overwrite the input"):
        check_outputs([tmp_path / "SCAN.nii.gz"], inputs=[scan], force=True)
    with pytest.raises(OutputError, match="given twice"):
        check_outputs([tmp_path / "Out.png", tmp_path / "out.PNG"])


@pytest.mark.reliability
def test_an_output_given_twice_is_refused(tmp_path, scan):
    out = tmp_path / "out.png"
    with pytest.raises(OutputError, match="given twice"):
        check_outputs([out, tmp_path / "x.json", tmp_path / "." / "out.png"], inputs=[scan])
    out.write_bytes(b"old")
    link = tmp_path / "out_link.png"
    os.symlink(out, link)
    with pytest.raises(OutputError, match="given twice"):
        check_outputs([out, link], force=True)


def test_existing_output_needs_force_and_a_folder_is_never_a_file(tmp_path, scan):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--force"):
        check_outputs([out], inputs=[scan])
    assert check_outputs([out], inputs=[scan], force=True) == [out]
    dangling = tmp_path / "dangling.png"
    os.symlink(tmp_path / "gone.png", dangling)
    with pytest.raises(FileExistsError, match="--force"):  # a dangling link is still something there
        check_outputs([dangling])
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        check_outputs([tmp_path / "folder.png"], force=True)
    assert out.read_bytes() == b"precious"


def test_output_guard_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "x.png").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        check_outputs(["~/x.png"])


# -- check_run_folder ----------------------------------------------------------------------------------------
def test_run_folder_missing_or_empty_is_accepted(tmp_path):
    assert check_run_folder(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_run_folder(tmp_path / "empty") == tmp_path / "empty"


def _our_config(folder: Path) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {}, "model_args": {}, "data": {}}))


def test_run_folder_of_our_own_run_is_accepted(tmp_path, tiny_mnist_run):
    assert check_run_folder(tiny_mnist_run) == tiny_mnist_run  # a whole run (config, checkpoint, metrics)
    _our_config(tmp_path / "started")  # a run stopped before its first checkpoint
    (tmp_path / "started" / "metrics.csv").write_text("step\n")
    (tmp_path / "started" / ".checkpoint.x.tmp.pt").write_bytes(b"")
    assert check_run_folder(tmp_path / "started") == tmp_path / "started"


@pytest.mark.reliability
def test_run_folder_with_foreign_files_is_refused(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(OutputError, match="holiday.jpg"):
        check_run_folder(foreign)
    _our_config(tmp_path / "mixed")  # a run's config beside a file of the user's
    (tmp_path / "mixed" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        check_run_folder(tmp_path / "mixed")
    assert (foreign / "holiday.jpg").read_bytes() == b"jpg"


def test_run_folder_with_a_foreign_config_is_refused(tmp_path):
    for name, text in (("other", '{"name": "another tool"}'), ("broken", "{not json"), ("list", "[1, 2]")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(text)
        with pytest.raises(OutputError, match="config.json of something else"):
            check_run_folder(folder)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_run_folder(tmp_path / "a_file")


# -- RunLock -------------------------------------------------------------------------------------------------
HOLD_LOCK = """
import sys
from volscore.outputs import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()  # hold it until killed or stdin closes
"""


@pytest.mark.reliability
def test_run_lock_refuses_a_live_holder_naming_it_and_takes_over_after_a_kill(tmp_path):
    import signal
    import subprocess
    import sys

    from volscore.outputs import RUN_LOCK, RunLock, RunLockError

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        held = json.loads((tmp_path / "run" / RUN_LOCK).read_text())
        assert held["pid"] == holder.pid and held["host"]
        with pytest.raises(RunLockError, match=f"PID {holder.pid} on {held['host']}"):
            RunLock(tmp_path / "run").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # no release: the file stays, naming a process that is gone
        holder.wait()
    assert json.loads((tmp_path / "run" / RUN_LOCK).read_text())["pid"] == holder.pid
    lock = RunLock(tmp_path / "run").acquire()  # stale: the kernel dropped the dead process's flock
    assert lock.held and lock.stale["pid"] == holder.pid
    assert json.loads((tmp_path / "run" / RUN_LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run" / RUN_LOCK).exists()


@pytest.mark.reliability
def test_run_lock_is_one_holder_at_a_time_in_one_process_too(tmp_path):
    from volscore.outputs import RUN_LOCK, RunLock, RunLockError

    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockError, match="this process"):
        RunLock(tmp_path).acquire()
    assert first.acquire() is first and first.held  # acquiring again what one holds is a no-op
    first.release()
    first.release()  # twice is harmless
    second = RunLock(tmp_path).acquire()
    assert second.stale is None and (tmp_path / RUN_LOCK).exists()
    second.release()


def test_run_folder_holding_only_a_lock_is_a_run_that_is_starting(tmp_path):
    from volscore.outputs import RUN_LOCK

    (tmp_path / "starting").mkdir()
    (tmp_path / "starting" / RUN_LOCK).write_text("{}")
    assert check_run_folder(tmp_path / "starting") == tmp_path / "starting"
