"""ablate's parts: how tensors are grouped, and the 'by' option."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdlens import OptionError, open_run
from opdlens.extrapolation.ablate_parts import ScoreBook, check_by, group_tensors

from .conftest import linear_state


def test_groups_partition_the_float_tensors(linear_run: Path) -> None:
    run = open_run(linear_run)
    floats = {n for n, v in linear_state(0).items() if v.is_floating_point()}
    for by in ("block", "layer", "layer,block", "kind"):
        groups = group_tensors(run, by)
        names = [n for g in groups for n in g.tensors]
        assert sorted(names) == sorted(floats) and len(names) == len(set(names))
    assert [g.name for g in group_tensors(run, "block")] == ["embed", "attn", "mlp", "norm", "head"]
    assert [g.name for g in group_tensors(run, "layer")] == [
        "embed", "layer 0", "layer 1", "layer 2", "norm", "head"
    ]  # fmt: skip
    by_lb = group_tensors(run, "block,layer")
    assert by_lb[1].name == "layer 0 attn" and (by_lb[1].layer, by_lb[1].block) == (0, "attn")
    assert "layer 0 norm" in [g.name for g in by_lb]  # input_layernorm sits in layer 0
    kinds = {g.name: len(g.tensors) for g in group_tensors(run, "kind")}
    assert kinds["q_proj"] == 3 and kinds["down_proj"] == 3 and kinds["lm_head"] == 1


def test_by_accepts_either_order_and_refuses_the_rest() -> None:
    assert check_by("block,layer") == "layer,block" == check_by(["layer", "block"])
    with pytest.raises(
        OptionError, match="must be one of block, layer, layer,block, kind. Got 'expert'"
    ):
        check_by("expert")


def test_score_book_keeps_only_the_scores_of_its_identity(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    book = ScoreBook(path, {"step": 4, "scorer": "s"})
    book.put("full", 1.5)
    again = ScoreBook(path, {"step": 4, "scorer": "s"})
    assert again.get("full") == 1.5 and again.get("base") is None and again.reused == {"full"}
    other = ScoreBook(path, {"step": 8, "scorer": "s"})
    assert other.get("full") is None and "another run, step or scorer" in other.warnings[0]
    path.write_text("{not json")
    broken = ScoreBook(path, {"step": 4, "scorer": "s"})
    assert broken.scores == {} and "could not be read" in broken.warnings[0]
