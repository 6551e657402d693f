"""The base-geometry lens (`analyze --base-geometry`): the share of each run's update in the
base's top-K singular directions against a random update's, and the drift of the top-K singular
values, against step; the report's principal section."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from opdlens.analysis.principal import CURVE_COLUMNS
from opdlens.frames import STEP_LABEL, check_frame, values_of
from opdlens.viz.style import color_at, figure_and_axes, new_figure, paper_style

if TYPE_CHECKING:
    from opdlens.report.sources import Sources
    from opdlens.viz.sections import Figure as Embedded

__all__ = ["principal_drift", "principal_energy", "principal_figure", "report_figure",
           "report_section"]  # fmt: skip

HINT = "Pass the DataFrame of opdlens.analysis.principal.principal_curves."
_CAPTION = (
    "Left: the share of each run's update ‖Δ_t‖²_F that lies in the base weights' top-K left "
    "singular directions, Σ‖U_{0,K}ᵀΔ_t‖²_F / Σ‖Δ_t‖²_F over the run's matrices (solid), and a "
    "random update's share with the same norms, K / rows (dashed). Right: the relative drift "
    "of the top-K singular values, max over i ≤ K of |σ_i(W_t) − σ_i(W_0)| / σ_i(W_0), averaged "
    "over the matrices weighted by their sizes. A group draws its runs' mean, with their range "
    "shaded. From `analyze --base-geometry` (design.md: the base's principal directions)."
)


def _curves(df: pd.DataFrame, func: str) -> pd.DataFrame:
    return check_frame(df, func, CURVE_COLUMNS, hint=HINT)


def _curves_by_label(ax: Axes, df: pd.DataFrame, col: str, dashed: str | None = None) -> None:
    """One line of `col` per label against step, its group's range shaded, and `dashed` (a
    baseline column) as a thin dashed line of the same colour."""
    for i, (label, g) in enumerate(df.groupby("label", sort=False)):
        g = g.sort_values("step")
        x = values_of(g["step"])
        ax.plot(x, values_of(g[col]), marker="o", color=color_at(i), label=label)
        if (g["runs"] > 1).any():
            ax.fill_between(x, values_of(g[f"{col}_min"]), values_of(g[f"{col}_max"]),
                            color=color_at(i), alpha=0.2)  # fmt: skip
        if dashed is not None:
            ax.plot(x, values_of(g[dashed]), ls="--", color=color_at(i), lw=1,
                    label=f"{label}: random")  # fmt: skip
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")


def principal_energy(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Principal energy (left side) against step per label, its random baseline dashed."""
    df = _curves(df, "principal_energy")
    with paper_style():
        _, ax = figure_and_axes(ax)
        _curves_by_label(ax, df, "energy_left", dashed="random_left")
        ax.set_ylabel(f"update share in base top-{int(df['k'].iloc[0])}")
    return ax


def principal_drift(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Spectral drift of the top-K singular values against step per label."""
    df = _curves(df, "principal_drift")
    with paper_style():
        _, ax = figure_and_axes(ax)
        _curves_by_label(ax, df, "drift")
        ax.set_ylabel(f"spectral drift of top-{int(df['k'].iloc[0])} σ")
    return ax


def principal_figure(df: pd.DataFrame) -> Figure:
    """principal_energy and principal_drift side by side."""
    with paper_style():
        fig = new_figure(9.6, 3.0)
        left, right = fig.subplots(1, 2)
        principal_energy(df, ax=left)
        principal_drift(df, ax=right)
    return fig


def report_figure(sources: Sources) -> tuple[str, str, str, Callable[[], Figure]] | str:
    """The principal figure (stem, title, caption, draw), or why it is skipped."""
    df = sources.principal
    if df is None or df.empty:
        return ("figure principal skipped: no base-geometry columns (analyse with "
                "--base-geometry).")  # fmt: skip
    title = "How the updates meet the base's principal directions"
    return "principal", title, _CAPTION, lambda: principal_figure(df)


def report_section(sources: Sources, embed: Callable[[str], Embedded]) -> dict[str, Any] | None:
    """The report's principal section: what was found in a sentence, then the figure."""
    df = sources.principal
    if df is None or df.empty:
        return None
    return {"line": sources.principal_line, "figure": embed("principal")}
