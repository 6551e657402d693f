"""The training curve a run logged (accuracy, evaluation or training loss) on the step axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import NothingToDrawError, OptionError
from ..io.training_log import choose_metric, log_at_steps, metric_kind
from .dynamics import alignment_by_step, energy_by_step
from .style import color_at, figure_and_axes, new_figure, paper_style

__all__ = ["metric_label", "training_caption", "training_curve", "training_figure"]

_HINT = "Pass the DataFrame returned by Run.training_log (or opdlens.io.training_log)."
_MARKERS_UP_TO = 60  # logged points drawn as dots only when there are few of them


def metric_label(log: pd.DataFrame, metric: str | None = None) -> tuple[str, str]:
    """(column, kind) of the metric training_curve draws: `metric` itself, or choose_metric's."""
    if not isinstance(log, pd.DataFrame) or "step" not in log.columns:
        got = list(log.columns) if isinstance(log, pd.DataFrame) else type(log).__name__
        raise OptionError(
            f"The 'log' argument must be a training log with a 'step' column; got {got}. {_HINT}"
        )
    if metric is None:
        choice = choose_metric(log)
        if choice is None:
            raise NothingToDrawError(
                f"The training log {log.attrs.get('source', '')} has no accuracy or loss column "
                f"to draw (columns: {[str(c) for c in log.columns][:12]}). On the command line, "
                "pass --metrics FILE with a log that has one (a column named like accuracy, "
                "eval_loss or loss); from Python, name the column: metric=NAME."
            )
        return choice
    if metric not in log.columns or metric == "step":
        raise OptionError(
            f"The 'metric' parameter of training_curve must be a column of the log. Got "
            f"{metric!r} instead; the log has {[str(c) for c in log.columns if c != 'step']}."
        )
    return metric, metric_kind(metric)


def training_curve(
    log: pd.DataFrame,
    *,
    metric: str | None = None,
    saved_steps: Sequence[int] | None = None,
    label: str | None = None,
    color: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """One logged metric against step (metric=None: accuracy, else eval loss, else train loss).

    saved_steps marks the saved checkpoints on the curve, each with the last value logged at
    or before it, so the curve lines up with the weight metrics of those steps.
    """
    column, kind = metric_label(log, metric)
    values = log[["step", column]].dropna().sort_values("step")
    if values.empty:
        raise NothingToDrawError(
            f"The training log has no finite value of {column!r} to draw. {_HINT}"
        )
    color = color or color_at(0)
    with paper_style():
        _, ax = figure_and_axes(ax)
        steps = values["step"].to_numpy()
        ax.plot(
            steps, values[column].to_numpy(dtype="float64"), color=color, label=label or column,
            marker="." if len(values) <= _MARKERS_UP_TO else None,
        )  # fmt: skip
        if saved_steps is not None and len(saved_steps):
            at = log_at_steps(log[["step", column]], saved_steps).dropna()
            ax.scatter(
                at["step"], at[column], s=18, zorder=3, facecolors="white", edgecolors=color,
                linewidths=1.0, label="saved checkpoints",
            )  # fmt: skip
        what = {
            "accuracy": "accuracy",
            "eval loss": "evaluation loss",
            "train loss": "training loss",
        }
        name = what.get(kind, "logged metric")
        ax.set_ylabel(name if column.lower() == name else f"{name}\n{column}")
        ax.set_xlabel("training step $t$")
        if kind == "accuracy" and np.nanmax(values[column].to_numpy(dtype="float64")) <= 1.0:
            ax.set_ylim(bottom=0.0)
    return ax


def _common_metric(logs: Mapping[str, pd.DataFrame]) -> str | None:
    """The first run's chosen metric when every log has it (one y scale for all), else None."""
    first = metric_label(next(iter(logs.values())))[0]
    return first if all(first in log.columns for log in logs.values()) else None


def training_figure(
    df: pd.DataFrame,
    runs: Sequence[str],
    logs: Mapping[str, pd.DataFrame],
    *,
    fig: Figure | None = None,
) -> Figure:
    """Per run (column): the logged metric above alignment and energy, on one step axis."""
    metric = _common_metric(logs)
    with paper_style():
        fig = new_figure(2.9 + 3.4 * len(runs), 7.6) if fig is None else fig
        axes = fig.subplots(3, len(runs), sharex="col", squeeze=False)
        for col, run in enumerate(runs):
            rows = df[df["run"] == run]
            top, mid, low = axes[:, col]
            if run in logs:
                saved = sorted(int(s) for s in rows["step"].unique())
                training_curve(logs[run], metric=metric, saved_steps=saved, ax=top)
            else:
                top.text(0.5, 0.5, "no training log", transform=top.transAxes, ha="center",
                         va="center", color="#777777")  # fmt: skip
            top.set_title(run)
            alignment_by_step(rows, side="both", ax=mid)
            energy_by_step(rows, ax=low)
            for ax in (top, mid):
                ax.set_xlabel("")
            if col > 0:
                for ax, first in zip((mid, low), (axes[1, 0], axes[2, 0]), strict=True):
                    ax.sharey(first)
                    ax.set_ylabel("")
                    ax.get_legend().remove()
                if metric is not None and run in logs and runs[0] in logs:
                    top.sharey(axes[0, 0])
                    top.set_ylabel("")
        if runs[0] in logs:
            axes[0, 0].legend()
        _fit_scores(axes[0], [run in logs for run in runs], metric)
        _legends_outside(axes)
    return fig


def _fit_scores(top: Sequence[Axes], drawn: Sequence[bool], metric: str | None) -> None:
    """Limits of the score panels that hold every curve (one scale when they share a metric)."""
    axes = [ax for ax, d in zip(top, drawn, strict=True) if d]
    for group in [axes] if metric is not None else [[ax] for ax in axes]:
        ys = [np.asarray(ln.get_ydata(), dtype="float64") for ax in group for ln in ax.get_lines()]
        ys += [np.asarray(c.get_offsets(), dtype="float64")[:, 1]
               for ax in group for c in ax.collections]  # fmt: skip
        values = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
        if values.size == 0:
            continue
        from_zero = group[0].get_ylim()[0] == 0.0 and values.min() >= 0.0  # accuracy ≤ 1
        lo, hi = (0.0 if from_zero else float(values.min())), float(values.max())
        pad = 0.05 * ((hi - lo) or abs(hi) or 1.0)
        for ax in group:  # shared axes move together; each gets the same limits
            ax.set_ylim(lo if from_zero else lo - pad, hi + pad)


def _legends_outside(axes: np.ndarray) -> None:
    """Each row's legend moved from its first panel to the right of its last, off the curves."""
    for row in axes:
        legend = row[0].get_legend()
        if legend is None:
            continue
        handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
        legend.remove()
        row[-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.03, 1.0),
                       borderaxespad=0.0, ncols=1)  # fmt: skip


def training_caption(logs: Mapping[str, pd.DataFrame]) -> str:
    """The training figure's caption, naming where each run's log came from."""
    sources = "; ".join(
        f"{run}: {log.attrs.get('source', 'given log')}" for run, log in logs.items()
    )
    return (
        "Top: what the run achieved, as its trainer logged it (accuracy if logged, else the "
        "evaluation loss, else the training loss) against step; hollow dots mark the saved "
        "checkpoints analysed below, each with the last value logged at or before it. Middle: "
        "alignment of the top-K singular subspaces with the final update (mean of left and "
        "right, ‖Δ‖_F²-weighted). Bottom: energy in the top-K singular directions per block. "
        f"One column per run, on one step axis. Logs: {sources}."
    )
