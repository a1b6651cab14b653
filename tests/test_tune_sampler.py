"""scripts/tune_sampler.py: the coordinate search's choice on a known objective, and a smoke run."""

from __future__ import annotations

import argparse

import pytest
from script_loader import load_script


def _fake(tune, fd_train):
    """``tune.quality`` replaced by a known function of the constants (no sampling)."""

    def quality(run, sampler, levels, extra, n, seed):
        return {"extra": dict(extra), "fd_train": fd_train(extra), "confident_fraction": 0.5}

    return quality


def _args(**kw):
    return argparse.Namespace(**({"sampler": "edm", "levels": 18, "n": 10, "tune_seed": 0} | kw))


def test_search_takes_every_single_change_that_helps_when_they_add_up(monkeypatch):
    tune = load_script("tune_sampler")
    monkeypatch.setattr(tune, "GRID", {"rho": [3.0, 5.0], "s_tmax": [5.0, 80.0], "s_noise": [1.007]})

    # separable: the best rho is 5 and the best s_tmax 5, s_noise only hurts
    def fd(e):
        rho, s_tmax, s_noise = e.get("rho", 7.0), e.get("s_tmax", 50.0), e.get("s_noise", 1.0)
        return 10 + (rho - 5) ** 2 + abs(s_tmax - 5) / 10 + s_noise - 1

    monkeypatch.setattr(tune, "quality", _fake(tune, fd))
    chosen, rows = tune.search(None, _args(), say=lambda _: None)
    assert chosen == {"rho": 5.0, "s_tmax": 5.0}
    assert rows[0]["extra"] == {} and rows[-1]["extra"] == chosen  # defaults first, the combination last


def test_search_keeps_the_best_single_change_when_the_combination_is_worse(monkeypatch):
    tune = load_script("tune_sampler")
    monkeypatch.setattr(tune, "GRID", {"rho": [5.0], "s_tmax": [5.0]})
    scores = {(): 10.0, ("rho",): 9.0, ("s_tmax",): 8.0, ("rho", "s_tmax"): 12.0}
    monkeypatch.setattr(tune, "quality", _fake(tune, lambda e: scores[tuple(sorted(e))]))
    chosen, _ = tune.search(None, _args(), say=lambda _: None)
    assert chosen == {"s_tmax": 5.0}


def test_search_keeps_the_defaults_when_nothing_helps(monkeypatch):
    tune = load_script("tune_sampler")
    monkeypatch.setattr(tune, "GRID", {"rho": [3.0, 5.0]})
    monkeypatch.setattr(tune, "quality", _fake(tune, lambda e: 10.0 + len(e)))
    assert tune.search(None, _args(), say=lambda _: None)[0] == {}


def test_report_seed_must_differ_from_the_tuning_seed():
    tune = load_script("tune_sampler")
    with pytest.raises(SystemExit):
        tune.main(["--tune-seed", "3", "--report-seed", "3"])


def test_smoke_on_a_tiny_run(tmp_path, tiny_mnist_run, monkeypatch):
    tune = load_script("tune_sampler")
    monkeypatch.setattr(tune, "GRID", {"rho": [5.0]})
    out = tune.main(["--run", str(tiny_mnist_run), "--levels", "3", "--n", "8", "--threads", "1",
                     "--json", str(tmp_path / "tune.json")])  # fmt: skip
    assert [r["extra"] for r in out["search"]][:2] == [{}, {"rho": 5.0}]
    assert out["report"][0]["setting"] == "defaults" and out["report"][0]["nfe"] == 2 * 3 - 1
    assert (tmp_path / "tune.json").exists()
