"""What machine a measurement came from: recorded next to every benchmark figure."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe(threads: int | None = None) -> dict[str, Any]:
    """CPU, core count, torch version, threads, Python, date and the load average at the call."""
    import torch

    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count() or 0,
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if threads is None else threads,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
