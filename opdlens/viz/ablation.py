"""Marginal utility of each group's update (opdlens ablate): utility against share, the rank curve."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

from opdlens.analysis.findings import ABLATION_HINT
from opdlens.errors import NothingToDrawError, OptionError
from opdlens.frames import check_frame, ordered, values_of
from opdlens.names import BLOCKS
from opdlens.viz.sections import Figure as Embedded
from opdlens.viz.sections import table
from opdlens.viz.style import block_color, color_at, figure_and_axes, new_figure, paper_style

if TYPE_CHECKING:
    from opdlens.report.sources import Sources

__all__ = [
    "ablation_figure",
    "report_figure",
    "report_section",
    "score_by_rank",
    "utility_by_share",
]

Frames: TypeAlias = "pd.DataFrame | Mapping[str, pd.DataFrame]"

RANK_HINT = "Pass the rank_curve table opdlens.ablate returns with ranks (or rank_curve.csv)."
_MARKERS = ("o", "s", "^", "D", "v", "P")
_OTHER = "#7F7F7F"
_LABEL_GAP = 1.5  # points between group labels moved apart


def _by_run(
    data: object, func: str, columns: list[str], arg: str, hint: str
) -> dict[str, pd.DataFrame]:
    """label → one run's table, from a table (split by its 'run' column if any) or a mapping."""
    if isinstance(data, Mapping):
        if not data:
            raise NothingToDrawError(f"The '{arg}' argument of {func} is an empty mapping. {hint}")
        return {str(k): check_frame(v, func, columns, arg, hint) for k, v in data.items()}
    df = check_frame(data, func, columns, arg, hint)
    if "run" not in df.columns:
        return {"": df}
    return {str(r): df[df["run"] == r] for r in pd.unique(df["run"])}


def _colour(block: object) -> str:
    return block_color(str(block)) if isinstance(block, str) and block in BLOCKS else _OTHER


def utility_by_share(ablation: Frames, *, ax: Axes | None = None) -> Axes:
    """Utility S(θ_T) − S(θ_T without g) against g's update share: one marker per group and run.

    `ablation` is one table, a table with a 'run' column, or a mapping label → table; runs
    differ by marker, blocks by colour (grey for groups spanning blocks, e.g. whole layers).
    """
    func, cols = "utility_by_share", ["group", "update_share", "utility"]
    runs = _by_run(ablation, func, cols, "ablation", ABLATION_HINT)
    if all(np.isnan(values_of(df["utility"])).all() for df in runs.values()):
        raise NothingToDrawError(
            f"The 'ablation' argument of {func} has no utility (it was ablated with mode='only'). "
            "Run opdlens ablate with --mode drop or both."
        )
    with paper_style():
        _, ax = figure_and_axes(ax)
        blocks: set[str] = set()
        for i, df in enumerate(runs.values()):
            block = df["block"] if "block" in df else pd.Series([None] * len(df), index=df.index)
            for (_, row), b in zip(df.iterrows(), block, strict=True):
                colour = _colour(None if pd.isna(b) else b)
                blocks.add(str(b) if colour != _OTHER else "several blocks")
                x, y = float(row["update_share"]), float(row["utility"])
                ax.scatter(
                    [x], [y], marker=_MARKERS[i % len(_MARKERS)], color=colour, s=30, zorder=3
                )
                ax.annotate(str(row["group"]), (x, y), xytext=(3, 3), textcoords="offset points",
                            fontsize=6)  # fmt: skip
        ax.axhline(0.0, color="#999999", linewidth=0.7, zorder=1)
        ax.set_xlabel(r"update share of the group  $\|\Delta_{T|g}\|_F^2 / \|\Delta_T\|_F^2$")
        ax.set_ylabel(
            "utility of the group's update\n" r"$S(\theta_T) - S(\theta_T - \Delta_{T|g})$"
        )
        handles = [Line2D([], [], linestyle="", marker="o", color=block_color(b), label=b)
                   for b in ordered(blocks - {"several blocks"}, BLOCKS)]  # fmt: skip
        if "several blocks" in blocks:
            handles.append(
                Line2D([], [], linestyle="", marker="o", color=_OTHER, label="several blocks")
            )
        if len(runs) > 1 or "" not in runs:
            handles += [Line2D([], [], linestyle="", marker=_MARKERS[i % len(_MARKERS)],
                               color="#333333", label=label) for i, label in enumerate(runs)]  # fmt: skip
        ax.legend(handles=handles, loc="best")
        _spread_labels(ax)
    return ax


def _spread_labels(ax: Axes) -> None:
    """Move each group label that overlaps another up, clear of it (after a layout pass)."""
    fig, _ = figure_and_axes(ax)
    fig.draw_without_rendering()  # the layout settles the axes before the labels are measured
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    labels = sorted((t for t in ax.texts if isinstance(t, Annotation)), key=lambda t: t.xy[1])
    placed: list[Bbox] = []
    for label in labels:
        for _ in range(len(labels)):
            box = label.get_window_extent(renderer)
            hit = next((b for b in placed if b.overlaps(box)), None)
            if hit is None:
                break
            x, y = label.xyann
            label.xyann = (x, y + (hit.y1 - box.y0) * 72 / fig.dpi + _LABEL_GAP)
        placed.append(label.get_window_extent(renderer))


