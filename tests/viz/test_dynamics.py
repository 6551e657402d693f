"""viz.dynamics: block norms, energy and alignment curves, drawn values checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opdlens.viz.plots import (
    GAP_THRESHOLD,
    alignment_by_step,
    block_norms,
    energy_by_rank,
    energy_by_step,
)
from opdlens.viz.style import new_figure
from viz.planted import KS, RUNS, STEPS


def test_block_norms(metrics: pd.DataFrame) -> None:
    ax = block_norms(metrics)
    assert len(ax.lines) == len(RUNS) * 5  # attn, mlp, embed, norm, head
    line = next(ln for ln in ax.lines if ln.get_label() == "rl · mlp")
    rows = metrics[(metrics.run == "rl") & (metrics.block == "mlp")]
    expected = [np.sqrt((rows[rows.step == s].update_norm ** 2).sum()) for s in STEPS]
    np.testing.assert_allclose(line.get_ydata(), expected)
    np.testing.assert_array_equal(line.get_xdata(), STEPS)
    assert ax.get_yscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "opd" in legend and "rl" in legend


def _weighted_energy(rows: pd.DataFrame, col: str) -> float:
    w = rows.update_norm.to_numpy() ** 2
    v = rows[col].to_numpy()
    ok = np.isfinite(v)
    return float((w[ok] * v[ok]).sum() / w[ok].sum())


def test_energy_by_step(metrics: pd.DataFrame) -> None:
    ax = energy_by_step(metrics)  # default K: the middle one, 4
    assert len(ax.lines) == len(RUNS) * 4  # norms have no spectrum
    assert "top-4" in ax.get_ylabel()
    line = next(ln for ln in ax.lines if ln.get_label() == "opd · attn")
    rows = metrics[(metrics.run == "opd") & (metrics.block == "attn")]
    expected = [_weighted_energy(rows[rows.step == s], "energy_k4") for s in STEPS]
    np.testing.assert_allclose(line.get_ydata(), expected)
    with pytest.raises(ValueError, match=r"'k' parameter .* \[1, 4, 16\]. Got 8 instead"):
        energy_by_step(metrics, k=8)


def test_energy_by_rank(metrics: pd.DataFrame) -> None:
    fig, axes = new_figure(), None
    axes = fig.subplots(1, 2)
    assert energy_by_rank(metrics, ax=axes[1]) is axes[1]
    ax = axes[1]
    assert len(ax.lines) == len(RUNS) * 4 and not axes[0].lines
    line = next(ln for ln in ax.lines if ln.get_label() == "rl · head")
    rows = metrics[(metrics.run == "rl") & (metrics.block == "head") & (metrics.step == 8)]
    np.testing.assert_array_equal(line.get_xdata(), KS)
    expected = [_weighted_energy(rows, f"energy_k{k}") for k in KS]
    np.testing.assert_allclose(line.get_ydata(), expected)


def test_alignment_by_step(metrics: pd.DataFrame) -> None:
    ax = alignment_by_step(metrics, side="left")
    data_lines = [ln for ln in ax.lines if ln.get_marker() == "o"]
    baselines = [ln for ln in ax.lines if ln.get_marker() != "o"]
    assert len(data_lines) == len(RUNS) * len(KS) and len(baselines) == len(KS)
    line = next(ln for ln in data_lines if ln.get_label() == "opd · K=4")
    two_d = metrics[(metrics.run == "opd") & (metrics.cols > 1) & (metrics.kind != "norm")]
    expected = [_weighted_energy(two_d[two_d.step == s], "align_left_k4") for s in STEPS]
    np.testing.assert_allclose(line.get_ydata(), expected)
    all_2d = metrics[np.isfinite(metrics.align_left_k16)]
    assert baselines[2].get_ydata()[0] == pytest.approx(
        (np.minimum(16 / all_2d.rows, 1) * 1)
        .groupby([all_2d.run, all_2d.step])
        .apply(lambda s: np.average(s, weights=all_2d.loc[s.index, "update_norm"] ** 2))
        .mean()
    )
    # K=16 has gap < GAP_THRESHOLD everywhere: every K=16 point is hollow grey; K=1 none.
    flagged = [c.get_offsets() for c in ax.collections]
    k16 = {
        tuple(p) for ln in data_lines if ln.get_label().endswith("K=16") for p in ln.get_xydata()
    }
    k1 = {tuple(p) for ln in data_lines if ln.get_label().endswith("K=1") for p in ln.get_xydata()}
    marked = {tuple(p) for offsets in flagged for p in np.asarray(offsets)}
    assert k16 <= marked and not (k1 & marked)
    assert GAP_THRESHOLD == 1e-2


def test_alignment_both_and_errors(metrics: pd.DataFrame) -> None:
    ax = alignment_by_step(metrics)
    line = next(ln for ln in ax.lines if ln.get_label() == "rl · K=1")
    rows = metrics[(metrics.run == "rl") & (metrics.step == 2)].copy()
    rows["mean"] = (rows.align_left_k1 + rows.align_right_k1) / 2
    assert line.get_ydata()[1] == pytest.approx(_weighted_energy(rows, "mean"))
    with pytest.raises(ValueError, match=r"'side' parameter .* Got 'up' instead"):
        alignment_by_step(metrics, side="up")
    with pytest.raises(ValueError, match=r"needs the columns .*'gap_k4'.*\(missing \['gap_k4'\]\)"):
        alignment_by_step(metrics.drop(columns="gap_k4"))
