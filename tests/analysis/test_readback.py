"""readback: the marker and column checks on tables read back from an earlier command's output."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from opdlens.analysis.readback import check_finished, check_table
from opdlens.errors import InputFileError
from opdlens.io.paths import write_marker

GOOD = pd.DataFrame({"step": [1, 2], "tensor": ["a", "b"], "layer": pd.array([0, None], "Int64"),
                     "update_share": [0.25, 0.75], "energy_k4": [0.5, 1.0]})  # fmt: skip


def test_a_table_as_written_passes() -> None:
    assert check_table(GOOD, Path("m.parquet"), "t", ["step", "update_share"]) is GOOD


@pytest.mark.parametrize(
    ("df", "needle"),
    [
        (GOOD.iloc[0:0], "has no rows"),
        (GOOD.drop(columns="update_share"), "has no column 'update_share'"),
        (GOOD.assign(update_share=["x", "y"]), "column 'update_share' holds"),
        (GOOD.assign(energy_k4=[True, False]), "column 'energy_k4' holds bool"),
        (GOOD.assign(step=[1.5, 2.0]), "column 'step' holds float64 values, expected whole"),
        (GOOD.assign(tensor=[1, 2]), "column 'tensor' holds int64 values, expected text"),
    ],
)
def test_a_tampered_table_is_refused(df: pd.DataFrame, needle: str) -> None:
    with pytest.raises(InputFileError, match="m.parquet") as e:
        check_table(df, Path("m.parquet"), "t", ["step", "update_share"])
    assert needle in str(e.value)


def test_only_a_finished_output_of_the_command_is_read(tmp_path: Path) -> None:
    check_finished(tmp_path, "analyze", "analyze")  # no marker: tables copied by hand
    write_marker(tmp_path, "analyze", complete=False)
    with pytest.raises(InputFileError, match="complete: false"):
        check_finished(tmp_path, "analyze", "analyze")
    write_marker(tmp_path, "ablate", complete=True)
    with pytest.raises(InputFileError, match="holds the output of `opdlens ablate`"):
        check_finished(tmp_path, "analyze", "analyze")
    write_marker(tmp_path, "analyze", complete=True)
    check_finished(tmp_path, "analyze", "analyze")
