"""frames: a plot or sentence refuses a frame it cannot use in one line naming what is wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opdlens.errors import NothingToDrawError, OptionError
from opdlens.frames import check_frame, final_steps, ks_of, ordered, run_names, values_of


def test_check_frame_names_the_argument_the_columns_and_the_fix() -> None:
    df = pd.DataFrame({"step": [1], "energy_k4": [0.5]})
    assert check_frame(df, "f", ["step"]) is df
    with pytest.raises(TypeError, match=r"^The 'df' argument of f must be a pandas DataFrame\. "
                                        r"Got list instead\. Pass the DataFrame returned by "
                                        r"opdlens\.analyze\.$"):  # fmt: skip
        check_frame([1, 2], "f", ["step"])
    with pytest.raises(OptionError, match=r"needs the columns \['step', 'run'\]; got "
                                          r"\['step', 'energy_k4'\] \(missing \['run'\]\)\. HINT"):  # fmt: skip
        check_frame(df, "f", ["step", "run"], hint="HINT")
    with pytest.raises(NothingToDrawError, match="The 'table' argument of f has no rows"):
        check_frame(df.iloc[:0], "f", ["step"], arg="table")


def test_ks_values_runs_steps_and_order() -> None:
    df = pd.DataFrame({"run": ["a", "a", "b"], "step": [0, 4, 4],
                       "energy_k16": [0.1, 0.2, 0.3], "energy_k4": [pd.NA, 0.5, 0.6]})  # fmt: skip
    assert ks_of(df, "energy", "f") == [4, 16]
    with pytest.raises(OptionError, match=r"at least one column named align_k\{K\}"):
        ks_of(df, "align", "f")
    values = values_of(df["energy_k4"].astype("Float64"))
    assert values.dtype == np.float64 and np.isnan(values[0]) and values[1] == 0.5
    assert run_names(df, None, "f") == ["a", "b"] and run_names(df, ["b"], "f") == ["b"]
    with pytest.raises(OptionError, match=r"must name runs in df\. Got \['c'\]"):
        run_names(df, ["c"], "f")
    assert final_steps(df, ["a", "b"], None, "f") == {"a": 4, "b": 4}
    with pytest.raises(OptionError, match="run 'b' has steps \\[4\\]"):
        final_steps(df, ["a", "b"], 0, "f")
    assert ordered(["mlp", "zeta", "attn", "alpha"], ["attn", "mlp"]) == ["attn", "mlp", "alpha",
                                                                          "zeta"]  # fmt: skip
