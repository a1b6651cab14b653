"""Tests for volscore/arguments.py: flags generated from a dataclass's fields (types, defaults, choices,
``--x/--no-x`` bools, nargs, ``T | None``, required, ``only``/``skip``/``defaults``, internal fields left
out), non-finite numbers refused, ``from_namespace``; and the real commands' flags against their records."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from volscore.arguments import add_arguments, finite, from_namespace

COLOURS = ("red", "green")


@dataclass
class Record:
    name: str = field(metadata={"help": "a name"})
    count: int = field(default=3, metadata={"help": "how many"})
    rate: float = field(default=0.5, metadata={"help": "a rate"})
    colour: str = field(default="red", metadata={"help": "a colour", "choices": COLOURS})
    verbose: bool = field(default=False, metadata={"help": "talk"})
    quiet: bool = field(default=True, metadata={"help": "be quiet"})
    sizes: list[int] | None = field(default=None, metadata={"help": "sizes", "nargs": "+"})
    pair: list[float] = field(default_factory=lambda: [1.0, 2.0], metadata={"help": "two", "nargs": 2})
    limit: float | None = field(default=None, metadata={"help": "optional limit"})
    renamed: int = field(default=0, metadata={"help": "own flag", "flag": "--other-name", "metavar": "K"})
    internal: int = 7  # no help: never a flag


def _parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test")
    add_arguments(p, Record, **kwargs)
    return p


def _fails(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_types_and_defaults():
    a = _parser().parse_args(["--name", "x"])
    assert vars(a) == {
        "name": "x",
        "count": 3,
        "rate": 0.5,
        "colour": "red",
        "verbose": False,
        "quiet": True,
        "sizes": None,
        "pair": [1.0, 2.0],
        "limit": None,
        "renamed": 0,
    }
    a = _parser().parse_args(["--name", "x", "--count", "5", "--rate", "1e-3", "--limit", "2"])
    assert (a.count, a.rate, a.limit) == (5, 1e-3, 2.0)
    assert type(a.count) is int and type(a.rate) is float and type(a.limit) is float


def test_bools_are_x_and_no_x():
    a = _parser().parse_args(["--name", "x", "--verbose", "--no-quiet"])
    assert a.verbose is True and a.quiet is False
    assert _parser().parse_args(["--name", "x", "--no-verbose", "--quiet"]).verbose is False


def test_choices_nargs_flag_and_metavar(capsys):
    p = _parser()
    a = p.parse_args(["--name", "x", "--colour", "green", "--sizes", "4", "5", "6", "--pair", "3", "4"])
    assert a.colour == "green" and a.sizes == [4, 5, 6] and a.pair == [3.0, 4.0]
    assert p.parse_args(["--name", "x", "--other-name", "9"]).renamed == 9
    assert "--other-name K" in p.format_help() and "--renamed" not in p.format_help()
    assert "invalid choice" in _fails(p, ["--name", "x", "--colour", "blue"], capsys)
    assert "expected 2 arguments" in _fails(p, ["--name", "x", "--pair", "1"], capsys)
    assert "invalid int value" in _fails(p, ["--name", "x", "--count", "2.5"], capsys)
    assert "invalid int value" in _fails(p, ["--name", "x", "--sizes", "4", "x"], capsys)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_non_finite_numbers_are_refused(value, capsys):
    for argv in (["--rate=" + value], ["--limit=" + value], ["--pair", "1", value], ["--sizes", "4", value]):
        if argv[0] in ("--pair", "--sizes") and value.startswith("-"):
            continue  # argparse reads a lone "-inf" as a flag, not a value
        err = _fails(_parser(), ["--name", "x", *argv], capsys)
        expected = "invalid int value" if argv[0] == "--sizes" else "must be a finite number"
        assert expected in err, (argv, err)
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        finite(float)(value)


def test_finite_keeps_the_type_name_for_argparse_messages():
    assert finite(int).__name__ == "int" and finite(float)("2.5") == 2.5 and finite(int)("-4") == -4


def test_internal_fields_only_skip_defaults_and_required(capsys):
    assert "--internal" not in _parser().format_help()
    p = _parser(only=["count", "colour", "internal"])
    assert set(vars(p.parse_args([]))) == {"count", "colour"}  # internal stays internal even if asked
    p = _parser(skip=["rate", "pair"], defaults={"count": 10, "pair": [0.0, 0.0]})
    a = p.parse_args(["--name", "x"])
    assert a.count == 10 and not hasattr(a, "rate") and not hasattr(a, "pair")
    assert _parser(defaults={"pair": [5.0, 6.0]}).parse_args(["--name", "x"]).pair == [5.0, 6.0]
    assert "required" in _fails(_parser(required=["name"]), [], capsys)


def test_from_namespace_builds_the_record_with_extras():
    ns = argparse.Namespace(name="x", count=2, unrelated="ignored")
    r = from_namespace(Record, ns, rate=0.25)
    assert r == Record(name="x", count=2, rate=0.25)
    with pytest.raises(TypeError):  # a required field missing
        from_namespace(Record, argparse.Namespace(count=2))


def _subparser(command: str) -> argparse.ArgumentParser:
    from volscore.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize(
    "command, argv, records",
    [
        ("train", ["--data", "mnist", "--out", "r"], "TrainConfig"),
        ("sample", ["--run", "r", "--out", "g.png"], "SampleOptions SamplerSettings"),
        ("denoise", ["a.nii", "b.nii"], "DenoiseOptions"),
        ("demo", [], "DemoOptions SamplerSettings"),
        ("baseline", [], "BaselineOptions SamplerSettings"),
        ("restore", ["a.nii", "b.nii"], "RestoreOptions"),
    ],
)
def test_commands_flags_are_their_records_fields_with_their_defaults(command, argv, records):
    """Every field with help text is a flag whose default is the field's (the recipes' samplers: theirs)."""
    from volscore import config, options
    from volscore.sampling import settings

    classes = {
        "TrainConfig": config.TrainConfig,
        "SampleOptions": options.SampleOptions,
        "SamplerSettings": settings.SamplerSettings,
        "DenoiseOptions": options.DenoiseOptions,
        "DemoOptions": options.DemoOptions,
        "BaselineOptions": options.BaselineOptions,
        "RestoreOptions": options.RestoreOptions,
    }
    given = {a.lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    parsed = vars(_subparser(command).parse_args(argv))
    for name in records.split():
        cls = classes[name]
        built = from_namespace(cls, argparse.Namespace(**parsed))
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                assert f.name not in parsed, f"{command}: internal field {name}.{f.name} became a flag"
            elif f.name not in given:
                assert f.name in parsed, f"{command}: no flag for {name}.{f.name}"
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                assert getattr(built, f.name) == default, f"{name}.{f.name}"
