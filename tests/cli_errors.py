"""Assert that a CLI call failed as a user error: exit 2, one line on stderr, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from opdlens.cli import app


def cli_fails(argv: list[str | Path], *needles: str) -> str:
    """`opdlens ARGV` exits 2 with one line on stderr holding every needle; returns it."""
    result = CliRunner().invoke(app, [str(a) for a in argv])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def scan_fails(args: Path | list[str | Path], *needles: str) -> str:
    """`opdlens scan ARGS` exits 2 with one line on stderr holding every needle; returns it."""
    return cli_fails(["scan", *(args if isinstance(args, list) else [args])], *needles)


def scan_fails_in_child(run: Path) -> str:
    """`python -m opdlens scan RUN` in a child exits 2 with one line on stderr; returns it.

    A child, so that a hang fails the test (timeout) instead of stalling the suite.
    """
    proc = subprocess.run([sys.executable, "-m", "opdlens", "scan", str(run)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]
