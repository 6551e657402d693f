"""Scorers that misbehave around opdlens: changing the working directory, forking, hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from opdlens.cli import app

from .conftest import linear_state, write_run

SCORER = '''
import os
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file

ELSEWHERE = {elsewhere!r}

def _score(path):
    total = 0.0
    for f in sorted(Path(path).glob("*.safetensors")):
        for k, v in load_file(f).items():
            if ".self_attn." in k or ".mlp." in k:
                total += float((v.astype(np.float64) ** 2).sum())
    return -total

def clean(path):
    return _score(path)

def wander(path):
    """Scores, then moves the whole process into a directory holding another `run1`."""
    value = _score(path)
    os.chdir(ELSEWHERE)
    return value
'''


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`here/run1` and `elsewhere/run1` (other weights); cwd = here; scorer module importable."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    write_run(here / "run1", steps=(0, 2, 4))
    write_run(elsewhere / "run1", steps=(0, 2, 4), state=lambda s: linear_state(s, seed=5))
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods/chdir_scorer.py").write_text(SCORER.format(elsewhere=str(elsewhere)))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    sys.modules.pop("chdir_scorer", None)
    monkeypatch.chdir(here)
    return here


@pytest.mark.parametrize("command", ["ablate", "replay"])
def test_a_scorer_that_changes_directory_does_not_change_the_run(
    two_runs: Path, command: str
) -> None:
    extra = ["--step", "4", "--ranks", "1"] if command == "ablate" else []
    table = "ablation.csv" if command == "ablate" else "history.csv"

    def run(fn: str, out: str) -> pd.DataFrame:
        os.chdir(two_runs)
        result = CliRunner().invoke(
            app, [command, "run1", *extra, "--scorer", f"chdir_scorer:{fn}", "--out", out, "-q"]
        )
        assert result.exit_code == 0, result.output
        assert Path.cwd() == two_runs  # restored after every call
        return pd.read_csv(two_runs / out / table)

    clean = run("clean", "clean")
    wandered = run("wander", "wander")
    pd.testing.assert_frame_equal(clean, wandered)
    if command == "ablate":
        curve = [pd.read_csv(two_runs / o / "rank_curve.csv") for o in ("clean", "wander")]
        pd.testing.assert_frame_equal(*curve)
    assert not (two_runs.parent / "elsewhere" / "clean").exists()
    assert not (two_runs.parent / "elsewhere" / "wander").exists()


def test_a_run_opened_by_relative_path_keeps_reading_its_files(two_runs: Path) -> None:
    """Paths are resolved when the run is opened: a later chdir (e.g. by a scorer thread that
    timed out and is still running) cannot swap the run for another of the same name."""
    from opdlens import open_run

    run = open_run("run1")
    os.chdir(two_runs.parent / "elsewhere")
    name = "model.layers.0.mlp.up_proj.weight"
    expected = linear_state(4)[name]
    assert run.checkpoint(4).path == two_runs / "run1" / "checkpoint-4"
    assert (run.weight(name, 4).T if run.module(name).transposed else run.weight(name, 4)).equal(
        expected
    )
    assert run.delta(name, 4).equal(expected - linear_state(0)[name])
    assert all(p.is_absolute() for p in run.input_paths)
    assert Path(str(run.open_args["path"])) == two_runs / "run1"


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for a reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _gone(pid: int, within: float = 30.0) -> bool:
    """Whether a process ends within `within` seconds (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_a_backgrounded_child_neither_delays_the_score_nor_survives_it(tmp_path: Path) -> None:
    from opdlens.extrapolation.scorers import CommandScorer

    pids = tmp_path / "pids"
    cmd = f"test -d {{checkpoint}} && (sleep 30 & echo $! > {pids}; wait) & sleep 0.5; echo 1.5"
    start = time.monotonic()
    assert CommandScorer(cmd, timeout=20).score(tmp_path, "step 1") == 1.5
    assert time.monotonic() - start < 15  # not its 30 s: it holds no pipe opdlens reads
    assert _pids(pids) and _gone(_pids(pids)[0])  # killed with its group, not left running


def test_a_timed_out_command_takes_its_children_with_it(tmp_path: Path) -> None:
    from opdlens import ScorerError
    from opdlens.extrapolation.scorers import CommandScorer

    pids = tmp_path / "pids"
    cmd = f"sleep 60 & echo $! > {pids}; sleep 60 # {{checkpoint}}"
    start = time.monotonic()
    with pytest.raises(ScorerError, match="timed out after 1.0 s"):
        CommandScorer(cmd, timeout=1.0).score(tmp_path, "step 1")
    assert time.monotonic() - start < 15  # not the 60 s of its sleep
    assert _pids(pids) and _gone(_pids(pids)[0])


@pytest.mark.parametrize(("sig", "rc", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated")])  # fmt: skip
def test_interrupting_ablate_ends_its_running_scorers_at_once(
    tmp_path: Path, sig: signal.Signals, rc: int, word: str
) -> None:
    run = write_run(tmp_path / "run", steps=(0, 2, 4))
    pids, out = tmp_path / "pids", tmp_path / "out"
    cmd = f"echo $$ >> {pids}; sleep 60 & echo $! >> {pids}; wait # {{checkpoint}}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "opdlens", "ablate", str(run), "--step", "4", "--scorer-cmd", cmd,
         "--jobs", "2", "--out", str(out), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_pids(pids)) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(_pids(pids)) == 4, proc.communicate()
        time.sleep(0.3)
        start = time.monotonic()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - start < 10
    assert proc.returncode == rc, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and word in lines[0], stderr
    assert all(_gone(p) for p in _pids(pids))
    assert not [p.name for p in out.iterdir() if p.name.startswith("candidate-")]


def test_killing_opdlens_with_sigkill_still_ends_its_scorers(tmp_path: Path) -> None:
    """SIGKILL gives opdlens no chance to clean up: each command's supervisor ends its group."""
    run = write_run(tmp_path / "run", steps=(0, 2, 4))
    pids, out = tmp_path / "pids", tmp_path / "out"
    cmd = f"echo $$ >> {pids}; sleep 60 & echo $! >> {pids}; wait; echo 1 # {{checkpoint}}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "opdlens", "ablate", str(run), "--step", "4", "--scorer-cmd", cmd,
         "--jobs", "2", "--out", str(out), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_pids(pids)) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(_pids(pids)) == 4
        assert all(_alive(p) for p in _pids(pids))  # the shells and their sleeps are running
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert all(_gone(p) for p in _pids(pids)), [p for p in _pids(pids) if _alive(p)]


def test_a_scorer_command_keeps_its_exit_status_under_the_supervisor(tmp_path: Path) -> None:
    from opdlens import ScorerError
    from opdlens.extrapolation.scorers import CommandScorer

    with pytest.raises(ScorerError, match="exited with status 3 on step 1.*: bad"):
        CommandScorer("echo bad >&2; exit 3 # {checkpoint}").score(tmp_path, "step 1")
    with pytest.raises(ScorerError, match="exited with status -9 on step 1"):
        CommandScorer("kill -9 $$ # {checkpoint}").score(tmp_path, "step 1")
    assert CommandScorer("printf '%s\\n' 2.5 # {checkpoint}").score(tmp_path, "step 1") == 2.5
