"""What every benchmark script shares: the report header, tables, JSON output, common flags, threads, and
child processes (training a ``TrainConfig`` or timing its steps in a fresh interpreter).

Import it from a script beside it::

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
    import harness  # noqa: E402  (also puts this checkout's volscore first on sys.path)

Child processes are started with multiprocessing's *spawn* method: a fresh interpreter, so its peak RSS is
its own and its thread count is set before torch starts. The function a child runs is named by module and
file (not pickled), so it may live in a script loaded by path (the smoke tests load them with importlib).
No torch import at module level: a child imports this module before its thread count is set.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
for _path in (str(SCRIPTS), str(ROOT)):  # run from a checkout without installing: this checkout's volscore
    if _path not in sys.path:
        sys.path.insert(0, _path)

from volscore.machine import available_cores, peak_rss_bytes, rss_bytes  # noqa: E402

MIB = 2**20
Log = Callable[[str], None]


# -- the report header ----------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Date, CPU, cores, torch, threads, Python and the load average now (``loadavg``); ``finish`` adds the
    load average at the end (``loadavg_end``) so each table can state the load it was measured under."""
    import torch

    return {
        "date": datetime.date.today().isoformat(),
        "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count() or 0,
        "available_cores": available_cores(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if threads is None else threads,
        "python": platform.python_version(),
        "loadavg": load_average(),
    }


def finish(machine: dict[str, Any]) -> dict[str, Any]:
    """Record the end of the measurement in ``machine``: the load average and the time now."""
    machine["loadavg_end"] = load_average()
    machine["ended"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return machine


def _load(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def machine_summary(machine: dict[str, Any]) -> str:
    """One phrase: CPU, cores, torch (the ``machine`` string of the JSON reports that keep one)."""
    return (
        f"{machine['cpu']}, {machine['logical_cpus']} cores ({machine['available_cores']} available), "
        f"torch {machine['torch']}"
    )


def load_text(machine: dict[str, Any]) -> str:
    """ "3.1 at start, 2.9 at end": the 1-minute load averages of ``machine``."""
    text = f"{_load(machine['loadavg'])} at start"
    if "loadavg_end" in machine:
        text += f", {_load(machine['loadavg_end'])} at end"
    return text


def header_line(machine: dict[str, Any], seconds: float | None = None) -> str:
    """The sentence every report starts with: machine, threads, date and the load at start and end."""
    total = "" if seconds is None else f"; total {seconds:.0f} s"
    return (
        f"Machine: {machine['cpu']} ({machine['logical_cpus']} logical CPUs, {machine['available_cores']} "
        f"available to this process), torch {machine['torch']}, {machine['threads']} thread(s), Python "
        f"{machine['python']}, {machine['started']} to {machine.get('ended', '?')}; load average "
        f"{load_text(machine)}{total}."
    )


# -- tables and files -----------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` has one letter per column, l (left) or r (right; the default for every
    column but the first)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(
            f"{len(header)} columns, alignment {align!r}, rows of {sorted({len(r) for r in rows})}"
        )
    rule = ["---:" if a == "r" else ":---:" if a == "c" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def jsonable(obj: Any) -> Any:
    """``obj`` with paths and other non-JSON values as strings, tuples as lists, keys as strings."""
    return json.loads(json.dumps(obj, default=str))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically (a killed benchmark leaves the old file or the new one)."""
    from volscore.atomic import atomic_write_json

    return atomic_write_json(path, jsonable(obj))


def mib(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else n_bytes / MIB


def peak_rss_mib() -> float:
    """Peak resident set size of this process (``volscore.machine.peak_rss_bytes``), MiB."""
    return peak_rss_bytes() / MIB


def rss_mib() -> float | None:
    """Resident set size now (``volscore.machine.rss_bytes``), MiB; None where unknown."""
    return mib(rss_bytes())


def median_fields(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """The median of each of ``keys`` over ``runs`` (keys a run does not report are left out)."""
    return {k: statistics.median(r[k] for r in runs) for k in keys if runs[0].get(k) is not None}


# -- flags and threads ----------------------------------------------------------------------------------
def parse_quick_args(
    doc: str,
    argv: Sequence[str] | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    apply_quick: Callable[[argparse.Namespace], None],
    check: Callable[[argparse.Namespace, Callable[[str], Any]], None],
    threads: int | None = 1,
) -> argparse.Namespace:
    """The flags of a bench that has a ``--quick`` smoke budget: its own (``add_arguments``), the common
    ones, then ``apply_quick`` when asked and ``check`` (which reports through the parser's error)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_arguments(p)
    add_common_flags(p, threads=threads)
    p.add_argument("--quick", action="store_true", help="tiny budget: a smoke test, not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        apply_quick(args)
    check(args, p.error)
    return args


def add_common_flags(
    p: argparse.ArgumentParser,
    threads: int | None = 1,
    threads_help: str = "torch threads (main process and children)",
    json_flag: bool = True,
    seed: bool = True,
    seed_help: str = "seed of everything random",
    out: str | None = None,
    out_help: str = "folder for runs and outputs",
) -> argparse.ArgumentParser:
    """``--threads`` (default ``threads``), ``--json`` (raw numbers), ``--seed``, and ``--out`` when given a
    default; each script keeps its own defaults."""
    p.add_argument("--threads", type=int, default=threads, help=threads_help)
    if json_flag:
        p.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    if seed:
        p.add_argument("--seed", type=int, default=0, help=seed_help)
    if out is not None:
        p.add_argument("--out", default=out, help=out_help)
    return p


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` (None: ``set_threads``'s default) and restored afterwards:
    ``main()`` may run inside another process (the smoke tests)."""
    import torch

    from volscore.machine import set_threads

    before = torch.get_num_threads()
    try:
        yield set_threads(threads)
    finally:
        torch.set_num_threads(before)


def run_bench(
    name: str,
    args: argparse.Namespace,
    measure: Callable[[Path], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
    log: Log = print,
) -> dict[str, Any]:
    """The frame of a benchmark: threads, a temporary folder, the header (load at start and end), the
    measurement, the report and the JSON (``--json``)."""
    threads = getattr(args, "threads", None)
    with using_threads(threads) as n, tempfile.TemporaryDirectory(prefix=f"{name}_") as tmp:
        machine = machine_info(n)
        out: dict[str, Any] = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}
        t0 = time.perf_counter()
        out.update(measure(Path(tmp)))
        out["seconds"] = time.perf_counter() - t0
    finish(machine)
    if getattr(args, "json", None) is not None:  # first: the raw numbers survive a failing report
        write_json(args.json, out)
    log("\n" + header_line(machine, out["seconds"]) + "\n")
    report(out)
    if getattr(args, "json", None) is not None:
        log(f"raw numbers written to {args.json}")
    return out


# -- child processes ------------------------------------------------------------------------------------
class ChildError(RuntimeError):
    """A child process failed: its traceback, or how it ended without reporting."""


def _reference(fn: Callable[..., Any]) -> tuple[str, str, str]:
    module = inspect.getmodule(fn)
    return fn.__module__, getattr(module, "__file__", None) or "", fn.__qualname__


def _resolve(reference: tuple[str, str, str]) -> Callable[..., Any]:
    """The function named by ``_reference``: imported by module name where that works, else from its file
    (a script run as __main__, or loaded by path)."""
    module_name, file, qualname = reference
    module = None
    if module_name not in ("__main__", "__mp_main__"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(module_name)
    if module is None or not hasattr(module, qualname.split(".")[0]):
        name = f"_child_{Path(file).stem}"
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _child_main(
    reference: tuple[str, str, str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    threads: int | None,
    log: str | None,
    conn: Any,
) -> None:
    """The child's entry point: output to ``log`` if given, threads, then the function; its result (or its
    traceback) goes back through ``conn``."""
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        from volscore.machine import set_threads

        set_threads(threads)
        result = _resolve(reference)(*args, **kwargs)
        conn.send(("ok", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process while a child starts (spawn copies the environment at exec)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Child:
    """A started child process; ``result()`` waits for it and returns what its function returned."""

    def __init__(self, name: str, process: Any, conn: Any) -> None:
        self.name = name
        self.process = process  # multiprocessing.Process
        self.conn = conn  # the receiving end of its pipe

    def result(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:  # killed, or died before it could report
            self.process.join()
            raise ChildError(
                f"{self.name}: ended with exit code {self.process.exitcode} before reporting"
            ) from None
        finally:
            self.conn.close()
        self.process.join()
        if status != "ok":
            raise ChildError(f"{self.name} failed in its child process:\n{payload}")
        return payload

    def kill(self) -> None:
        """SIGKILL the child and wait for it (the fault drill)."""
        self.process.kill()
        self.process.join()
        self.conn.close()


def start_child(
    fn: Callable[..., Any],
    *args: Any,
    threads: int | None = 1,
    env: dict[str, str] | None = None,
    log: str | os.PathLike | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> Child:
    """Run ``fn(*args, **kwargs)`` in a fresh interpreter with ``threads`` torch threads (None:
    ``volscore.machine.set_threads``'s default) and ``env`` added to its environment; its stdout and stderr
    go to ``log`` if given (``os.devnull`` to silence it). ``fn`` must be a module-level function; arguments
    and result are pickled."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child_env = {"PYTHONWARNINGS": "ignore", **(env or {})}
    if threads is not None:
        child_env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_path = None if log is None else os.fspath(log)
    proc = ctx.Process(
        target=_child_main,
        args=(_reference(fn), args, kwargs, threads, log_path, send),
        name=name or fn.__name__,
        daemon=False,
    )
    with _environment(child_env):
        proc.start()
    send.close()  # the child holds the other end: EOF here once it exits
    return Child(name or fn.__name__, proc, receive)


def run_child(fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """``start_child(...).result()``: one measurement in its own process."""
    return start_child(fn, *args, **options).result()


def run_children(children: Sequence[Callable[[], Child]], parallel: bool) -> list[Any]:
    """Start the children at once (``parallel``) or one after the other; their results in order. A child
    that fails is reported on stderr as soon as it ends (the others may run for an hour yet); every child is
    waited for before the failures are raised, so none is left running."""
    from multiprocessing.connection import wait

    results: dict[int, Any] = {}
    errors: list[str] = []

    def collect(i: int, child: Child) -> None:
        try:
            results[i] = child.result()
        except ChildError as exc:
            print(f"{exc}\n(the other children go on)", file=sys.stderr, flush=True)
            results[i] = None
            errors.append(str(exc))

    if parallel:
        running = dict(enumerate(start() for start in children))
        while running:
            ready = wait([c.conn for c in running.values()])
            for i in [i for i, c in running.items() if c.conn in ready]:
                collect(i, running.pop(i))
    else:
        for i, start in enumerate(children):
            collect(i, start())
    if errors:
        raise ChildError("\n".join(errors))
    return [results[i] for i in range(len(children))]


def train_config(cfg: Any) -> dict[str, Any]:
    """(Child side.) Train ``cfg`` with ``volscore.recipes.train_or_resume``; the run's step and time."""
    from volscore.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from volscore.recipes import train_or_resume

    t0 = time.perf_counter()
    out = train_or_resume(cfg)
    step = int(load_checkpoint(out / CHECKPOINT_NAME)["step"])
    return {"out": str(out), "step": step, "seconds": time.perf_counter() - t0}


def train_in_children(
    configs: Sequence[Any],
    parallel: bool = False,
    threads: int | None = 1,
    logs: Sequence[str | os.PathLike | None] | None = None,
) -> list[dict[str, Any]]:
    """Train each ``TrainConfig`` in its own child process (resuming a run already in its ``out``): all at
    once with ``threads`` threads each (``parallel``: e.g. two models on one thread each, the same
    wall-clock and compute for both), or one after the other. Their ``train_config`` records, in order."""
    logs = list(logs) if logs is not None else [None] * len(configs)
    starts = [
        (lambda c=c, log=log: start_child(train_config, c, threads=threads, log=log, name=f"train {c.out}"))
        for c, log in zip(configs, logs, strict=True)
    ]
    return run_children(starts, parallel)


def timed_training(cfg: Any, warmup: int, steps: int) -> dict[str, Any]:
    """(Child side.) ``warmup`` untimed then ``steps`` timed ``Trainer.train_step()`` calls of ``cfg``:
    median seconds per step, training voxels (or pixels) per second, RSS at start and after building the
    data and model, and this process's peak RSS (MiB)."""
    from volscore.train import Trainer

    rss_start = rss_mib()
    cfg = replace(cfg, steps=warmup + steps)
    t0 = time.perf_counter()
    with Trainer(cfg, progress=False) as trainer:
        setup_s = time.perf_counter() - t0
        rss_setup = rss_mib()
        for _ in range(warmup):
            trainer.train_step()
        times, losses = [], []
        for _ in range(steps):
            t = time.perf_counter()
            info = trainer.train_step()
            times.append(time.perf_counter() - t)
            losses.append(info["loss"])
        voxels = trainer.cfg.batch_size * math.prod(trainer.source.sample_shape[1:])
        sigma_max = trainer.cfg.sigma_max
    sec = statistics.median(times)
    return {
        "sec_per_step": sec,
        "times": times,
        "setup_s": setup_s,
        "voxels_per_s": voxels / sec,
        "rss_start_mib": rss_start,
        "rss_after_setup_mib": rss_setup,
        "peak_rss_mib": peak_rss_mib(),
        "finite_losses": sum(math.isfinite(v) for v in losses),
        "sigma_max": sigma_max,
    }


TIMING_FIELDS = (
    "sec_per_step",
    "voxels_per_s",
    "peak_rss_mib",
    "rss_start_mib",
    "rss_after_setup_mib",
    "setup_s",
)


def time_training_rounds(
    configs: dict[str, Any],
    rounds: int,
    warmup: int,
    steps: int,
    threads: int | None = 1,
    log: Log = print,
    after_round: Callable[[int], None] | None = None,
    prefix: str = "",
) -> dict[str, list[dict[str, Any]]]:
    """``timed_training`` of each named ``TrainConfig`` in its own child process (run folder: its ``out``
    with the round appended), round-robin over ``rounds`` so that ratios between configurations compare
    runs under the same machine load; ``after_round(r)`` runs after each round. Every child's record."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for r in range(rounds):
        for name, cfg in configs.items():
            res = run_child(
                timed_training, replace(cfg, out=f"{cfg.out}_{r}"), warmup, steps, threads=threads, name=name
            )
            runs[name].append(res)
            log(f"  {prefix}round {r}: {name:14s} {res['sec_per_step']:.3f} s/step, "
                f"peak RSS {res['peak_rss_mib']:.0f} MiB")  # fmt: skip
        if after_round is not None:
            after_round(r)
    return runs


def summarize_runs(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians over rounds of each configuration's timing fields."""
    return {name: median_fields(rs, TIMING_FIELDS) for name, rs in runs.items()}


# -- synthetic data -------------------------------------------------------------------------------------
def smooth_volume(n: int, seed: int, correlation: int = 16) -> Any:
    """A smooth random (n, n, n) float32 array: Gaussian noise on a grid every ``correlation`` voxels,
    trilinearly upsampled, so every volume size has the same statistics inside a patch."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, 1, *(n // correlation + 2,) * 3), generator=g)
    fine = F.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True)
    return fine[0, 0].numpy()


def smooth_volume_file(folder: Path, n: int, seed: int) -> Path:
    """``smooth_volume(n, seed)`` as ``folder/smooth_N.nii.gz`` (written once: read through the ordinary
    data path, ``open_source`` inside ``Trainer``)."""
    from volscore.data.nifti import save_nifti

    path = Path(folder) / f"smooth_{n}.nii.gz"
    if not path.exists():
        save_nifti(path, smooth_volume(n, seed=seed))
    return path
