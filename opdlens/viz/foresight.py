"""Foresight plots: how close one extrapolation from step t lands to a later step s, per run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from opdlens.errors import NothingToDrawError, OptionError
from opdlens.frames import STEP_LABEL, check_frame, ordered, run_names, select_anchor, values_of
from opdlens.names import BLOCKS
from opdlens.viz.sections import Figure as Embedded
from opdlens.viz.sections import table
from opdlens.viz.style import (
    block_color,
    color_at,
    figure_and_axes,
    linestyle_at,
    new_figure,
    paper_style,
)

if TYPE_CHECKING:
    from opdlens.report.sources import Sources

__all__ = [
    "alpha_star_by_step",
    "effopd_vs_optimal",
    "foresight_figure",
    "foresight_map",
    "report_figure",
    "report_section",
]

HINT = "Pass the DataFrame of opdlens.foresee with a 'run' column, e.g. df.assign(run='OPD')."
_BASE = ["run", "step", "anchor", "alpha", "alpha_kind", "scope", "target_step", "rel_error"]
_ANNOTATE_MAX = 10  # cells per side up to which the map prints each value
_TICK_RATIO = 1.8  # the last step is ticked beside the power of two before it if this far apart
_STAR_LABEL = r"$\alpha^* = -\langle \theta_t - \theta_s, \theta_t - \theta_a \rangle / \|\theta_t - \theta_a\|^2$"


def _rows(
    df: pd.DataFrame, func: str, anchor: str | int, extra: tuple[str, ...] = ()
) -> pd.DataFrame:
    df = check_frame(df, func, [*_BASE, *extra], hint=HINT)
    rows = select_anchor(df, anchor)
    if rows.empty:
        raise NothingToDrawError(
            f"The 'df' argument of {func} has no rows with anchor {anchor!r}; its anchors are "
            f"{sorted(int(a) for a in df['anchor'].unique())}. Pass anchor='base' or a step."
        )
    return rows


def _targets(rows: pd.DataFrame, target: str | int, func: str) -> pd.DataFrame:
    """Rows against the next saved step after t, the last step, or one step, per run."""
    if target == "next":
        keys = [rows["run"], rows["step"], rows["anchor"]]
        return rows[rows["target_step"] == rows.groupby(keys)["target_step"].transform("min")]
    if target == "final":
        return rows[rows["target_step"] == rows.groupby("run")["target_step"].transform("max")]
    if isinstance(target, bool) or not isinstance(target, int):
        raise OptionError(
            f"The 'target' parameter of {func} must be 'next', 'final' or a saved step. Got "
            f"{target!r} instead."
        )
    out = rows[rows["target_step"] == target]
    if out.empty:
        raise NothingToDrawError(
            f"The 'df' argument of {func} has no rows with target_step {target}; its targets are "
            f"{sorted(int(s) for s in rows['target_step'].unique())}."
        )
    return out


def foresight_map(
    df: pd.DataFrame,
    *,
    run: str | None = None,
    anchor: str | int = "previous",
    limits: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Best rel_error of the whole model (over the α in df, α* included) for step t against step s.

    The colour scale spans `limits` (default: this map's own range of values), so that maps
    whose values all lie in, say, 0.9–1 still show their structure; the colorbar says so.
    """
    rows = _rows(df, "foresight_map", anchor)
    runs = run_names(rows, None if run is None else [run], "foresight_map")
    values, steps, targets = _map_values(rows, runs[0])
    low, high = limits if limits is not None else _range(values)
    with paper_style():
        fig, ax = figure_and_axes(ax)
        image = ax.imshow(
            np.ma.masked_invalid(values), origin="lower", aspect="auto", cmap="viridis",
            vmin=low, vmax=high, interpolation="nearest",
        )  # fmt: skip
        ax.grid(False)
        ax.set_xticks(range(len(targets)), [str(s) for s in targets],
                      rotation=90 if len(targets) > 8 else 0)  # fmt: skip
        ax.set_yticks(range(len(steps)), [str(s) for s in steps])
        if len(steps) <= _ANNOTATE_MAX and len(targets) <= _ANNOTATE_MAX:
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    dark = (v - low) / ((high - low) or 1.0) < 0.6  # viridis' dark end
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if dark else "black")  # fmt: skip
        ax.set_xlabel("later saved step $s$ (target)")
        ax.set_ylabel(f"step $t$ extrapolated from\n(anchor: {anchor})")
        ax.set_title(runs[0])
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label(
            f"best rel_error, whole model\n(< 1: closer to θ_s than θ_t is)\ncolour scale: "
            f"data's range, {low:.3g} to {high:.3g}"
        )
    return ax


