"""Only opdlens' own errors become one line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "analysis"))
from planted import SMALL_CONFIG, small_states, write_state_run  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1]))
from extrapolation.conftest import write_run  # noqa: E402

import opdlens.survey  # noqa: E402
from opdlens.cli import app  # noqa: E402

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
        "from opdlens.cli import console\n"
        f"sys.argv = ['opdlens', 'scan', {str(tmp_path)!r}]\n"
        "console()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPDLENS_DEBUG"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith("ValueError: a bug deep inside numpy")


def _console(*args: str, **kw: object) -> subprocess.CompletedProcess:
    # Without PYTHONUNBUFFERED a piped stdout is block-buffered: what console() must flush.
    env = {k: v for k, v in os.environ.items() if k not in ("OPDLENS_DEBUG", "PYTHONUNBUFFERED")}
    return subprocess.run([sys.executable, "-m", "opdlens", *args], capture_output=True,
                          text=True, env=env, timeout=300, **kw)  # fmt: skip


def test_the_console_script_flushes_its_output_and_keeps_the_status(tmp_path: Path) -> None:
    """console() skips the interpreter's teardown: piped output, files and statuses must survive."""
    run = write_state_run(tmp_path / "run", small_states(), SMALL_CONFIG)
    out = tmp_path / "out"
    done = _console("analyze", str(run), "--out", str(out), "--ranks", "1,2", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith(f"wrote {out}")  # the last line
    rows = pd.read_csv(out / "metrics.csv")
    assert len(rows) == len(pd.read_parquet(out / "metrics.parquet")) > 0
    assert json.loads((out / "provenance.json").read_text())["command"]
    scan = _console("scan", str(run), "--json")
    assert scan.returncode == 0 and json.loads(scan.stdout)  # a whole JSON document, flushed
    missing = _console("scan", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"opdlens: error: {tmp_path / 'nowhere'}: no such directory."
    ]
    usage = _console("analyze", str(run), "--workers", "many")
    assert usage.returncode == 2 and "Invalid value for '--workers'" in usage.stderr


_LEAKY_SCORER = """
LOG = open(__file__ + ".log", "w")  # never closed: only the interpreter's exit flushes it

def score(path):
    LOG.write("scored " + str(path) + chr(10))
    return 1.0
"""


def test_a_user_scorer_module_gets_the_usual_exit(tmp_path: Path) -> None:
    """A --scorer module's unflushed file survives: console() then skips the fast exit."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "leaky.py").write_text(_LEAKY_SCORER)
    run = write_run(tmp_path / "run", steps=(0, 2))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "mods")}
    env.pop("OPDLENS_DEBUG", None)
    args = ["ablate", str(run), "--step", "2", "--scorer", "leaky:score", "--out",
            str(tmp_path / "out"), "-q"]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "opdlens", *args], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    scored = json.loads((tmp_path / "out" / "scores.json").read_text())
    lines = (tmp_path / "mods" / "leaky.py.log").read_text().splitlines()
    assert len(lines) == len(scored["scores"]) > 1  # every write reached the file


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
     (["--no-such-option"], "No such option")],  # click 8.5: "No such option '--…'."
)  # fmt: skip
def test_the_parser_refuses_a_bad_value_in_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", str(tmp_path), "--out", str(out), *args])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("opdlens: error: ") and message in result.stderr
    assert args[0] in result.stderr and "analyze --help" in result.stderr
    assert not out.exists()


def test_help_lists_the_executor_and_device_choices() -> None:
    result = runner.invoke(app, ["analyze", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    # typer before 0.17 writes a choice as [local|ray]
    assert re.search(r"[<\[]local\|ray[>\]]", result.stdout) and "cpu|cuda[:N]" in result.stdout


@pytest.mark.parametrize("noted", [True, False])
def test_ctrl_c_that_a_native_read_turns_into_another_error_is_an_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noted: bool
) -> None:
    """A real SIGINT inside a tensor read that the reader reports as another error (safetensors'
    get_tensor raised ValueError in CI): exit 130, one line, nothing that looks done. Without the
    SIGINT, the same error is a bug with its traceback."""
    import signal
    import threading

    from opdlens.io.paths import read_marker
    from opdlens.io.stfile import SafetensorsFile

    run = write_run(tmp_path / "run", steps=(0, 2))
    real = SafetensorsFile.read_array
    raised_in_main: list[bool] = []

    def read_array(self, key, span=None):
        raised_in_main.append(threading.current_thread() is threading.main_thread())
        if noted:
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                pass
            else:
                return real(self, key, span)
        raise ValueError("could not determine the shape of object type 'UntypedStorage'")

    monkeypatch.setattr(SafetensorsFile, "read_array", read_array)
    out = tmp_path / "out"
    args = ["analyze", str(run), "--workers", "1", "--out", str(out), "-q"]
    result = runner.invoke(app, args)
    assert raised_in_main and raised_in_main[0]  # the SIGINT met the read, not the wait after it
    marker = read_marker(out)  # analyze keeps its cache/ for a rerun, marked unfinished
    assert marker is not None and marker["complete"] is False and not list(out.glob("metrics.*"))
    if noted:
        assert result.exit_code == 130, result.output
        assert result.stderr.strip() == "opdlens: interrupted; nothing partial was left behind."
    else:
        assert result.exit_code == 1 and type(result.exception) is ValueError
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_exit_a_command_chooses_after_a_ctrl_c_keeps_its_code(monkeypatch, tmp_path) -> None:
    """Only errors become the interrupt: a command that handled the Ctrl-C keeps its own exit."""
    import signal

    import typer

    def survey(*args: object, **kwargs: object) -> object:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise typer.Exit(3) from None
        raise AssertionError("no KeyboardInterrupt")

    monkeypatch.setattr(opdlens.survey, "survey", survey)
    result = runner.invoke(app, ["scan", str(tmp_path)])
    assert result.exit_code == 3 and "interrupted" not in result.output