def score_by_rank(
    rank_curve: Frames, *, ablation: Frames | None = None, ax: Axes | None = None
) -> Axes:
    """Score of θ_0 + rank-k(Δ_T) against k per run; with `ablation`, θ_T (dashed) and θ_0 (dotted)."""
    func = "score_by_rank"
    runs = _by_run(rank_curve, func, ["k", "score"], "rank_curve", RANK_HINT)
    refs: dict[str, pd.DataFrame] = {}
    if ablation is not None:
        refs = _by_run(ablation, func, ["score_full", "score_base"], "ablation", ABLATION_HINT)
        missing = [r for r in runs if r not in refs]
        if missing:
            raise OptionError(
                f"The 'ablation' argument of {func} must hold the runs of rank_curve; "
                f"{missing} are missing (it holds {list(refs)})."
            )
    bases = {label: float(refs[label]["score_base"].iloc[0]) for label in runs if label in refs}
    # Runs from one start score their base alike: one line, said to be shared.
    shared = len(bases) > 1 and len(set(bases.values())) == 1
    with paper_style():
        _, ax = figure_and_axes(ax)
        ks: set[int] = set()
        for i, (label, df) in enumerate(runs.items()):
            df = df.sort_values("k")
            ks |= {int(k) for k in df["k"]}
            name = label or "rank-k update"
            ax.plot(
                df["k"].to_numpy(),
                values_of(df["score"]),
                color=color_at(i),
                marker="o",
                label=name,
            )
            if label in refs:
                ref = refs[label].iloc[0]
                ax.axhline(float(ref["score_full"]), color=color_at(i), linestyle="--", linewidth=0.9,
                           label=rf"{label + ' · ' if label else ''}$\theta_T$ (full update)")  # fmt: skip
                if not shared:
                    ax.axhline(float(ref["score_base"]), color=color_at(i), linestyle=":",
                               linewidth=0.9,
                               label=rf"{label + ' · ' if label else ''}$\theta_0$ (base)")  # fmt: skip
        if shared:
            ax.axhline(next(iter(bases.values())), color="#555555", linestyle=":", linewidth=1.1,
                       label=rf"$\theta_0$ (base, the same for {', '.join(bases)})")  # fmt: skip
        ax.set_xscale("log", base=2)
        ticks = sorted(ks)
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.set_xlabel("rank $k$ of every matrix update")
        ax.set_ylabel(r"score $S(\theta_0 + \mathrm{rank}_k(\Delta_T))$")
        # Beside the panel: inside, the reference lines and curves leave no free corner.
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return ax


def ablation_figure(ablation: Frames, rank_curve: Frames | None = None) -> Figure:
    """Utility against update share, one panel per run side by side, then the rank curve."""
    runs = _by_run(
        ablation, "ablation_figure", ["group", "update_share", "utility"], "ablation", ABLATION_HINT
    )
    panels = len(runs) + (rank_curve is not None)
    with paper_style():
        fig = new_figure(3.6 * panels, 3.0)
        axes = fig.subplots(1, panels, squeeze=False)[0]
        for ax, (label, df) in zip(axes, runs.items(), strict=False):
            utility_by_share(df, ax=ax)
            if label:
                ax.set_title(label)
        if rank_curve is not None:
            score_by_rank(rank_curve, ablation=runs, ax=axes[-1])
            axes[-1].set_title("rank curve")
        for ax in axes[: len(runs)]:  # the final layout may have moved them closer
            _spread_labels(ax)
    return fig


_CAPTION = (
    "Utility of each group's update, S(θ_T) − S(θ_T without the group's update), against "
    "its share of ‖Δ_T‖_F², one panel per run (the `opdlens ablate` outputs given); "
    "colour is the block. Last panel (when ablated with ranks): the score of "
    "θ_0 + rank-k(Δ_T) against k, with θ_T dashed and θ_0 dotted."
)
_COLUMNS = ["group", "update_share", "score_drop", "score_only", "utility"]


def report_figure(sources: Sources) -> tuple[str, str, str, Callable[[], Figure]] | str:
    """The ablation figure (stem, title, caption, draw), or why it is skipped."""
    ablation = sources.ablation
    if not ablation:
        return "figure ablation skipped: no ablation results (--ablation LABEL=DIR)."
    curves = {k: a.rank_curve for k, a in ablation.items() if not a.rank_curve.empty}
    frames = {k: a.ablation for k, a in ablation.items()}
    title = "Marginal utility of each group's update"
    return "ablation", title, _CAPTION, lambda: ablation_figure(frames, curves or None)


def report_section(sources: Sources, embed: Callable[[str], Embedded]) -> dict[str, Any] | None:
    """The report's ablation section: its sentence per run, the figure, each run's table."""
    if not sources.ablation:
        return None
    items = sources.ablation.items()
    return {
        "lines": sources.ablation_lines,
        "figure": embed("ablation"),
        "tables": [(label, a.ablation.attrs.get("scorer", "given"),
                    table(a.ablation[[c for c in _COLUMNS if c in a.ablation]]))
                   for label, a in items],
    }  # fmt: skip
