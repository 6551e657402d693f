"""Help pages name what each option takes, --version answers, and the common options are there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import opdlens
from opdlens.cli import app

COMMANDS = ["analyze", "compare", "demo", "extrapolate", "replay", "figures", "report", "scan",
            "surgery", "surgery scale", "surgery lowrank", "surgery window", "foresee", "ablate"]  # fmt: skip
READS_A_RUN = [c for c in COMMANDS if c not in ("demo", "surgery")]


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_names_what_options_take(command: str) -> None:
    text = _help(command)
    assert "<bool>" not in text  # a flag takes no value, --help included
    assert "list[" not in text  # a repeatable option takes one value each time
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    if command in READS_A_RUN and command not in ("extrapolate", "replay"):
        assert re.search(r"Usage: .* \[OPTIONS\] \[?(RUN|SOURCE|RUN_A)\b", usage), (
            usage
        )  # [SOURCE]: --group


def test_the_command_list_reflows_each_summary() -> None:
    rows = [line.strip("│ ").split(maxsplit=1) for line in _help("").splitlines() if "│ " in line]
    summary = {row[0]: row[1] for row in rows if len(row) == 2 and row[0] in COMMANDS}
    # a docstring's line breaks used to end the row mid-sentence at 160 columns
    assert summary["demo"].startswith("Train (or reuse) tiny OPD and RL runs (3 seeds each), "
                                      "analyse, extrapolate, replay, foresee and ablate")  # fmt: skip
    assert summary["figures"].endswith("for one run, several side by side, or groups of runs "
                                       "(group means with a band).")  # fmt: skip


def test_repeatable_options_show_one_value() -> None:
    assert re.search(r"--checkpoint\s+<step=path>", _help("analyze"))
    assert re.search(r"--tensors\s+<glob>", _help("extrapolate"))
    assert re.search(r"--compare\s+<path>", _help("figures"))


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"opdlens {opdlens.__version__}\n"


@pytest.mark.parametrize("command", READS_A_RUN)
def test_every_command_reading_a_run_takes_the_common_options(command: str) -> None:
    text = _help(command)
    for option in ("--base", "--checkpoint", "--trust-pickle"):
        assert re.search(rf"{option}\b", text), (command, option)
    # --quiet silences a progress bar; scan draws none (README says so).
    assert (re.search(r"--quiet\b", text) is not None) == (command != "scan")


def test_demo_help_gives_the_times_readme_gives() -> None:
    text = " ".join(_help("demo").replace("│", " ").split())
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    for measured in ("5 min 0 s of CPU", "2 min 17 s of CPU"):
        assert measured in text and measured in readme, measured
