"""What the process may use of this machine: CPU cores, available and resident memory, and glibc's heap.

Shared by the stitcher (heap trimming), the trainer and samplers (thread count) and the benchmarks (RSS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset restrict), not
    the machine's count: torch's default of one thread per machine core oversubscribes a shared CPU."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def _cpu_times(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies summed over the given CPUs, from /proc/stat."""
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            idle = values[3] + values[4]
            busy += sum(values) - idle
            total += sum(values)
    return busy, total


def busy_cores(interval: float = 0.25) -> float:
    """How many of this process's cores other programs keep busy now: the busy fraction of the allowed CPUs
    over ``interval`` seconds (/proc/stat), times their count. 0 where /proc/stat is unreadable."""
    import time

    try:
        cpus = set(os.sched_getaffinity(0))
        b0, t0 = _cpu_times(cpus)
        time.sleep(interval)
        b1, t1 = _cpu_times(cpus)
    except (AttributeError, OSError, ValueError):
        return 0.0
    return len(cpus) * (b1 - b0) / max(1, t1 - t0)


def default_threads() -> int:
    """Threads for torch: the cores this process may run on, less those other programs keep busy now.

    On a shared CPU, torch's default of one thread per core makes its threads wait on each other behind the
    other programs (a training step ran 15x slower with every core taken); leaving the busy cores to them
    keeps each of our threads on a core of its own.
    """
    return max(1, available_cores() - round(busy_cores()))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: ``default_threads()``); return the count."""
    import torch

    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far: VmHWM from /proc (Linux), else ru_maxrss.

    Not ru_maxrss on Linux: exec folds the RSS of the process it replaces into it, so a child started by
    (v)fork + exec (subprocess, multiprocessing spawn) reports at least its parent's RSS at the start.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


def available_memory_bytes() -> int | None:
    """Memory the system could still give this process (bytes): psutil's ``available`` if psutil is installed,
    else MemAvailable from /proc/meminfo (Linux); None where neither is known. A container's own limit is
    not looked at (its page cache would make the headroom look smaller than it is), so this errs high:
    it is for refusing requests that cannot fit, not for trimming ones that might."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed (it is not a dependency), or no answer on this platform
        pass
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


HEAP_SLACK = 512 * 2**20  # freed heap memory a stitched score may keep before handing it back (bytes)


def rss_bytes() -> int | None:
    """Resident set size of this process from /proc (Linux), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (macOS, Windows, musl).

    The moving grid gives tile batches of ever new shapes (about 111 distinct ones in 3 steps at 256^3);
    glibc keeps each batch's freed activations in its heap, so RSS grew 1.5 -> 1.8 -> 2.3 GiB over three
    Langevin steps. Measured alternatives (bench_volumes3d (b), 256^3): trimming after every tile batch
    held the chain at 0.85 GiB but cost 37 % more time per step (freed pages are faulted in again);
    rounding tiles up to a few fixed shapes cost 20-35 % more voxels and still peaked at 1.75 GiB;
    trimming once per stitched score was free but let one step reach 2.3 GiB. So the heap is trimmed
    whenever RSS has grown by ``HEAP_SLACK`` within a stitched score, and at its end.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
