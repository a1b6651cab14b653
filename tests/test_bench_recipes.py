"""scripts/bench_recipes.py: which runs a call trains (recipes, optionally crossed with network presets)."""

from __future__ import annotations

from script_loader import load_script


def test_variants_cross_recipes_with_presets() -> None:
    bench = load_script("bench_recipes")
    plain = bench.variants(["edm", "ncsn"], None)
    assert list(plain) == ["edm", "ncsn"] and plain["edm"] == bench.RECIPES["edm"]
    crossed = bench.variants(["edm"], ["small", "base"])
    assert list(crossed) == ["edm-small", "edm-base"]
    assert crossed["edm-base"] == {**bench.RECIPES["edm"], "preset": "base"}
    assert "preset" not in bench.RECIPES["edm"]  # the shared recipe table is not changed