def _map_values(rows: pd.DataFrame, run: str) -> tuple[np.ndarray, list[int], list[int]]:
    """(steps × targets best rel_error, steps, targets) of one run's whole model."""
    rows = rows[(rows["run"] == run) & (rows["scope"] == "overall")]
    best = rows.groupby(["step", "target_step"])["rel_error"].min()
    steps = sorted(int(s) for s in best.index.get_level_values("step").unique())
    targets = sorted(int(s) for s in best.index.get_level_values("target_step").unique())
    grid = best.unstack().reindex(index=steps, columns=targets)
    return grid.to_numpy(dtype="float64", na_value=np.nan), steps, targets


def _range(values: np.ndarray) -> tuple[float, float]:
    """The finite range of values, widened to 0.01 when flat (a colour scale needs a width)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if high - low < 1e-3:
        mid = (low + high) / 2
        return mid - 0.005, mid + 0.005
    return low, high


def alpha_star_by_step(
    df: pd.DataFrame, *, target: str | int = "next", anchor: str | int = "previous",
    ax: Axes | None = None,
) -> Axes:  # fmt: skip
    """α* of each block (and the whole model, black) against step t, one line style per run."""
    rows = _rows(df, "alpha_star_by_step", anchor, ("block",))
    rows = rows[(rows["alpha_kind"] == "optimal") & rows["scope"].isin(["block", "overall"])]
    rows = _targets(rows, target, "alpha_star_by_step")
    runs = run_names(rows, None, "alpha_star_by_step")
    blocks = ordered(rows["block"].dropna().unique(), BLOCKS)
    with paper_style():
        _, ax = figure_and_axes(ax)
        for i, run in enumerate(runs):
            mine = rows[rows["run"] == run]
            for block in [*blocks, None]:
                part = mine[mine["scope"] == "overall"] if block is None else mine[
                    (mine["scope"] == "block") & (mine["block"] == block)]  # fmt: skip
                part = part.sort_values("step")
                if part.empty:
                    continue
                whole = {"color": "#000000", "marker": "s", "linewidth": 2.0}
                style = whole if block is None else {"color": block_color(block), "marker": "o"}
                ax.plot(values_of(part["step"]), values_of(part["alpha"]),
                        linestyle=linestyle_at(i), label=f"{run} · {block or 'all'}", **style)  # fmt: skip
        ax.axhline(0.0, color="#777777", linewidth=0.8)
        _step_axis(ax, sorted(int(s) for s in rows["step"].unique()))
        ax.set_xlabel(STEP_LABEL)
        where = {"next": "the next saved step", "final": "the last saved step"}.get(
            str(target), f"step {target}"
        )
        ax.set_ylabel(f"optimal α against {where}\n{_STAR_LABEL}")
        handles = [Line2D([], [], color=block_color(b), marker="o", label=b) for b in blocks]
        handles.append(
            Line2D([], [], color="#000000", marker="s", linewidth=2.0, label="whole model")
        )
        if len(runs) > 1:  # runs differ by line style alone: grey, no marker
            handles += [Line2D([], [], color="#8C8C8C", linestyle=linestyle_at(i), label=run)
                        for i, run in enumerate(runs)]  # fmt: skip
        # Below the panel: α* swings from step to step and leaves no free corner inside.
        ax.legend(handles=handles, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  borderaxespad=0.0)  # fmt: skip
    return ax


def effopd_vs_optimal(
    df: pd.DataFrame, *, target: str | int = "next", ax: Axes | None = None
) -> Axes:
    """At EffOPD's scheduled steps, the α its candidates try (grey) against α* (per run)."""
    rows = check_frame(df, "effopd_vs_optimal", [*_BASE, "candidate"], hint=HINT)
    rows = rows[rows["scope"] == "overall"]
    eff = rows[rows["alpha_kind"] == "effopd"]
    if eff.empty:
        raise NothingToDrawError(
            "The 'df' argument of effopd_vs_optimal has no alpha_kind 'effopd' rows: none of its "
            "(step, anchor) pairs is one of EffOPD's scheduled ones. Run foresee with the default "
            "anchors."
        )
    pairs = eff[["run", "step", "anchor"]].drop_duplicates()
    star = rows[rows["alpha_kind"] == "optimal"].merge(pairs, on=["run", "step", "anchor"])
    star = _targets(star, target, "effopd_vs_optimal")
    eff = eff.merge(star[["run", "step", "anchor", "target_step"]], on=["run", "step", "anchor",
                                                                        "target_step"])  # fmt: skip
    runs = run_names(rows, None, "effopd_vs_optimal")
    with paper_style():
        _, ax = figure_and_axes(ax)
        tried = eff[["step", "alpha"]].drop_duplicates()
        ax.scatter(values_of(tried["step"]), values_of(tried["alpha"]), marker="_", s=120,
                   color="#9A9A9A", linewidths=1.6, zorder=2)  # fmt: skip
        for i, run in enumerate(runs):
            mine = star[star["run"] == run].sort_values("step")
            ax.plot(values_of(mine["step"]), values_of(mine["alpha"]), color=color_at(i),
                    linestyle=linestyle_at(i), marker="o", zorder=3)  # fmt: skip
        _step_axis(ax, sorted(int(s) for s in star["step"].unique()))
        ax.axhline(0.0, color="#777777", linewidth=0.8)
        ax.set_xlabel("EffOPD's scheduled step $t$")
        ax.set_ylabel("α in $\\theta_t + \\alpha(\\theta_t - \\theta_a)$")
        handles = [Line2D([], [], color="#9A9A9A", marker="_", linestyle="", markersize=10,
                          label="EffOPD's candidates (cumulative α)")]  # fmt: skip
        handles += [Line2D([], [], color=color_at(i), linestyle=linestyle_at(i), marker="o",
                           label=f"{run}: α*") for i, run in enumerate(runs)]  # fmt: skip
        # Below the panel: the candidates' marks reach the top of it.
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  borderaxespad=0.0)  # fmt: skip
    return ax


