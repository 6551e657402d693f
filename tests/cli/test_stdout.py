"""A full, closed or broken stdout (issue 22, item 18): no traceback, and an honest exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
import checkpoints  # noqa: E402

FULL = Path("/dev/full")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stdout")
    return checkpoints.write_hf_run(root, "llama", dtype=torch.float32, steps=(0, 1, 2),
                                    trainer_files=False)  # fmt: skip


def _opdlens(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opdlens", *args], stderr=subprocess.PIPE,
                          text=True, timeout=120, **kw)  # fmt: skip


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full here")
@pytest.mark.parametrize("args", [["scan", "RUN"], ["scan", "RUN", "--json"], ["--version"],
                                  ["--help"], ["scan", "--help"]])  # fmt: skip
def test_a_full_stdout_is_one_line_exit_2(run: Path, args: list[str]) -> None:
    with FULL.open("w") as full:
        proc = _opdlens([str(run) if a == "RUN" else a for a in args], stdout=full)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and "cannot write to standard output (No space left" in lines[0]


def test_a_closed_stdout_is_one_line_exit_2(run: Path) -> None:
    proc = subprocess.run(f"'{sys.executable}' -m opdlens scan '{run}' >&-", shell=True,
                          stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot write to standard output" in proc.stderr


def test_a_pipe_whose_reader_left_ends_quietly_with_141(run: Path) -> None:
    """As `yes | head` does: no message, the status a shell gives a program SIGPIPE ended."""
    proc = subprocess.Popen([sys.executable, "-m", "opdlens", "scan", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # before the child has printed anything (it takes ~1 s to start)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
