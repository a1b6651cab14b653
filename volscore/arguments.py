"""Command-line flags generated from a dataclass's fields, so each option is declared once.

A field becomes ``--field-name`` with the field's type, default and ``metadata["help"]``; ``metadata`` may
also give ``choices`` (the library constant that validates it), ``nargs``, ``metavar`` and ``flag`` (another
flag name). ``bool`` fields become ``--x/--no-x``; ``T | None`` fields default to None. No torch import
here, so ``volscore --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without ``| None``, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def finite(kind: type) -> Any:
    """An argparse ``type`` that parses ``kind`` and refuses NaN and infinity."""

    def parse(text: str) -> Any:
        value = kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    required: Iterable[str] = (),
) -> None:
    """Add one flag per field of the dataclass ``cls`` (``only`` these, minus ``skip``).

    ``defaults`` overrides a field's default for this parser (e.g. a recipe's own minutes); fields in
    ``required`` must be given. Fields without ``metadata["help"]`` are internal and never become flags.
    """
    hints = typing.get_type_hints(cls)
    wanted = None if only is None else set(only)
    skip, required, defaults = set(skip), set(required), defaults or {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or f.name in skip or (wanted is not None and f.name not in wanted):
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kind, _ = _base_type(hints[f.name])
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        if f.default_factory is not dataclasses.MISSING and f.name not in defaults:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"help": meta["help"], "dest": f.name}
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) in (list, tuple):
            item = typing.get_args(kind)[0]
            kwargs.update(nargs=meta.get("nargs", "+"), type=finite(item) if item in (int, float) else item)
        else:
            kwargs["type"] = finite(kind) if kind in (int, float) else kind
            if "nargs" in meta:
                kwargs["nargs"] = meta["nargs"]
        if "choices" in meta:
            kwargs["choices"] = tuple(meta["choices"])
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(flag, **kwargs)


def from_namespace(cls: type, namespace: argparse.Namespace, **extra: Any) -> Any:
    """Build ``cls`` from the parsed flags that are its fields, plus ``extra`` keyword values."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(extra)
    return cls(**values)
