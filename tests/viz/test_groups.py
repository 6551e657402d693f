"""viz.groups: group means with a band, the claims figure, and grouped figure sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from opdlens.analysis.findings import group_findings
from opdlens.errors import OptionError
from opdlens.frames import group_curves
from opdlens.report import ReportOptions, from_frame
from opdlens.viz.figures import draw_figures
from opdlens.viz.groups import (
    findings_figure,
    group_alignment_by_step,
    group_block_norms,
    group_energy_by_step,
    group_mean_frame,
)

STEPS = (1, 2, 4)
GROUPS = {"OPD": ["OPD-1", "OPD-2", "OPD-3"], "RL": ["RL-1", "RL-2"]}


def frame(run: str, scale: float) -> pd.DataFrame:
    """One layer with an attn and an mlp matrix; norms grow as scale·step, mlp twice attn."""
    rows = []
    for step in STEPS:
        for block, w in (("attn", 1.0), ("mlp", 2.0)):
            rows.append({"run": run, "step": step, "tensor": f"l0.{block}", "layer": 0,
                         "block": block, "kind": f"{block}_kind", "rows": 16, "cols": 16,
                         "update_norm": w * scale * step, "update_share": w**2 / 5,
                         "energy_k1": 0.2 * scale + 0.01 * step, "energy_k4": 0.9,
                         "align_left_k1": 0.1 * scale * step, "align_right_k1": 0.1 * scale * step,
                         "align_left_k4": 0.5, "align_right_k4": 0.5, "gap_k1": 0.3,
                         "gap_k4": 0.3})  # fmt: skip
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    return df


SCALES = {"OPD-1": 1.0, "OPD-2": 1.5, "OPD-3": 2.0, "RL-1": 0.5, "RL-2": 0.7}
DF = pd.concat([frame(run, s) for run, s in SCALES.items()], ignore_index=True)


def _has_band(ax, x, low, high) -> bool:
    """True when one fill_between band has the vertices (x, low) and (x, high) at every x."""
    want = np.r_[np.c_[x, low], np.c_[x, high]]
    for poly in (c for c in ax.collections if isinstance(c, PolyCollection)):
        v = poly.get_paths()[0].vertices
        if all(np.isclose(v, w).all(axis=1).any() for w in want):
            return True
    return False


def test_block_norms_draw_the_group_mean_and_sd() -> None:
    ax = group_block_norms(DF, GROUPS)
    lines = {ln.get_label(): ln for ln in ax.lines}
    opd = np.array([SCALES[r] for r in GROUPS["OPD"]])
    # The mlp norm of one run at step t is 2·scale·t (one tensor per block).
    want = np.mean(2 * opd) * np.array(STEPS)
    assert np.allclose(lines["OPD · mlp"].get_ydata(), want)
    sd = np.std(2 * opd, ddof=1) * np.array(STEPS)
    assert _has_band(ax, STEPS, want - sd, want + sd)
    assert not _has_band(ax, STEPS, want - 2 * sd, want + 2 * sd)
    assert ax.get_legend() is not None


def test_range_band_spans_min_to_max() -> None:
    ax = group_energy_by_step(DF, GROUPS, k=1, band="range")
    rl = np.array([SCALES[r] for r in GROUPS["RL"]])
    low, high = 0.2 * rl.min() + 0.01 * np.array(STEPS), 0.2 * rl.max() + 0.01 * np.array(STEPS)
    assert _has_band(ax, STEPS, low, high)
    with pytest.raises(OptionError, match="'band' parameter of group_energy_by_step"):
        group_energy_by_step(DF, GROUPS, band="iqr")
    with pytest.raises(OptionError, match=r"unknown: \['X-1'\]"):
        group_block_norms(DF, {"X": ["X-1"]})


def test_alignment_means_left_and_right_per_k() -> None:
    ax = group_alignment_by_step(DF, GROUPS)
    lines = {ln.get_label(): ln for ln in ax.lines}
    want = 0.1 * np.mean([SCALES[r] for r in GROUPS["RL"]]) * np.array(STEPS)
    assert np.allclose(lines["RL · K=1"].get_ydata(), want)
    assert np.allclose(lines["OPD · K=4"].get_ydata(), 0.5)


def test_group_curves_match_pandas() -> None:
    per_run = DF.set_index(["run", "step", "block"])["update_norm"]
    got = group_curves(per_run, GROUPS).loc[("RL", 2, "attn")]
    values = [SCALES[r] * 2 for r in GROUPS["RL"]]
    assert got["mean"] == pytest.approx(np.mean(values))
    assert got["sd"] == pytest.approx(np.std(values, ddof=1)) and got["n"] == 2
    assert (got["min"], got["max"]) == (min(values), max(values))


def test_group_mean_frame_averages_shares() -> None:
    df = DF.copy()
    df.loc[df["run"] == "OPD-1", "update_share"] = 0.0
    means = group_mean_frame(df, GROUPS)
    assert set(means["run"]) == {"OPD", "RL"}
    at = means[(means["run"] == "OPD") & (means["tensor"] == "l0.mlp") & (means["step"] == 4)]
    assert at["update_share"].item() == pytest.approx(2 * 0.8 / 3)


def test_findings_figure_has_one_panel_per_claim() -> None:
    frames = {run: DF[DF["run"] == run] for run in SCALES}
    fig = findings_figure(group_findings(frames, GROUPS))
    assert len(fig.axes) == 3
    assert "OPD − RL" in fig.axes[0].get_title()


def test_draw_figures_with_groups() -> None:
    panels, notes = draw_figures(from_frame(DF, groups=GROUPS), ReportOptions(band="range"))
    stems = [p.stem for p in panels]
    assert stems[:7] == ["findings", "allocation_heatmap", "allocation_strip-OPD",
                         "allocation_strip-RL", "block_norms", "energy_by_step",
                         "alignment_by_step"]  # fmt: skip
    heatmap = next(p.figure for p in panels if p.stem == "allocation_heatmap")
    assert heatmap.axes[0].get_title().startswith("OPD (mean of 3) · step 4")
    captions = {p.stem: p.caption for p in panels}
    assert "min–max across the group's runs (OPD: n = 3, RL: n = 2)" in captions["block_norms"]
    assert any("each group's first run (OPD-1, RL-1)" in n for n in notes)
    with pytest.raises(OptionError, match="'band' parameter must be one of"):
        draw_figures(from_frame(DF, groups=GROUPS), ReportOptions(band="iqr"))
