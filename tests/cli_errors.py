"""Assert that a CLI call failed as a user error: exit 2, one line on stderr, no traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from opdlens.cli import app


def scan_fails(args: Path | list[str | Path], *needles: str) -> str:
    """`opdlens scan ARGS` exits 2 with one line on stderr holding every needle; returns it."""
    argv = [str(a) for a in (args if isinstance(args, list) else [args])]
    result = CliRunner().invoke(app, ["scan", *argv])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
