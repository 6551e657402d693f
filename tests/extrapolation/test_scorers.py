"""Scorers: import errors, commands that print a number (or not), timeouts, the oracle label."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdlens import open_run
from opdlens.errors import ScorerError
from opdlens.extrapolation.scorers import CommandScorer, HindsightScorer, make_scorer


def test_module_function_scorer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_eval_mod.py").write_text(
        "def score(path):\n    return len(str(path))\n"
        "def bad(path):\n    return 'high'\n"
        "def nan(path):\n    return float('nan')\n"
        "value = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert make_scorer("my_eval_mod:score").score(Path("/abc"), "x") == 4.0
    assert make_scorer("my_eval_mod.score").score(Path("/abc"), "x") == 4.0
    with pytest.raises(ScorerError, match="returned 'high', not a number"):
        make_scorer("my_eval_mod:bad").score(Path("/a"), "cand 1")
    with pytest.raises(ScorerError, match="returned nan"):
        make_scorer("my_eval_mod:nan").score(Path("/a"), "cand 1")
    with pytest.raises(ScorerError, match="no callable 'value'"):
        make_scorer("my_eval_mod:value")
    with pytest.raises(ScorerError, match="Cannot import scorer module 'nope_nope'"):
        make_scorer("nope_nope:score")
    with pytest.raises(ValueError, match="module:function"):
        make_scorer("justaname")


def test_python_scorer_timeout() -> None:
    import time

    scorer = make_scorer(lambda p: time.sleep(2) or 1.0, timeout=0.2)
    with pytest.raises(ScorerError, match="timed out after 0.2 s on step 3 candidate 2"):
        scorer.score(Path("/a"), "step 3 candidate 2")


def test_command_scorer(tmp_path: Path) -> None:
    assert CommandScorer("echo loading; echo ' -2.5 ' # {checkpoint}").score(tmp_path, "c") == -2.5
    with pytest.raises(ScorerError, match="printed 'done' as its last line on c"):
        CommandScorer("echo 1; echo done # {checkpoint}").score(tmp_path, "c")
    with pytest.raises(ScorerError, match="exited with status 3 on c .*boom"):
        CommandScorer("echo boom >&2; exit 3 # {checkpoint}").score(tmp_path, "c")
    with pytest.raises(ValueError, match="placeholder"):
        CommandScorer("echo 1")
    path = tmp_path / "dir with space"
    path.mkdir()
    (path / "v").write_text("7\n")
    assert CommandScorer("cat {checkpoint}/v").score(path, "c") == 7.0
    with pytest.raises(ValueError, match="positive number of seconds"):
        make_scorer(command="echo {checkpoint}", timeout=0)


def test_hindsight_scorer_is_minus_distance(linear_run: Path) -> None:
    run = open_run(linear_run)
    scorer = make_scorer("hindsight", run=run, tensors=["model.layers.0.mlp.up_proj.weight"])
    assert isinstance(scorer, HindsightScorer) and scorer.oracle and "ORACLE" in scorer.label
    assert scorer.score(linear_run / "checkpoint-8", "c") == 0.0
    d8 = -scorer.score(linear_run / "checkpoint-0", "c")
    assert -scorer.score(linear_run / "checkpoint-4", "c") == pytest.approx(d8 / 2)
