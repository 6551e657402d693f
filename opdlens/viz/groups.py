"""Groups of runs (seeds of one method): group-mean curves with a band, and the claims' numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from opdlens.analysis.findings import CLAIMS
from opdlens.errors import OptionError
from opdlens.frames import (
    STEP_LABEL,
    check_frame,
    check_groups,
    group_curves,
    ks_of,
    ordered,
    values_of,
)
from opdlens.names import BLOCKS
from opdlens.viz.dynamics import _alignment_table, _energy_label, _energy_table
from opdlens.viz.style import (
    block_color,
    color_at,
    figure_and_axes,
    linestyle_at,
    new_figure,
    paper_style,
)

if TYPE_CHECKING:
    from opdlens.analysis.findings import GroupFindings

__all__ = [
    "BANDS",
    "band_caption",
    "findings_figure",
    "group_alignment_by_step",
    "group_block_norms",
    "group_energy_by_step",
    "group_mean_frame",
]

BANDS = {"sd": "±1 sd across the group's runs", "range": "min–max across the group's runs"}
_BAND_ALPHA = 0.18


def band_caption(band: str, groups: Mapping[str, Sequence[str]]) -> str:
    """The sentence a grouped figure's caption ends with: what the line and the band are."""
    sizes = ", ".join(f"{g}: n = {len(runs)}" for g, runs in groups.items())
    return f"Lines are group means; the shaded band is {BANDS[band]} ({sizes})."


def _check(df: pd.DataFrame, groups: Mapping[str, Sequence[str]], band: str, func: str) -> dict:
    if band not in BANDS:
        raise OptionError(
            f"The 'band' parameter of {func} must be one of {list(BANDS)}. Got {band!r} instead."
        )
    return check_groups(groups, [str(r) for r in pd.unique(df["run"])])


def _bounds(stats: pd.DataFrame, band: str) -> tuple[np.ndarray, np.ndarray]:
    if band == "range":
        return stats["min"].to_numpy(float), stats["max"].to_numpy(float)
    sd = stats["sd"].fillna(0.0).to_numpy(float)  # one run: no band
    return stats["mean"].to_numpy(float) - sd, stats["mean"].to_numpy(float) + sd


def _draw(ax: Axes, stats: pd.DataFrame, band: str, color: str, style: object, label: str) -> None:
    stats = stats.sort_index()
    x = stats.index.to_numpy()
    low, high = _bounds(stats, band)
    ax.plot(x, stats["mean"].to_numpy(float), color=color, linestyle=style, marker="o",
            label=label)  # fmt: skip
    ax.fill_between(x, low, high, color=color, alpha=_BAND_ALPHA, linewidth=0)


def _block_bands(
    ax: Axes, stats: pd.DataFrame, groups: Sequence[str], band: str, x: str = "step"
) -> None:
    """One mean line and band per (group, block): colour by block, line style by group."""
    blocks = ordered(stats.index.get_level_values("block").unique(), BLOCKS)
    for i, g in enumerate(groups):
        for block in blocks:
            key = (g, block)
            rows = stats.droplevel([n for n in stats.index.names if n not in ("group", "block", x)])
            if key not in rows.index.droplevel(x):
                continue
            _draw(ax, rows.xs(key, level=["group", "block"]), band, block_color(block),
                  linestyle_at(i), f"{g} · {block}")  # fmt: skip
    handles = [Line2D([], [], color=block_color(b), label=b) for b in blocks]
    handles += [Line2D([], [], color="#333333", linestyle=linestyle_at(i), label=f"{g} (mean)")
                for i, g in enumerate(groups)]  # fmt: skip
    ax.legend(handles=handles, ncols=2 if len(handles) > 5 else 1, loc="best")


def group_block_norms(
    df: pd.DataFrame, groups: Mapping[str, Sequence[str]], *, band: str = "sd",
    ax: Axes | None = None,
) -> Axes:  # fmt: skip
    """Update norm per block against step: the group mean of each run's norm, with a band."""
    df = check_frame(df, "group_block_norms", ["run", "step", "block", "update_norm"])
    groups = _check(df, groups, band, "group_block_norms")
    squares = pd.Series(values_of(df["update_norm"]) ** 2, index=df.index)
    per_run = np.sqrt(squares.groupby([df["run"], df["step"], df["block"]]).sum())
    stats = group_curves(per_run, groups)
    with paper_style():
        _, ax = figure_and_axes(ax)
        _block_bands(ax, stats, list(groups), band)
        ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(
            r"update norm of the block" "\n" r"$(\sum_{\mathrm{block}} \|\Delta\|_F^2)^{1/2}$"
        )
    return ax


