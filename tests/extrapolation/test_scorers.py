"""Scorers: import errors, commands that print a number (or not), timeouts, the oracle label."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdlens import open_run
from opdlens.errors import OutputError, ScorerError
from opdlens.extrapolation.scorers import (
    CommandScorer,
    HindsightScorer,
    make_scorer,
    private_copy,
    score_input,
)

Q0 = "model.layers.0.self_attn.q_proj.weight"


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
    with pytest.raises(ValueError, match="positive, finite number of seconds"):
        make_scorer(command="echo {checkpoint}", timeout=0)


def test_hindsight_scorer_is_minus_distance(linear_run: Path) -> None:
    run = open_run(linear_run)
    scorer = make_scorer("hindsight", run=run, tensors=["model.layers.0.mlp.up_proj.weight"])
    assert isinstance(scorer, HindsightScorer) and scorer.oracle and "ORACLE" in scorer.label
    assert scorer.score(linear_run / "checkpoint-8", "c") == 0.0
    d8 = -scorer.score(linear_run / "checkpoint-0", "c")
    assert -scorer.score(linear_run / "checkpoint-4", "c") == pytest.approx(d8 / 2)


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: its bytes and mode."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_scorer_gets_a_private_copy_it_may_change(linear_run: Path, tmp_path: Path) -> None:
    ck = linear_run / "checkpoint-2"
    before = _tree(linear_run)
    seen: dict[str, object] = {}

    def vandal(path: Path) -> float:
        path = Path(path)
        seen["path"], seen["files"] = path, sorted(p.name for p in path.iterdir())
        weights = path / "model.safetensors"
        assert weights.read_bytes() == (ck / "model.safetensors").read_bytes()
        assert weights.stat().st_ino != (ck / "model.safetensors").stat().st_ino
        assert weights.stat().st_nlink == 1  # a copy, not a hard link to the input
        weights.chmod(0o644)
        with open(weights, "r+b") as f:
            f.write(b"\0" * 64)
        weights.chmod(0o000)
        (path / "eval_results.json").write_text("{}")
        (path / "sub").mkdir()
        (path / "sub" / "x").write_text("x")
        (path / "sub").chmod(0o500)
        path.chmod(0o500)
        return 1.0

    copy = tmp_path / "scoring-copy"
    assert score_input(make_scorer(vandal), ck, "step 2 as saved", copy) == 1.0
    assert seen["path"] == copy and not copy.exists() and not copy.is_symlink()
    # Model files and their config/tokenizer, not the trainer's optimizer state.
    assert seen["files"] == ["config.json", "model.safetensors", "tokenizer_config.json"]
    assert _tree(linear_run) == before


def test_private_copy_of_a_sharded_checkpoint_never_reuses_a_directory(tmp_path: Path) -> None:
    from .conftest import linear_state, save_state

    ck = save_state(tmp_path / "ck", linear_state(1), sharded=True)
    copy = private_copy(ck, tmp_path / "copy")
    names = sorted(p.name for p in copy.iterdir())
    assert names == ["config.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                     "tokenizer_config.json"]  # fmt: skip
    for n in names:
        assert (copy / n).read_bytes() == (ck / n).read_bytes()
    with pytest.raises(OutputError, match="Cannot write the output .*copy"):
        private_copy(ck, tmp_path / "copy")  # exists already: never reused or merged
    assert sorted(p.name for p in copy.iterdir()) == names


def test_the_hindsight_oracle_reads_the_input_without_a_copy(linear_run: Path, tmp_path: Path):
    scorer = make_scorer("hindsight", run=open_run(linear_run), tensors=[Q0])
    copy = tmp_path / "never-made"
    assert score_input(scorer, linear_run / "checkpoint-8", "c", copy) == 0.0
    assert not copy.exists()
