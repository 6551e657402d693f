"""The principal figure drawn from curves built by hand: lines, baselines and group bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opdlens.analysis.principal import CURVE_COLUMNS
from opdlens.errors import NothingToDrawError, OptionError
from opdlens.viz.principal import principal_drift, principal_energy, principal_figure


def _curves() -> pd.DataFrame:
    rows = []
    for label, runs, scale in (("OPD", 3, 1.0), ("RL", 1, 0.5)):
        for step in (2, 4, 8):
            e = 0.1 * scale * step
            rows.append({"label": label, "step": step, "k": 4, "runs": runs, "energy_left": e,
                         "energy_right": e / 2, "random_left": 0.05, "random_right": 0.02,
                         "drift": 0.01 * step, "energy_left_min": e - 0.01,
                         "energy_left_max": e + 0.01, "drift_min": 0.0, "drift_max": 0.1})  # fmt: skip
    return pd.DataFrame(rows)[CURVE_COLUMNS]


def test_energy_lines_and_their_random_baselines() -> None:
    ax = principal_energy(_curves())
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines) == ["OPD", "OPD: random", "RL", "RL: random"]
    np.testing.assert_allclose(lines["OPD"].get_ydata(), [0.2, 0.4, 0.8])
    np.testing.assert_allclose(lines["RL: random"].get_ydata(), [0.05] * 3)
    assert lines["OPD: random"].get_linestyle() == "--"
    assert len(ax.collections) == 1  # OPD is a group of 3 runs: its range is shaded; RL is one run
    assert "top-4" in ax.get_ylabel()


def test_drift_panel_and_the_figure() -> None:
    ax = principal_drift(_curves())
    (opd, rl) = ax.get_lines()
    np.testing.assert_allclose(rl.get_ydata(), [0.02, 0.04, 0.08])
    fig = principal_figure(_curves())
    assert len(fig.axes) == 2


def test_bad_input_names_the_function() -> None:
    with pytest.raises(OptionError, match="principal_energy needs the columns"):
        principal_energy(pd.DataFrame({"label": ["x"]}))
    with pytest.raises(NothingToDrawError, match="principal_drift"):
        principal_drift(pd.DataFrame(columns=CURVE_COLUMNS))
