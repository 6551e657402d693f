"""Only opdlens' own errors become one line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import opdlens.survey
from opdlens.cli import app

runner = CliRunner()


def _bug(exc: type[Exception]):
    def survey(*args: object, **kwargs: object) -> object:
        raise exc("a bug deep inside pandas")

    return survey


@pytest.mark.parametrize("exc", [ValueError, FileNotFoundError, KeyError])
def test_a_plain_exception_inside_a_command_keeps_its_traceback(monkeypatch, tmp_path, exc):
    monkeypatch.setattr(opdlens.survey, "survey", _bug(exc))
    result = runner.invoke(app, ["scan", str(tmp_path)])
    assert result.exit_code == 1
    assert type(result.exception) is exc  # not turned into "opdlens: error: …" and exit 2
    assert "opdlens: error" not in result.stderr


def test_a_bug_prints_a_traceback_from_the_console_script(tmp_path: Path) -> None:
    code = (
        "import sys, opdlens.survey as m\n"
        "def survey(*a, **k): raise ValueError('a bug deep inside numpy')\n"
        "m.survey = survey\n"
        "from opdlens.cli import main\n"
        f"sys.argv = ['opdlens', 'scan', {str(tmp_path)!r}]\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPDLENS_DEBUG"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith("ValueError: a bug deep inside numpy")


def test_a_user_error_is_one_line_and_opdlens_debug_shows_its_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"
    quiet = runner.invoke(app, ["scan", str(missing)], env={"OPDLENS_DEBUG": ""})
    assert quiet.exit_code == 2
    assert quiet.stderr.splitlines() == [f"opdlens: error: {missing}: no such directory."]
    debug = runner.invoke(app, ["scan", str(missing)], env={"OPDLENS_DEBUG": "1"})
    assert debug.exit_code == 2
    assert debug.stderr.startswith("Traceback (most recent call last)")
    assert "CheckpointError" in debug.stderr
    assert debug.stderr.splitlines()[-1] == f"opdlens: error: {missing}: no such directory."


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--executor", "dask"], "Invalid value for '--executor'"),
     (["--device", "tpu"], "Invalid value for '--device'"),
     (["--workers", "many"], "Invalid value for '--workers'"),
     (["--no-such-option"], "No such option: --no-such-option")],
)  # fmt: skip
def test_the_parser_refuses_a_bad_value_in_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(tmp_path), "--out", str(out), *args])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("opdlens: error: ") and message in result.stderr
    assert "analyze --help" in result.stderr
    assert not out.exists()


def test_help_lists_the_executor_and_device_choices() -> None:
    result = runner.invoke(app, ["analyze", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    assert "<local|ray>" in result.stdout and "<cpu|cuda>" in result.stdout
