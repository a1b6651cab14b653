"""Samplers with one signature, ``sampler(score_fn, x, sigmas, ..., generator, callback) -> x``
(``langevin``, ``edm``, ``dpm_solver``), the table that runs them by name (``table``, settings in
``settings``), and the stitched score that makes a patch model a whole-volume score (``stitch``).

Public names are imported lazily (PEP 562), so ``volscore.sampling.settings`` stays free of torch for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SAMPLERS": "settings",
    "SamplerSettings": "settings",
    "run_sampler": "table",
    "sampling_sigmas": "table",
    "annealed_langevin": "langevin",
    "predictor_corrector": "langevin",
    "heun_sampler": "edm",
    "edm_sampler": "edm",
    "dpm_solver_2m": "dpm_solver",
    "StitchedScore": "stitch",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
