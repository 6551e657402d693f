"""Hostile scorers and schedule options (issue 22, items 10–12, 27): one line, exit 2, or right."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from checkpoints import line_run  # noqa: E402
from cli_errors import cli_fails  # noqa: E402

from opdlens import open_run  # noqa: E402
from opdlens.errors import OptionError, ScorerError  # noqa: E402
from opdlens.extrapolation.callback import EffOPD  # noqa: E402
from opdlens.extrapolation.replay import replay  # noqa: E402
from opdlens.extrapolation.scorers import CommandScorer, make_scorer  # noqa: E402
from opdlens.io.paths import TEMP_MARKER  # noqa: E402
from opdlens.schedule import EffOPDSchedule  # noqa: E402

Q0 = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """θ_s = θ_0 + s·D for one attention matrix and a norm, saved at 0, 1, 2, 4."""
    return line_run(tmp_path / "run", seed=3, name=Q0)


@pytest.fixture
def scorer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of hostile scorers on sys.path; returns its name."""
    (tmp_path / "hostile_scorers_22.py").write_text(
        "import os, time\n"
        "class Bad:\n"
        "    def __float__(self):\n"
        "        return 1 / 0\n"
        "def huge(path):\n    return 10**400\n"
        "def bad_float(path):\n    return Bad()\n"
        "def two_lines(path):\n    raise RuntimeError('first line\\nsecond line')\n"
        "def late_writer(path):\n"
        "    time.sleep(0.6)\n"
        "    os.makedirs(path, exist_ok=True)\n"
        "    open(os.path.join(path, 'late.txt'), 'w').write('x')\n"
        "    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "hostile_scorers_22"


@pytest.mark.parametrize(
    ("alpha0", "n", "needle"),
    [
        (-1.0, 5, "'alpha0' parameter (--alpha0) of EffOPD's schedule must be a finite number > 0"),
        (0.0, 5, "Got 0.0 instead"),
        (float("nan"), 5, "Got nan instead"),
        ("2", 5, "Got '2' instead"),
        (2.0, 0, "'max_candidates' parameter (--max-candidates) of EffOPD's schedule"),
        (2.0, 2.5, "Got 2.5 instead"),
        (2.0, True, "Got True instead"),
        (1e308, 5, "--alpha0 1e+308 with --max-candidates 5"),
    ],
)  # fmt: skip
def test_one_schedule_value_refuses_the_same_everywhere(run: Path, alpha0, n, needle) -> None:
    r = open_run(run)
    from opdlens.analysis.foresight import foresee

    for build in (
        lambda: EffOPDSchedule(alpha0, n),
        lambda: EffOPD(alpha0, n),
        lambda: replay(r, "hindsight", alpha0=alpha0, max_candidates=n, dry_run=True),
        lambda: foresee(r, alpha0=alpha0, max_candidates=n, workers=1),
    ):
        with pytest.raises(OptionError) as e:
            build()
        assert needle in str(e.value)


def test_schedule_multiples_are_k_alpha0() -> None:
    """The α of design.md telescope: candidate k lies k·α₀ times θ_t − θ_a beyond θ_t."""
    s = EffOPDSchedule(0.75, 6)
    multiples = [m for _, m in s.alphas()]
    assert multiples == pytest.approx([0.75 * k for k in range(1, 7)], rel=1e-12)


def test_foresee_and_replay_cli_refuse_a_negative_alpha0(run: Path, tmp_path: Path) -> None:
    for cmd in (["foresee", run, "--workers", "1"], ["replay", run, "--scorer", "hindsight"]):
        cli_fails([*cmd, "--alpha0", "-1", "--out", tmp_path / "o"], "--alpha0", "Got -1.0")
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("fn", "needles"),
    [
        ("huge", ["returned 10000000000", "too large for a float"]),
        ("bad_float", ["returned <hostile_scorers_22.Bad object", "not a number"]),
        ("two_lines", ["raised RuntimeError", "first line second line"]),
    ],
)
def test_hostile_scorer_returns_are_one_line(
    run: Path, tmp_path: Path, scorer_module: str, fn: str, needles: list[str]
) -> None:
    out = tmp_path / "o"
    cli_fails(["replay", run, "--scorer", f"{scorer_module}:{fn}", "--out", out, "-q"], *needles)
    assert not out.exists() or not [p for p in out.iterdir() if TEMP_MARKER in p.name]


@pytest.mark.parametrize("timeout", ["inf", "1e300", "-1", "nan"])
def test_scorer_timeout_must_be_finite(run: Path, tmp_path: Path, timeout: str) -> None:
    cli_fails(["replay", run, "--scorer", "hindsight", "--scorer-timeout", timeout, "--out",
               tmp_path / "o"], "--scorer-timeout must be a positive, finite number")  # fmt: skip
    assert not (tmp_path / "o").exists()
    cli_fails(["ablate", run, "--step", "4", "--scorer-cmd", "echo 1 {checkpoint}",
               "--scorer-timeout", timeout, "--out", tmp_path / "o"], "--scorer-timeout")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_timed_out_scorer_thread_leaves_no_folder(
    run: Path, tmp_path: Path, scorer_module: str
) -> None:
    """The abandoned thread writes after the cleanup; what it wrote is removed when it ends."""
    out = tmp_path / "o"
    judge = make_scorer(f"{scorer_module}:late_writer", timeout=0.2)
    before = set(threading.enumerate())
    with pytest.raises(ScorerError, match="timed out after 0.2 s"):
        replay(open_run(run), judge, out=out)
    for thread in set(threading.enumerate()) - before:  # it sleeps 0.6 s, writes, returns
        thread.join(timeout=60)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "name", ["with space", "inj$(touch INJECTED)", "q'uote", 'dq"uote', "back`touch INJECTED`"]
)
def test_scorer_cmd_gets_the_path_as_one_argument(tmp_path: Path, name: str) -> None:
    """{checkpoint} unquoted or inside double quotes is "$1": nothing in the path runs."""
    ck = tmp_path / name
    ck.mkdir()
    (ck / "v").write_text("7\n")
    probe = f"{sys.executable} -c 'import sys, pathlib; print(pathlib.Path(sys.argv[1], \"v\").read_text())'"  # noqa: E501
    for template in (f"{probe} {{checkpoint}}", f'{probe} "{{checkpoint}}"', "cat {checkpoint}/v",
                     'test -d "{checkpoint}" && cat "{checkpoint}/v"'):  # fmt: skip
        assert CommandScorer(template).score(ck, "c") == 7.0
    assert not list(tmp_path.rglob("INJECTED")) and not Path("INJECTED").exists()


def test_scorer_cmd_in_an_out_dir_with_shell_syntax_runs_nothing(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "inj$(touch INJECTED)"
    proc = subprocess.run(
        [sys.executable, "-m", "opdlens", "replay", str(run), "--scorer-cmd",
         'test -d "{checkpoint}" && echo 1', "--out", str(out), "-q"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.rglob("INJECTED"))
    assert json.loads((out / "history.json").read_text())


def test_scorer_cmd_with_checkpoint_in_single_quotes_is_refused(run: Path, tmp_path: Path) -> None:
    cli_fails(["replay", run, "--scorer-cmd", "sh -c 'ls {checkpoint}'", "--out", tmp_path / "o"],
              "--scorer-cmd puts {checkpoint} inside single quotes")  # fmt: skip
    assert not (tmp_path / "o").exists()
