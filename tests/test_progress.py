"""Progress bars: one line per phase in a log file, a final state for work that ends early."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opdlens import progress
from opdlens.progress import Progress, track


class _Clock:
    """A stand-in for time.monotonic that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_one_line_for_fast_work(capsys: pytest.CaptureFixture[str]) -> None:
    list(track(range(100), 100, "analyze"))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1  # not one per 10 %
    assert lines[0].startswith("analyze [") and "100/100 in " in lines[0]


def test_log_file_gets_a_line_every_interval_for_slow_work(
    clock: _Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    bar = Progress(10, "slow")
    for _ in range(10):
        clock.now += 4.0  # 40 s in all: lines after 12, 24 and 36 s, and the final one
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("] ")[1].split()[0] for line in lines] == ["3/10", "6/10", "9/10", "10/10"]
    assert "12.0s elapsed" in lines[0] and lines[-1].endswith("10/10 in 40.0s")


def test_work_that_ends_early_shows_its_final_state(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(2000, "demo sft")
    for _ in range(200):
        bar.update()
    bar.close()
    bar.close()  # a second close adds nothing
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"demo sft [{'#' * 24}] 200/2000 (ended early) in ")


def test_terminal_redraws_in_place_and_completes_early_work(
    clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = Progress(2000, "demo sft")
    for _ in range(200):
        clock.now += 0.05
        bar.update()
    bar.close()
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    draws = text.split("\r")[1:]
    assert 40 <= len(draws) <= 101  # at most ten redraws a second, plus the final one
    assert draws[-1].startswith(f"demo sft [{'#' * 24}] 200/2000 (ended early)")


def test_an_error_leaves_no_final_state(monkeypatch: pytest.MonkeyPatch, clock: _Clock) -> None:
    def failing(n: int):
        for i in range(n):
            if i == 5:
                raise ValueError("bad file")
            clock.now += 0.2
            yield i

    for term, expected in ((io.StringIO(), ""), (_Terminal(), "\n")):
        monkeypatch.setattr(sys, "stderr", term)
        with pytest.raises(ValueError, match="bad file"):
            for _ in track(failing(10), 10, "analyze"):
                pass
        text = term.getvalue()
        assert "ended early" not in text and text.endswith(expected)
        assert text.count("\n") == len(expected)  # the error message starts on a fresh line


def test_disabled_bar_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(5, "quiet", enabled=False)
    for _ in range(3):
        bar.update()
    bar.close()
    assert capsys.readouterr().err == ""


def test_cli_log_has_one_progress_line_per_phase(hf_run, tmp_path: Path) -> None:
    root = hf_run("llama", "safetensors")

    def analyze(out: str, *extra: str) -> list[str]:
        cmd = [sys.executable, "-m", "opdlens", "analyze", str(root), "--out", str(tmp_path / out),
               "--ranks", "1", "--workers", "1", *extra]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # stderr: a pipe
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stderr.splitlines() if line.startswith("analyze [")]

    bars = analyze("m")
    assert len(bars) == 1, bars
    assert re.fullmatch(r"analyze \[#{24}\] (\d+)/\1 in \d+\.\ds", bars[0]), bars
    assert analyze("q", "--quiet") == []
