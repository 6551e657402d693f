"""The training curve a run logged (accuracy, evaluation or training loss) on the step axis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ..errors import NothingToDrawError, OptionError
from ..io.training_log import choose_metric, log_at_steps, metric_kind
from .style import color_at, figure_and_axes, paper_style

__all__ = ["metric_label", "training_curve"]

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
                f"to draw (columns: {[str(c) for c in log.columns][:12]}); pass metric=NAME."
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
