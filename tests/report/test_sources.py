"""The Sources value: frozen, one frame for all runs, their final steps and top tensors."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from opdlens.report import ReportOptions, from_frame


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
