"""Foresight plots draw what the foresee frame says, per run, and refuse frames they cannot draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import opdlens
from opdlens.errors import NothingToDrawError, OptionError
from opdlens.plots import foresight_sentence
from opdlens.viz.foresight import (
    alpha_star_by_step,
    effopd_vs_optimal,
    foresight_figure,
    foresight_map,
)
from viz.runs import write_run


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


@pytest.fixture(scope="module")
def long_frame(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """foresee on a run saved where the demo saves: powers of two and every 20 steps to 120."""
    steps = (0, 1, 2, 4, 8, 16, 20, 32, 40, 60, 64, 80, 100, 120)
    run = write_run(tmp_path_factory.mktemp("long") / "opd", 0, steps)
    return opdlens.foresee(opdlens.open_run(run), workers=1).assign(run="OPD")


def _style(handle: Line2D) -> tuple:
    return (handle.get_color(), handle.get_linestyle(), handle.get_marker(), handle.get_linewidth())


def test_alpha_star_legend_gives_each_entry_its_own_style(frame: pd.DataFrame) -> None:
    ax = alpha_star_by_step(frame)
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["attn", "mlp", "whole model", "OPD", "RL"]
    styles = [_style(h) for h in legend.legend_handles]
    assert len(set(styles)) == len(styles)  # "whole model" is not drawn like a run
    whole = next(ln for ln in ax.get_lines() if ln.get_label() == "OPD · all")
    assert _style(whole)[2:] == styles[2][2:] and whole.get_color() == styles[2][0]
    one = alpha_star_by_step(frame[frame["run"] == "OPD"])
    assert [t.get_text() for t in one.get_legend().get_texts()] == ["attn", "mlp", "whole model"]


def test_alpha_star_legends_cover_no_data(frame: pd.DataFrame) -> None:
    for ax in (alpha_star_by_step(frame), effopd_vs_optimal(frame)):
        ax.figure.canvas.draw()
        legend = ax.get_legend().get_window_extent()
        assert not legend.overlaps(ax.get_window_extent())  # below the panel, not on the marks


def test_step_ticks_do_not_collide(long_frame: pd.DataFrame) -> None:
    fig = foresight_figure(long_frame)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    stepped = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert len(stepped) == 2  # α* by step, EffOPD against α*
    for ax in stepped:
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
        assert len(boxes) >= 4
        # Apart by at least most of a character's width: not overlapping, not touching either.
        gap = 0.8 * labels[0].get_fontsize() * fig.dpi / 72
        for left, right in zip(boxes, boxes[1:], strict=False):
            assert right.x0 - left.x1 >= gap, [t.get_text() for t in labels]
    # α* is drawn at t = 1 … 100: 100 is ticked, and 64, too close to it, is not.
    texts = [t.get_text() for t in stepped[0].get_xticklabels()]
    assert texts == ["1", "2", "4", "8", "16", "32", "100"]


def test_map_colour_scale_spans_the_data(frame: pd.DataFrame) -> None:
    fig = foresight_figure(frame)
    images = [im for ax in fig.axes for im in ax.get_images()]
    data = np.concatenate([im.get_array().compressed() for im in images])
    for im in images:  # one scale for both runs: their data's range, not 0 to 1
        assert im.get_clim() == pytest.approx((data.min(), data.max()))
    bars = [ax for ax in fig.axes if "colour scale: data's range" in ax.get_ylabel()]
    assert len(bars) == 2 and f"{data.min():.3g} to {data.max():.3g}" in bars[0].get_ylabel()
    own = foresight_map(frame, run="RL")
    rl = own.get_images()[0].get_array().compressed()
    assert own.get_images()[0].get_clim() == pytest.approx((rl.min(), rl.max()))


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
