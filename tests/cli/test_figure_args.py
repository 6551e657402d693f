"""cli/figure_args: the options figures and report share, declared once and routed into FigureArgs."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opdlens.cli import app
from opdlens.cli.figure_args import SHARED, FigureArgs, parse_groups
from opdlens.errors import OptionError


def _values(**given: object) -> dict[str, object]:
    values = {p.name: p.default for p in SHARED}
    values.update(out=Path("out"), **given)
    return values


def test_every_shared_option_lands_in_exactly_one_field() -> None:
    args = FigureArgs.of(_values())
    parts = [f.name for f in fields(args)]
    routed = [g.name for part in parts if part not in ("out", "quiet")
              for g in fields(getattr(args, part))]  # fmt: skip
    assert sorted([*routed, "out", "quiet"]) == sorted(p.name for p in SHARED)
    assert len(parts) <= 6


def test_of_routes_values_and_resolve_builds_source_options(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    args = FigureArgs.of(
        _values(group=[f"OPD={a},{b}"], band="range", ranks="2,8", spectra=3, workers=2,
                foresight=False, trust_pickle=True, base=tmp_path / "base", quiet=True)
    )  # fmt: skip
    assert args.runs.band == "range" and args.analysis.ranks == "2,8" and args.quiet
    options, given = args.resolve()
    assert options.paths == (a, b) and options.labels == ("OPD-1", "OPD-2")
    assert options.groups == {"OPD": ["OPD-1", "OPD-2"]} and given.band == "range"
    assert options.analyze is not None and options.analyze.ranks == (2, 8)
    assert options.analyze.workers == 2 and options.spectra == 3
    assert options.trust_pickle and options.base == tmp_path / "base" and not options.foresight
    record = args.record(given)
    assert record["band"] == "range" and record["ranks"] == "2,8" and record["spectra"] == 3


def test_bad_values_are_option_errors() -> None:
    with pytest.raises(OptionError, match="--spectra"):
        FigureArgs.of(_values(source=Path("r"), spectra=-1)).resolve()
    with pytest.raises(OptionError, match="NAME=PATH"):
        parse_groups(["=a,b"])
    with pytest.raises(OptionError, match="--band"):
        FigureArgs.of(_values(source=Path("r"), band="wide")).resolve()


@pytest.mark.parametrize("command", ["figures", "report"])
def test_both_commands_offer_every_shared_option(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for p in SHARED[1:]:
        flag = "--" + p.name.replace("_", "-")
        assert flag in result.output, (command, flag)
