"""viz.plots: spectra, replay and extrapolation plots, and every plot drawing on the given axes."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest

from opdlens.viz.plots import (
    alignment_by_step,
    block_norms,
    energy_by_rank,
    energy_by_step,
    error_vs_alpha,
    replay_scores,
    spectra,
)
from opdlens.viz.style import new_figure


def test_spectra() -> None:
    sigma = {"a": [1.0, 3.0, 2.0, 0.5], "b": np.geomspace(1, 1e-3, 10)}
    ax = spectra(sigma)
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0, 2.0, 1.0, 0.5])
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="'b' passed to spectra must be a 1-D array"):
        spectra({"b": np.ones((2, 2))})


def test_replay_scores() -> None:
    history = pd.DataFrame(
        {
            "step": [1, 1, 2, 2, 2, 4, 4],
            "anchor": [0, 0, 1, 1, 1, 2, 2],
            "candidate": [0, 1, 0, 1, 2, 0, 1],
            "alpha": [0.0, 2.0, 0.0, 2.0, 2 / 3, 0.0, 2.0],
            "multiple": [0.0, 2.0, 0.0, 2.0, 4.0, 0.0, 2.0],
            "score": [0.1, 0.05, 0.2, 0.3, 0.35, 0.4, 0.3],
            "accepted": [False, False, False, True, True, False, False],
        }
    )
    ax = replay_scores(history)
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert {"1", "2", "4"} <= set(labels) and not any(t.endswith(".0") for t in labels)
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.1, 0.2, 0.4])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.1, 0.35, 0.4])
    assert len(ax.collections[0].get_offsets()) == 2 and len(ax.collections[1].get_offsets()) == 2
    assert any("offline replay" in t.get_text() for t in ax.texts)
    with pytest.raises(ValueError, match=r"'history' argument of replay_scores needs .*'accepted'"):
        replay_scores(history.drop(columns="accepted"))


def test_error_vs_alpha() -> None:
    errors = pd.DataFrame(
        {"alpha": [0.5, 1, 2, 0.5, 1, 2], "target_step": [8] * 3 + [16] * 3,
         "rel_error": [0.8, 0.6, 0.9, 0.9, 0.7, 0.5]}
    )  # fmt: skip
    ax = error_vs_alpha(errors)
    assert len(ax.lines) == 3  # two targets and the standing-still line
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.9, 0.7, 0.5])


def test_error_vs_alpha_gives_every_target_its_own_colour() -> None:
    targets = [25, 32, 50, 64, 75, 100, 125, 128, 150, 175, 200, 256]
    errors = pd.DataFrame(
        [{"alpha": a, "target_step": t, "rel_error": 0.5 + t / 1000} for t in targets
         for a in (0.5, 1, 2)]
    )  # fmt: skip
    ax = error_vs_alpha(errors)
    lines = ax.lines[: len(targets)]  # then the standing-still line
    assert [ln.get_label() for ln in lines] == [f"$s$ = {t}" for t in targets]
    colors = [mpl.colors.to_hex(ln.get_color()) for ln in lines]
    assert len(set(colors)) == len(targets)  # 8 Okabe–Ito colours would repeat from the 9th
    lightness = [sum(mpl.colors.to_rgb(c)) for c in colors]
    assert lightness == sorted(lightness)  # later target steps are lighter


_HISTORY = pd.DataFrame(
    {"step": [1, 2, 2], "anchor": [0, 1, 1], "candidate": [0, 0, 1], "alpha": [0.0, 0.0, 2.0],
     "multiple": [0.0, 0.0, 2.0], "score": [0.1, 0.2, 0.3], "accepted": [False, False, True]}
)  # fmt: skip


_ERRORS = pd.DataFrame({"alpha": [0.5, 1.0], "target_step": [8, 8], "rel_error": [0.8, 0.6]})


@pytest.mark.parametrize(
    "draw",
    [
        lambda m, ax: block_norms(m, ax=ax),
        lambda m, ax: energy_by_step(m, ax=ax),
        lambda m, ax: energy_by_rank(m, ax=ax),
        lambda m, ax: alignment_by_step(m, ax=ax),
        lambda m, ax: spectra({"a": [3.0, 1.0]}, ax=ax),
        lambda m, ax: replay_scores(_HISTORY, ax=ax),
        lambda m, ax: error_vs_alpha(_ERRORS, ax=ax),
    ],
    ids=["block_norms", "energy_by_step", "energy_by_rank", "alignment_by_step", "spectra",
         "replay_scores", "error_vs_alpha"],
)  # fmt: skip
def test_each_plot_draws_on_the_given_axes_and_returns_it(metrics: pd.DataFrame, draw) -> None:
    fig = new_figure()
    left, right = fig.subplots(1, 2)
    assert draw(metrics, right) is right
    assert right.lines and not left.lines and not left.collections and len(fig.axes) == 2
    alone = draw(metrics, None)  # no ax: a new Figure with one Axes
    assert alone.figure is not fig and alone.figure.axes == [alone]


def test_spectra_from_the_tidy_frame() -> None:
    tidy = pd.DataFrame({"run": "OPD", "tensor": ["a", "a", "a", "b", "b"],
                         "step": 4, "index": [2, 1, 3, 1, 2], "sigma": [2.0, 3.0, 1.0, 5.0, 4.0]})  # fmt: skip
    ax = spectra(tidy)
    assert [ln.get_label() for ln in ax.lines] == ["a", "b"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"'spectra' argument of spectra needs the columns"):
        spectra(tidy.drop(columns="sigma"))
