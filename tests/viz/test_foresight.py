"""Foresight plots draw what the foresee frame says, per run, and refuse frames they cannot draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import opdlens
from opdlens.errors import NothingToDrawError, OptionError
from opdlens.viz.foresight import (
    alpha_star_by_step,
    effopd_vs_optimal,
    foresight_figure,
    foresight_map,
    foresight_sentence,
)


@pytest.fixture(scope="module")
def frame(viz_runs) -> pd.DataFrame:
    """foresee on the OPD-like and RL-like runs (saved at 0, 1, 2, 4), labelled."""
    parts = [opdlens.foresee(opdlens.open_run(path), workers=1).assign(run=label.upper())
             for label, path in viz_runs.items()]  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def _overall_optimal(df: pd.DataFrame, run: str) -> pd.DataFrame:
    rows = df[(df["run"] == run) & (df["scope"] == "overall") & (df["alpha_kind"] == "optimal")]
    return rows[rows["anchor"] == rows["step"].map({1: 0, 2: 1, 4: 2})]


def test_map_shows_the_best_rel_error_of_each_step_and_target(frame: pd.DataFrame) -> None:
    ax = foresight_map(frame, run="RL")
    assert isinstance(ax, Axes) and ax.get_title() == "RL"
    image = ax.get_images()[0].get_array()
    opt = _overall_optimal(frame, "RL").set_index(["step", "target_step"])["rel_error"]
    # Rows t = 1, 2; columns s = 2, 4; t = 2, s = 2 is empty (s must come after t).
    assert image.mask.tolist() == [[False, False], [True, False]]
    np.testing.assert_allclose(image.data[0], [opt[(1, 2)], opt[(1, 4)]], rtol=1e-12)
    np.testing.assert_allclose(image.data[1, 1], opt[(2, 4)], rtol=1e-12)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4"]
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in image.compressed()]


def test_alpha_star_lines_per_block_and_run(frame: pd.DataFrame) -> None:
    ax = alpha_star_by_step(frame)
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["OPD · attn", "OPD · mlp", "OPD · all", "RL · attn", "RL · mlp", "RL · all"]
    whole = next(line for line in ax.get_lines() if line.get_label() == "OPD · all")
    opt = _overall_optimal(frame, "OPD")
    nxt = opt[opt["target_step"] == opt["step"].map({1: 2, 2: 4})].sort_values("step")
    np.testing.assert_allclose(whole.get_ydata(), nxt["alpha"], rtol=1e-12)
    final = alpha_star_by_step(frame, target=4)
    assert "step 4" in final.get_ylabel()


def test_effopd_candidates_against_alpha_star(frame: pd.DataFrame) -> None:
    ax = effopd_vs_optimal(frame)
    tried = ax.collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(tried))) == [
        (t, a) for t in (1, 2) for a in (2, 4, 6, 8, 10)
    ]
    assert [line.get_label() for line in ax.get_legend().get_lines()][1:] == ["OPD: α*", "RL: α*"]


def test_figure_puts_runs_side_by_side(frame: pd.DataFrame) -> None:
    fig = foresight_figure(frame)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == ["OPD", "RL"]
    mine = Figure()
    assert foresight_figure(frame[frame["run"] == "OPD"], fig=mine) is mine
    assert "OPD: " in foresight_sentence(frame) and "; RL: " in foresight_sentence(frame)


def test_frames_it_cannot_draw(frame: pd.DataFrame) -> None:
    with pytest.raises(OptionError, match=r"needs the columns .*missing \['run'\].*df.assign"):
        foresight_map(frame.drop(columns="run"))
    with pytest.raises(NothingToDrawError, match=r"has no rows\."):
        alpha_star_by_step(frame.iloc[:0])
    with pytest.raises(
        NothingToDrawError, match=r"no rows with anchor 3; its anchors are \[0, 1\]"
    ):
        foresight_map(frame, anchor=3)
    with pytest.raises(OptionError, match=r"'target' parameter of alpha_star_by_step must be"):
        alpha_star_by_step(frame, target="last")
    with pytest.raises(OptionError, match=r"'runs' parameter of foresight_map must name runs"):
        foresight_map(frame, run="SFT")
    no_effopd = frame[frame["alpha_kind"] != "effopd"]
    with pytest.raises(NothingToDrawError, match=r"no alpha_kind 'effopd' rows"):
        effopd_vs_optimal(no_effopd)