def _step_axis(ax: Axes, steps: list[int]) -> None:
    """Steps ≥ 1 on a log2 axis, ticked at the powers of two and the last step, so that the
    early, closely saved steps do not overlap."""
    if not steps or steps[0] < 1:
        return
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ticks = [s for s in steps if s & (s - 1) == 0]
    if steps[-1] not in ticks:
        if ticks and steps[-1] < _TICK_RATIO * ticks[-1]:
            ticks.pop()  # too close to the last power of two to share the axis legibly
        ticks.append(steps[-1])
    ax.set_xticks(ticks, [str(t) for t in ticks])


def foresight_figure(
    df: pd.DataFrame, *, target: str | int = "next", fig: Figure | None = None
) -> Figure:
    """The foresight map of each run side by side, then α* per block and EffOPD's α against α*."""
    rows = check_frame(df, "foresight_figure", _BASE, hint=HINT)
    runs = run_names(rows, None, "foresight_figure")
    cols = max(2, len(runs))
    with paper_style():
        fig = new_figure(3.4 * cols, 5.6) if fig is None else fig
        grid = fig.add_gridspec(2, cols * 2)
        width = (cols * 2) // len(runs)
        maps = select_anchor(rows, "previous")
        limits = _range(np.concatenate([_map_values(maps, r)[0].ravel() for r in runs]))
        for i, run in enumerate(runs):  # one colour scale for every run's map
            foresight_map(rows, run=run, limits=limits,
                          ax=fig.add_subplot(grid[0, i * width : (i + 1) * width]))  # fmt: skip
        alpha_star_by_step(rows, target=target, ax=fig.add_subplot(grid[1, :cols]))
        if (rows["alpha_kind"] == "effopd").any():
            effopd_vs_optimal(rows, target=target, ax=fig.add_subplot(grid[1, cols:]))
    return fig


_CAPTION = (
    "Top: for each run, the best relative error ‖θ_t + α(θ_t − θ_a) − θ_s‖ / ‖θ_t − θ_s‖ "
    "of the whole model (attention and MLP matrices; anchor a = the previous saved step; "
    "the best over α = 0.5, 1, 2, 4 and the closed-form α*) for step t against each "
    "later saved step s; below 1 the jump lands closer to θ_s than θ_t is. Bottom left: "
    "α* against the next saved step, per block (whole model in black), one line style "
    "per run. Bottom right: at EffOPD's scheduled steps, the cumulative α its candidates "
    "try (α₀ = 2, then α/(1+α)) against α*."
)


def report_figure(sources: Sources) -> tuple[str, str, str, Callable[[], Figure]] | str:
    """The foresight figure of the shown runs (stem, title, caption, draw), or why it is skipped."""
    fore = sources.foresight
    if fore is None or fore.empty:
        return (
            "figure foresight skipped: no foresight rows (--no-foresight, or no run directory "
            "with two saved steps after the base)."
        )
    title = "Foresight: how close one extrapolation lands"
    return "foresight", title, _CAPTION, lambda: foresight_figure(fore)


def report_section(sources: Sources, embed: Callable[[str], Embedded]) -> dict[str, Any] | None:
    """The report's foresight section: its sentence per run, the figure, EffOPD's α against α*."""
    fore, effopd = sources.foresight, sources.effopd
    if fore is None:
        return None
    return {
        "lines": sources.foresight_lines, "figure": embed("foresight"),
        "runs": ", ".join(str(r) for r in pd.unique(fore["run"])),
        "effopd": table(effopd) if effopd is not None and not effopd.empty else None,
    }  # fmt: skip
