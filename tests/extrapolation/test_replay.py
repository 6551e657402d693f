"""EffOPD replay: accept/reject against known scores, no leftovers (the schedule: test_schedule.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from opdlens import open_run
from opdlens.errors import OutputError, ScorerError
from opdlens.extrapolation.replay import OFFLINE_NOTE, replay, replay_summary
from opdlens.io.writer import is_temp_dir

from .conftest import linear_state, write_run

Q0 = "model.layers.0.self_attn.q_proj.weight"


def _effective_step(path: Path) -> float:
    """Known answer on the linear run: θ = θ_0 + e·D, so e follows from one tensor."""
    w = load_file(next(path.glob("*.safetensors")))[Q0].double()
    w0, w1 = linear_state(0)[Q0].double(), linear_state(1)[Q0].double()
    return float(((w - w0) * (w1 - w0)).sum() / ((w1 - w0) ** 2).sum())


def test_known_scorer_gives_expected_pattern(linear_run: Path, tmp_path: Path) -> None:
    calls: list[float] = []

    def score(path: Path) -> float:  # best at effective step 5
        calls.append(round(_effective_step(Path(path)), 6))
        return -abs(calls[-1] - 5)

    result = replay(open_run(linear_run), score, out=tmp_path / "out")
    h = result.history
    # step 1 (anchor 0): e = 1, 3, 5, 7 → accept, accept, reject at 7
    # step 2 (anchor 1): e = 2, 4, 6 → accept 4, reject 6 (|6-5| = |4-5|: not better)
    # step 4 (anchor 2): e = 4, 8 → reject; step 8 (anchor 4): e = 8, 16 → reject
    assert calls == [1, 3, 5, 7, 2, 4, 6, 4, 8, 8, 16]
    assert h["step"].tolist() == [1, 1, 1, 1, 2, 2, 2, 4, 4, 8, 8]
    assert h["candidate"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1]
    assert h["accepted"].tolist()[1:4] == [True, True, False]
    assert h["alpha"].tolist()[1:4] == pytest.approx([2, 2 / 3, 2 / 5])
    assert h["multiple"].tolist()[1:4] == pytest.approx([2, 4, 6])
    kept = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert kept == [".opdlens", "history.csv", "history.json", "step-1-candidate-1", "step-1-candidate-2",
                    "step-2-candidate-1"]  # fmt: skip
    assert _effective_step(tmp_path / "out/step-1-candidate-2") == pytest.approx(5)
    saved = json.loads((tmp_path / "out/history.json").read_text())
    assert saved["note"] == OFFLINE_NOTE and saved["oracle"] is False and len(saved["rows"]) == 11
    # rel_error of step 1 candidate 2 (θ_5) against step 8: ‖θ5 − θ8‖ / ‖θ1 − θ8‖ = 3/7
    assert h.loc[2, "rel_error_8"] == pytest.approx(3 / 7)
    assert h.loc[2, "equivalent_step"] == 4


def test_summary_keeps_rel_error_to_the_next_saved_step_only(linear_run: Path) -> None:
    result = replay(open_run(linear_run), "hindsight", dry_run=True, max_candidates=1)
    summary = replay_summary(result.history)
    assert list(summary) == ["step", "candidate", "alpha", "score", "accepted", "next_step",
                             "rel_error_next", "equivalent_step"]  # fmt: skip
    assert summary["next_step"].tolist() == [2, 2, 4, 4, 8, 8, pd.NA, pd.NA]
    # step 2 candidate 1 = θ_4 (anchor 1, α 2): against step 4 it lands exactly (0); θ_2 stands still (1).
    assert summary["rel_error_next"].tolist()[2:4] == pytest.approx([1.0, 0.0])
    assert summary["rel_error_next"].iloc[-2:].isna().all()
    assert summary["equivalent_step"].tolist()[2:4] == [2, 4]


def test_hindsight_is_an_oracle_and_dry_run_keeps_nothing(linear_run: Path, tmp_path: Path) -> None:
    result = replay(open_run(linear_run), "hindsight", out=tmp_path / "out", dry_run=True,
                    max_candidates=2)  # fmt: skip
    assert "ORACLE" in result.scorer and result.history.attrs["oracle"] is True
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".opdlens",
        "history.csv",
        "history.json",
    ]
    assert result.accepted == []
    assert result.history.groupby("step").size().max() <= 3
    assert "ORACLE" in json.loads((tmp_path / "out/history.json").read_text())["scorer"]


@pytest.mark.parametrize("where", ["saved", "candidate"])
def test_failing_scorer_names_the_candidate_and_leaves_nothing(
    linear_run: Path, tmp_path: Path, where: str
) -> None:
    def score(path: Path) -> float:
        if where == "saved" or "candidate" in Path(path).name:
            raise RuntimeError("eval crashed")
        return 0.0

    label = "step 1 as saved" if where == "saved" else "step 1 candidate 1"
    with pytest.raises(ScorerError, match=f"raised RuntimeError on {label}.*eval crashed"):
        replay(open_run(linear_run), score, out=tmp_path / "out")
    assert not any(
        is_temp_dir(p) or p.name.startswith("step-") for p in (tmp_path / "out").iterdir()
    )


def test_command_scorer_timeout_and_no_number(linear_run: Path, tmp_path: Path) -> None:
    run = open_run(linear_run)
    with pytest.raises(ScorerError, match="timed out after 0.3 s on step 1 as saved"):
        replay(run, scorer_cmd="sleep 5; echo 1 {checkpoint}", scorer_timeout=0.3, dry_run=True)
    with pytest.raises(ScorerError, match="printed nothing on step 1 candidate 1"):
        replay(
            run, scorer_cmd="case {checkpoint} in *candidate*) ;; *) echo 0.5 ;; esac", dry_run=True
        )
    result = replay(run, scorer_cmd="echo computing; echo 1.5 # {checkpoint}", dry_run=True)
    assert result.history["accepted"].dropna().tolist() == [False] * 4  # equal scores never improve


def test_replay_argument_checks(linear_run: Path, tmp_path: Path) -> None:
    run = open_run(linear_run)
    with pytest.raises(ValueError, match="--out DIR"):
        replay(run, "hindsight")
    with pytest.raises(ValueError, match="exactly one scorer"):
        replay(run, "hindsight", scorer_cmd="echo {checkpoint}", dry_run=True)
    with pytest.raises(ValueError, match="'alpha0' parameter.*finite"):
        replay(run, "hindsight", alpha0=float("nan"), dry_run=True)
    with pytest.raises(ScorerError, match="Cannot import scorer module 'no_such_mod_xyz'"):
        replay(run, "no_such_mod_xyz:score", dry_run=True)
    with pytest.raises(Exception, match="overlaps the input"):
        replay(run, "hindsight", out=linear_run / "replay")


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: its bytes and mode."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_scorer_never_writes_into_the_run(linear_run: Path, tmp_path: Path) -> None:
    before = _tree(linear_run)
    cmd = "touch {checkpoint}/eval_results.json; chmod 000 {checkpoint}/model.safetensors; echo 1"
    result = replay(open_run(linear_run), scorer_cmd=cmd, out=tmp_path / "out")
    assert len(result.history) == 8  # 4 saved steps scored, each with one (equal) candidate
    assert _tree(linear_run) == before  # byte-identical, same modes, no new file
    # Every scorer copy and every rejected candidate is gone.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".opdlens", "history.csv", "history.json"
    ]  # fmt: skip


def test_hindsight_on_a_run_with_one_checkpoint_warns(tmp_path: Path, caplog) -> None:
    root = write_run(tmp_path / "run", steps=(0, 4))
    result = replay(open_run(root), "hindsight", out=tmp_path / "out", dry_run=True)
    assert len(result.warnings) == 1 and "scores the run against itself" in result.warnings[0]
    assert result.history.attrs["warnings"] == result.warnings
    assert json.loads((tmp_path / "out/history.json").read_text())["warnings"] == result.warnings
    assert result.warnings[0] in caplog.text
    # On the command line: on stderr, as one line.
    proc = subprocess.run(
        [sys.executable, "-m", "opdlens", "replay", str(root), "--scorer", "hindsight",
         "--dry-run", "--quiet"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if "against itself" in ln] == [
        f"opdlens: WARNING: {result.warnings[0]}"
    ]


def test_hindsight_says_which_replayed_steps_reach_its_target(linear_run: Path) -> None:
    result = replay(open_run(linear_run), "hindsight", dry_run=True, max_candidates=1)
    assert result.warnings == [
        "hindsight scorer: replayed step(s) [8] are not before its target step 8; there it "
        "scores closeness to itself or to an earlier checkpoint, so no candidate can be "
        "accepted and those rows say nothing about where training went."
    ]


def test_a_users_directory_where_a_candidate_goes_is_refused_not_replaced(
    linear_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    user = out / "step-1-candidate-1"

    def score(path: Path) -> float:  # a user (or another program) puts a directory there
        user.mkdir(exist_ok=True)
        (user / "notes.txt").write_text("mine")
        return _effective_step(Path(path))

    with pytest.raises(OutputError, match=r"step-1-candidate-1 exists and opdlens did not write"):
        replay(open_run(linear_run), score, out=out)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert (user / "notes.txt").read_text() == "mine"
