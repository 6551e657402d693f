"""viz.allocation: the allocation heatmap and its strip over steps, drawn values checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from opdlens.viz.plots import (
    allocation_heatmap_figure,
    allocation_strip_figure,
)
from opdlens.viz.style import new_figure
from viz.planted import LAYER_KINDS, RUNS, STEPS, kinds_order


def test_allocation_heatmap_matches_pivot(metrics: pd.DataFrame) -> None:
    fig = allocation_heatmap_figure(metrics)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and len(fig.axes) == 3  # two runs and a shared colour bar
    for ax, run in zip(panels, RUNS, strict=True):
        final = metrics[(metrics.run == run) & (metrics.step == 8) & metrics.layer.notna()]
        pivot = final.pivot_table(index="layer", columns="kind", values="update_share")
        pivot = pivot[kinds_order(set(pivot.columns))]
        image = ax.images[0].get_array()
        np.testing.assert_allclose(image.filled(np.nan), pivot.to_numpy(float), rtol=1e-12)
        assert [t.get_text() for t in ax.get_xticklabels()] == list(pivot.columns)
        assert run in ax.get_title() and "step 8" in ax.get_title()
    clims = {ax.images[0].get_clim() for ax in panels}
    assert len(clims) == 1  # one colour scale
    layered = metrics[(metrics.step == 8) & metrics.layer.notna()]
    assert clims.pop()[1] == pytest.approx(layered.update_share.max())


def test_allocation_heatmap_step_and_runs(metrics: pd.DataFrame) -> None:
    fig = allocation_heatmap_figure(metrics, step=2, runs=["rl"])
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title().startswith("rl · step 2")
    with pytest.raises(ValueError, match=r"'step' parameter .* Got 3 instead; run 'opd' has"):
        allocation_heatmap_figure(metrics, step=3)
    with pytest.raises(ValueError, match=r"'runs' parameter .* Got \['sft'\]"):
        allocation_heatmap_figure(metrics, runs=["sft"])


def test_allocation_strip(metrics: pd.DataFrame) -> None:
    fig = allocation_strip_figure(metrics, run="opd")
    assert len([ax for ax in fig.axes if ax.images]) == len(STEPS)
    fig = allocation_strip_figure(metrics, run="rl", steps=[2, 8])
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["step 2", "step 8"]
    with pytest.raises(ValueError, match=r"'run' parameter of allocation_strip_figure is needed"):
        allocation_strip_figure(metrics)
    with pytest.raises(ValueError, match=r"Got \[3\] instead; the run has \[1, 2, 4, 8\]"):
        allocation_strip_figure(metrics, run="opd", steps=[3])


def test_allocation_strip_fits_the_report_column(metrics: pd.DataFrame) -> None:
    fig = allocation_strip_figure(
        metrics, run="opd"
    )  # four panels: three, then one below the first
    # The report shows a figure at its print size up to ~11 in: wider ones shrink their labels.
    assert fig.get_size_inches()[0] <= 10
    panels = [ax for ax in fig.axes if ax.images]
    fig.canvas.draw()
    kinds = [[t.get_text() for t in ax.get_xticklabels() if t.get_text()] for ax in panels]
    assert kinds[0] == [] and kinds[1] == kinds[2] == kinds[3] == kinds_order(set(LAYER_KINDS))
    assert [ax.get_ylabel() for ax in panels] == ["layer", "", "", "layer"]
    assert min(t.get_fontsize() for ax in panels for t in ax.get_xticklabels()) >= 7.5


def test_figure_helpers_draw_into_the_given_figure(metrics: pd.DataFrame) -> None:
    heatmap, strip = new_figure(9.0, 4.0), new_figure(9.0, 4.0)
    assert allocation_heatmap_figure(metrics, fig=heatmap) is heatmap
    assert allocation_strip_figure(metrics, run="rl", steps=[2, 8], fig=strip) is strip
    assert len([ax for ax in heatmap.axes if ax.images]) == 2
    assert [ax.get_title() for ax in strip.axes if ax.images] == ["step 2", "step 8"]
    for fig in (heatmap, strip):
        assert tuple(fig.get_size_inches()) == (9.0, 4.0)  # the given figure keeps its size
