"""Overlap of two runs' updates per block (`opdlens compare`): changed sets against chance, and
top-K singular subspaces against their random baseline; the report's overlap section."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from opdlens.errors import NothingToDrawError
from opdlens.frames import check_frame, ks_of, ordered, values_of
from opdlens.names import BLOCKS
from opdlens.viz.sections import Figure as Embedded
from opdlens.viz.sections import table
from opdlens.viz.style import color_at, figure_and_axes, new_figure, paper_style

if TYPE_CHECKING:
    from opdlens.report.sources import Sources

__all__ = ["overlap_by_block", "overlap_figure", "report_figure", "report_section",
           "subspace_by_block"]  # fmt: skip

HINT = (
    "Pass the DataFrame of opdlens.compare (or compare_group) with run_a and run_b columns, "
    "e.g. df.assign(run_a='OPD-1', run_b='OPD-2')."
)
_COLUMNS = ["run_a", "run_b", "scope", "group"]
_CAPTION = (
    "Left: how much more the two runs' changed sets overlap than independent masks of the same "
    "densities would (Jaccard / its chance value; 1 = chance), per block. Right: the overlap "
    "‖U_{A,K}ᵀ U_{B,K}‖²_F / K of the two updates' top-K left singular subspaces per block "
    "(element-weighted over its matrices), with the random baseline K / rows as a black tick. "
    "One bar per pair of runs (`opdlens compare`). In float32 checkpoints nearly every weight "
    "changes, so the left panel sits at 1."
)


def _pairs(df: pd.DataFrame, func: str) -> tuple[pd.DataFrame, list[str]]:
    """The block rows with a pair label ("A vs B"), and the pairs in order."""
    df = check_frame(df, func, [*_COLUMNS, "overlap_ratio"], hint=HINT)
    rows = df[df["scope"] == "block"].copy()
    if rows.empty:
        raise NothingToDrawError(f"The 'df' argument of {func} has no block rows. {HINT}")
    rows["pair"] = rows["run_a"].astype(str) + " vs " + rows["run_b"].astype(str)
    return rows, list(dict.fromkeys(rows["pair"]))


def _bars(ax: Axes, rows: pd.DataFrame, pairs: list[str], column: str) -> list[str]:
    """Grouped bars of `column`: blocks on x, one bar per pair; returns the blocks in order."""
    blocks = ordered(rows["group"], BLOCKS)
    width = 0.8 / len(pairs)
    for i, pair in enumerate(pairs):
        sub = rows[rows["pair"] == pair].set_index("group").reindex(blocks)
        x = np.arange(len(blocks)) + (i - (len(pairs) - 1) / 2) * width
        ax.bar(x, values_of(sub[column]), width, color=color_at(i), label=pair)
    ax.set_xticks(np.arange(len(blocks)), blocks)
    return blocks


def overlap_by_block(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Changed-set overlap against chance (overlap_ratio) per block, one bar per pair of runs."""
    rows, pairs = _pairs(df, "overlap_by_block")
    with paper_style():
        _, ax = figure_and_axes(ax)
        _bars(ax, rows, pairs, "overlap_ratio")
        ax.axhline(1.0, color="black", lw=0.8, ls="--", label="chance")
        ax.set_ylabel("Jaccard / chance")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    return ax


def subspace_by_block(df: pd.DataFrame, k: int | None = None, *, ax: Axes | None = None) -> Axes:
    """Top-K left-subspace overlap per block (K: the second smallest given), random baseline
    as a tick, one bar per pair of runs."""
    rows, pairs = _pairs(df, "subspace_by_block")
    ks = ks_of(rows, "subspace_left", "subspace_by_block")
    k = k if k is not None else (ks[1] if len(ks) > 1 else ks[0])
    with paper_style():
        _, ax = figure_and_axes(ax)
        blocks = _bars(ax, rows, pairs, f"subspace_left_k{k}")
        random = rows.groupby("group")[f"subspace_left_random_k{k}"].mean().reindex(blocks)
        ax.scatter(np.arange(len(blocks)), values_of(random), marker="_", s=300, color="black",
                   zorder=3, label="random K/rows")  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"top-{k} subspace overlap")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    return ax


def overlap_figure(df: pd.DataFrame, k: int | None = None) -> Figure:
    """overlap_by_block and subspace_by_block side by side."""
    with paper_style():
        fig = new_figure(9.6, 3.0)
        left, right = fig.subplots(1, 2)
        overlap_by_block(df, ax=left)
        subspace_by_block(df, k, ax=right)
    return fig


def report_figure(sources: Sources) -> tuple[str, str, str, Callable[[], Figure]] | str:
    """The overlap figure (stem, title, caption, draw), or why it is skipped."""
    df = sources.overlap
    if df is None or df.empty:
        return "figure overlap skipped: no runs compared (--overlap, with two or more run directories)."
    title = "Where two runs' updates overlap"
    return "overlap", title, _CAPTION, lambda: overlap_figure(df)


def report_section(sources: Sources, embed: Callable[[str], Embedded]) -> dict[str, Any] | None:
    """The report's overlap section: one sentence per pair, the figure, the overall rows."""
    df = sources.overlap
    if df is None or df.empty:
        return None
    overall = df[df["scope"] == "overall"]
    columns = ["run_a", "run_b", "changed_frac_a", "changed_frac_b", "jaccard", "jaccard_chance",
               "overlap_ratio", "cos"]  # fmt: skip
    columns += [c for c in df.columns if c.startswith("subspace_left")]
    return {"lines": sources.overlap_lines, "figure": embed("overlap"),
            "table": table(overall[[c for c in columns if c in overall]])}  # fmt: skip
