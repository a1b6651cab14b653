"""Tests of scripts/harness.py, the benchmark scripts' shared harness: header, tables, JSON, flags and
child processes (results, errors, threads, environment, and a peak RSS that is the child's own)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load():
    """The harness as the bench scripts import it (scripts/ on sys.path): its children import it by name."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("harness")


def test_markdown_table_aligns_and_checks_columns():
    h = _load()
    text = h.markdown_table(["name", "value", "ok"], [["a", 1.5, "✓"], ["b", 2, "✗"]], align="lrc")
    assert text.splitlines() == [
        "| name | value | ok |",
        "| --- | ---: | :---: |",
        "| a | 1.5 | ✓ |",
        "| b | 2 | ✗ |",
    ]
    assert h.markdown_table(["x", "y"], []).splitlines()[1] == "| --- | ---: |"  # right-aligned numbers
    with pytest.raises(ValueError):
        h.markdown_table(["x", "y"], [["only one"]])


def test_header_states_machine_and_load_at_start_and_end():
    h = _load()
    machine = h.machine_info(threads=1)
    assert {"cpu", "logical_cpus", "available_cores", "torch", "threads", "python", "date", "loadavg"} <= set(
        machine
    )
    assert 1 <= machine["available_cores"] <= max(1, machine["logical_cpus"])
    h.finish(machine)
    line = h.header_line(machine, seconds=12.0)
    assert "torch" in line and "at start" in line and "at end" in line and "total 12 s" in line
    assert machine["torch"] in h.machine_summary(machine)


def test_json_is_written_atomically_with_plain_values(tmp_path: Path):
    h = _load()
    path = h.write_json(tmp_path / "sub" / "r.json", {"path": tmp_path, "pair": (1, 2), "by_d": {2: 0.5}})
    assert json.loads(path.read_text()) == {"path": str(tmp_path), "pair": [1, 2], "by_d": {"2": 0.5}}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left behind


def test_common_flags_keep_each_scripts_defaults():
    h = _load()
    p = h.add_common_flags(argparse.ArgumentParser(), threads=2, out="runs/x")
    args = p.parse_args([])
    assert (args.threads, args.json, args.seed, args.out) == (2, None, 0, "runs/x")
    args = p.parse_args(["--threads", "1", "--json", "r.json", "--seed", "3"])
    assert (args.threads, args.json, args.seed) == (1, Path("r.json"), 3)
    assert not hasattr(h.add_common_flags(argparse.ArgumentParser(), json_flag=False).parse_args([]), "json")


def probe(size_mib: int) -> dict:
    """Runs in a child: its threads, environment and peak RSS after touching ``size_mib`` MiB."""
    import numpy as np
    import torch

    h = _load()
    block = np.ones(size_mib * 2**20 // 8)
    return {
        "threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "extra": os.environ.get("VOLSCORE_BENCH_PROBE"),
        "peak_mib": h.peak_rss_mib(),
        "sum": float(block[:10].sum()),
    }


def fail() -> None:
    raise ValueError("the child's own error")


@pytest.mark.slow
def test_children_report_results_errors_and_their_own_peak_rss():
    import numpy as np

    h = _load()
    parent_block = np.ones(768 * 2**20 // 8)  # 768 MiB resident in this process
    assert parent_block[-1] == 1.0
    first, second = h.run_children(
        [
            lambda: h.start_child(probe, 64, threads=1, env={"VOLSCORE_BENCH_PROBE": "yes"}),
            lambda: h.start_child(probe, 32, threads=1),
        ],
        parallel=True,
    )
    assert (first["threads"], first["omp"], first["extra"], first["sum"]) == (1, "1", "yes", 10.0)
    assert second["extra"] is None and "VOLSCORE_BENCH_PROBE" not in os.environ  # only that child's
    # The child's peak is its own (interpreter, torch, 64 MiB), not this process's RSS at its start.
    assert 64 < first["peak_mib"] < 700
    with pytest.raises(h.ChildError, match="the child's own error"):
        h.run_child(fail)


def sleep_then_touch(path: str, seconds: float) -> str:
    import time

    time.sleep(seconds)
    Path(path).write_text(repr(time.time()))
    return path


@pytest.mark.slow
def test_a_failing_child_is_said_at_once_and_raised_after_the_others(tmp_path, monkeypatch):
    import io
    import time

    h = _load()
    said: list[tuple[float, str]] = []

    class Stamped(io.StringIO):
        def write(self, text: str) -> int:
            said.append((time.time(), text))
            return len(text)

    monkeypatch.setattr(h.sys, "stderr", Stamped())
    marker = tmp_path / "slow_done"
    with pytest.raises(h.ChildError, match="the child's own error"):
        h.run_children(
            [
                lambda: h.start_child(sleep_then_touch, str(marker), 6.0, threads=1),  # first, still running
                lambda: h.start_child(fail, threads=1),
            ],
            parallel=True,
        )
    slow_end = float(marker.read_text())  # the slow child was waited for, not left running
    failure = [t for t, text in said if "the child's own error" in text and "children go on" in text]
    assert failure and failure[0] < slow_end  # said while the first child was still running