def group_energy_by_step(
    df: pd.DataFrame, groups: Mapping[str, Sequence[str]], *, k: int | None = None,
    band: str = "sd", ax: Axes | None = None,
) -> Axes:  # fmt: skip
    """Energy in the top-K directions per block against step: group means with a band."""
    df = check_frame(df, "group_energy_by_step", ["run", "step", "block", "update_norm"])
    groups = _check(df, groups, band, "group_energy_by_step")
    ks = ks_of(df, "energy", "group_energy_by_step")
    k = ks[(len(ks) - 1) // 2] if k is None else k
    if k not in ks:
        raise OptionError(
            f"The 'k' parameter of group_energy_by_step must be one of {ks}. Got {k} instead."
        )
    stats = group_curves(_energy_table(df, [k], ["run", "block", "step"])[k], groups)
    with paper_style():
        _, ax = figure_and_axes(ax)
        _block_bands(ax, stats, list(groups), band)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(_energy_label(k))
    return ax


def group_alignment_by_step(
    df: pd.DataFrame, groups: Mapping[str, Sequence[str]], *, band: str = "sd",
    ax: Axes | None = None,
) -> Axes:  # fmt: skip
    """Alignment with the final update (mean of left and right) per K: group means with a band."""
    base = ["run", "step", "tensor", "rows", "cols", "update_norm"]
    df = check_frame(df, "group_alignment_by_step", base)
    groups = _check(df, groups, band, "group_alignment_by_step")
    ks = ks_of(df, "align_left", "group_alignment_by_step")
    df = check_frame(df, "group_alignment_by_step",
                     base + [f"{p}_k{k}" for k in ks for p in ("align_left", "align_right", "gap")])  # fmt: skip
    with paper_style():
        _, ax = figure_and_axes(ax)
        for j, k in enumerate(ks):
            stats = group_curves(_alignment_table(df, ("left", "right"), k)["align"], groups)
            for i, g in enumerate(groups):
                if g in stats.index.get_level_values("group"):
                    _draw(ax, stats.xs(g, level="group"), band, color_at(j), linestyle_at(i),
                          f"{g} · K={k}")  # fmt: skip
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel("alignment with the final update\n"
                      r"mean of $\|U_{t,K}^\top U_{T,K}\|_F^2 / K$ and the same for $V$")  # fmt: skip
        handles = [Line2D([], [], color=color_at(j), label=f"K = {k}") for j, k in enumerate(ks)]
        handles += [Line2D([], [], color="#333333", linestyle=linestyle_at(i), label=f"{g} (mean)")
                    for i, g in enumerate(groups)]  # fmt: skip
        ax.legend(handles=handles, ncols=2, loc="best")
    return ax


def group_mean_frame(df: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Rows of a frame whose `run` is the group: each tensor's update_share averaged over the
    group's runs at each step (for the allocation heatmaps of a group)."""
    df = check_frame(df, "group_mean_frame", ["run", "step", "tensor", "layer", "kind",
                                              "update_share"])  # fmt: skip
    groups = check_groups(groups, [str(r) for r in pd.unique(df["run"])])
    member = {run: g for g, runs in groups.items() for run in runs}
    d = df.assign(run=df["run"].astype(str).map(member))
    d = d[d["run"].notna()]
    keys = ["run", "step", "tensor"] + [c for c in ("expert", "part") if c in d]
    firsts = d.groupby(keys, dropna=False, sort=False)[["layer", "kind", "block"]].first()
    share = d.groupby(keys, dropna=False, sort=False)["update_share"].mean()
    return firsts.assign(update_share=share).reset_index()


def findings_figure(findings: GroupFindings, *, fig: Figure | None = None) -> Figure:
    """One panel per claim: each run's number as a dot, each group's mean ± 1 sd as a bar."""
    names = list(findings.groups)
    with paper_style():
        fig = new_figure(2.6 * len(CLAIMS) + 0.4, 2.7) if fig is None else fig
        axes = fig.subplots(1, len(CLAIMS), squeeze=False)[0]
        for ax, claim in zip(axes, CLAIMS, strict=True):
            for i, g in enumerate(names):
                values = findings.per_run.loc[findings.groups[g], claim.quantity].to_numpy(float)
                offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
                ax.scatter(i + np.asarray(offsets), values, s=14, color=color_at(i), zorder=3)
                ms = findings.summary[claim.quantity][g]
                ax.errorbar(i + 0.3, ms.mean, yerr=0.0 if ms.n < 2 else ms.sd, fmt="_",
                            color=color_at(i), markersize=10, capsize=3)  # fmt: skip
            ax.set_xticks(
                range(len(names)), [f"{g}\n(n = {len(findings.groups[g])})" for g in names]
            )
            ax.set_xlim(-0.5, len(names) - 0.3)
            d = findings.differences[claim.quantity].get(names[1]) if len(names) > 1 else None
            title = claim.label.replace(" (‖Δ‖_F²-weighted)", "")
            if d is not None:
                title += f"\n{names[0]} − {names[1]}: {d.format()} (95 % CI)"
            ax.set_title(title, fontsize=7.5)
            ax.yaxis.get_major_formatter().set_useOffset(False)
    return fig
