"""The one output guard: every file a command writes is checked here, before any work is done.

An output is refused if it is one of the command's inputs (also through symlinks, hard links or a name
that differs only in case), if two outputs are the same file, or if it exists and ``force`` is not given.
Checking first means a refusal costs nothing and leaves every file as it was. A run folder is also guarded
while it is trained: ``RunLock`` lets one training at a time write into it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path


class OutputError(ValueError):
    """An output path that would destroy an input or another output."""


def same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file or folder: through symlinks and hard links, or by a name that
    differs only in case (one file on macOS and Windows file systems)."""
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    # Compare names case-insensitively: on macOS and Windows file systems SCAN.nii and scan.nii are one file.
    return str(a.resolve()).casefold() == str(b.resolve()).casefold()


def check_outputs(
    outputs: Iterable[str | os.PathLike],
    inputs: Iterable[str | os.PathLike] = (),
    force: bool = False,
) -> list[Path]:
    """Refuse outputs that are inputs or each other, or that exist without ``force``; return them as Paths."""
    outs = [Path(o).expanduser() for o in outputs]
    ins = [Path(i).expanduser() for i in inputs]
    for i, out in enumerate(outs):
        for src in ins:
            if same_path(out, src):
                raise OutputError(f"{out}: refusing to overwrite the input {src}")
        for other in outs[:i]:
            if same_path(out, other):
                raise OutputError(f"{out}: given twice as an output ({other})")
        if out.is_dir():
            raise OutputError(f"{out}: is a folder, expected a file name")
        if (out.exists() or out.is_symlink()) and not force:
            raise FileExistsError(f"{out}: exists; pass --force to replace it")
    return outs


RUN_LOCK = "run.lock"  # held by the process that trains in a run folder (``RunLock``)
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.csv", "loss.png", RUN_LOCK)


def check_run_folder(path: str | os.PathLike) -> Path:
    """A new run may go into a missing or empty folder, or one holding only a run's own files (a run that
    stopped before its first checkpoint); any other folder is refused, so no file of the user's is lost."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; give a new folder for the run")
    if not out.is_dir() or {p.name for p in out.iterdir() if not p.name.startswith(".")} <= {RUN_LOCK}:
        return out  # missing, empty, or a run that is starting (its lock says whether it is still alive)
    config = out / "config.json"
    try:
        ours = {"config", "model_args"} <= set(json.loads(config.read_text()))
    except (OSError, ValueError, TypeError):
        ours = False
    others = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.startswith("."))
    if not ours or others:
        listed = ", ".join(others[:5]) or "config.json of something else"
        raise OutputError(f"{out}: not an empty folder or a volscore run (holds {listed}); give a new --out")
    return out


class RunLockError(OutputError):
    """Another process is training in this run folder."""


class RunLock:
    """One training at a time in a run folder: ``run.lock`` holds the trainer's PID and host, and an exclusive
    ``flock`` on it while the process lives.

    The kernel drops the ``flock`` when its process ends, however it ends (a kill, a crash, a power cut on a
    local disk), so a lock left by a killed process is stale by construction and is taken over in the same
    atomic step that would have refused a live one: no PID guessing (a reused PID cannot keep a run locked)
    and no window in which two processes both take over. ``acquire`` refuses a live lock naming the PID and
    host that hold it; ``release`` removes the file. Where ``flock`` does not exist (Windows) or the file
    system does not support it, the run is not locked.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder).expanduser() / RUN_LOCK
        self.stale: dict | None = None  # what a taken-over stale lock said (PID, host, since)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (making the folder if needed) or raise ``RunLockError`` naming its holder."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            return self
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockError(_held_message(self.path.parent, holder)) from None
            except OSError:  # a file system without flock (some network mounts): run unlocked
                os.close(fd)
                return self
            try:  # the holder we waited for may have removed the file: then lock the new one
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        previous = _read_holder(fd)
        self.stale = previous or None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (in this order: a waiter then finds the file gone)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _held_message(folder: Path, holder: dict) -> str:
    pid, host = holder.get("pid", "unknown"), holder.get("host", "unknown host")
    who = "this process" if pid == os.getpid() and host == socket.gethostname() else f"PID {pid} on {host}"
    since = f" since {holder['since']}" if "since" in holder else ""
    return (
        f"{folder}: another training is running in this run folder ({who}{since}, {RUN_LOCK}); "
        f"wait for it to end or stop it (kill -INT {pid} saves a checkpoint), then resume with --resume"
    )
