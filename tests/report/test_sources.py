"""The Sources value: frozen, one frame for all runs, their final steps and top tensors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from opdlens.errors import InputNotFoundError
from opdlens.report import ReportOptions, SourceOptions, from_frame, load_sources


def _frame() -> pd.DataFrame:
    rows = [
        ("OPD", s, t, share) for s in (1, 2) for t, share in (("a", 0.5), ("b", 0.3), ("c", 0.2))
    ]
    rows += [("RL", 3, t, share) for t, share in (("a", 0.1), ("b", 0.6), ("c", 0.3))]
    return pd.DataFrame(rows, columns=["run", "step", "tensor", "update_share"])


def test_sources_hold_every_run_once_and_rank_their_tensors() -> None:
    src = from_frame(_frame())
    assert src.labels == ["OPD", "RL"] and len(src.frame) == 9
    assert src.final_steps == {"OPD": 2, "RL": 3}
    top = src.top_tensors(2)
    assert top[["run", "step", "tensor"]].values.tolist() == [
        ["OPD", 2, "a"], ["OPD", 2, "b"], ["RL", 3, "b"], ["RL", 3, "c"]
    ]  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        src.notes = ("changed",)  # type: ignore[misc]


def test_report_options_default_to_the_cli_defaults() -> None:
    assert ReportOptions() == ReportOptions(band="sd", title=None, top=20, record={})


def test_source_options_take_paths_as_users_write_them(tmp_path: Path) -> None:
    opts = SourceOptions(str(tmp_path / "a"), labels=["A"], base=str(tmp_path / "b"),
                         checkpoints={"3": str(tmp_path / "c")}, metrics=[str(tmp_path / "m")],
                         ablation={"A": str(tmp_path / "abl")})  # fmt: skip
    assert opts.paths == (tmp_path / "a",) and opts.labels == ("A",)
    assert opts.base == tmp_path / "b" and opts.checkpoints == {3: tmp_path / "c"}
    assert opts.metrics == (tmp_path / "m",) and opts.ablation == {"A": tmp_path / "abl"}
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_sources(SourceOptions([str(tmp_path / "absent")]), tmp_path / "out")
