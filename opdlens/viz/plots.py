"""The paper-style plots, one module to import them from: each draws on `ax=` and returns its Axes.

Plots that naturally draw several panels (the allocation heatmaps) are figure-level helpers,
`*_figure(…, fig=None)`, returning their Figure. Spectra, replay and extrapolation plots live here;
the others in allocation.py and dynamics.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from opdlens.errors import OptionError
from opdlens.frames import STEP_LABEL, check_frame, values_of
from opdlens.viz.allocation import allocation_heatmap_figure, allocation_strip_figure
from opdlens.viz.dynamics import (
    GAP_THRESHOLD,
    alignment_by_step,
    block_norms,
    energy_by_rank,
    energy_by_step,
)
from opdlens.viz.style import color_at, figure_and_axes, paper_style, sequential_colors
from opdlens.viz.training import training_curve

__all__ = [
    "GAP_THRESHOLD",
    "alignment_by_step",
    "allocation_heatmap_figure",
    "allocation_strip_figure",
    "block_norms",
    "energy_by_rank",
    "energy_by_step",
    "error_vs_alpha",
    "replay_scores",
    "spectra",
    "training_curve",
]


def spectra(spectra: pd.DataFrame | Mapping[str, object], *, ax: Axes | None = None) -> Axes:
    """Singular values of the final update Δ_T of the given tensors, on a log scale.

    spectra: tidy rows (tensor, index, sigma; opdlens.analysis.spectra) or tensor → values.
    """
    if isinstance(spectra, pd.DataFrame):
        hint = "Pass the spectra DataFrame of opdlens.analysis.spectra."
        frame = check_frame(spectra, "spectra", ["tensor", "index", "sigma"], "spectra", hint)
        spectra = {
            str(name): values_of(rows.sort_values("index")["sigma"])
            for name, rows in frame.groupby("tensor", sort=False)
        }
    if not isinstance(spectra, Mapping) or not spectra:
        raise OptionError(
            "The 'spectra' argument of spectra must be a non-empty mapping of tensor name to "
            f"singular values. Got {type(spectra).__name__} of length "
            f"{len(spectra) if hasattr(spectra, '__len__') else '?'} instead."
        )
    values = {}
    for name, sigma in spectra.items():
        array = np.asarray(sigma, dtype="float64")
        if array.ndim != 1 or not np.isfinite(array).all() or (array < 0).any():
            raise OptionError(
                f"The singular values of '{name}' passed to spectra must be a 1-D array of "
                f"finite, non-negative numbers. Got shape {array.shape} instead."
            )
        values[name] = np.sort(array)[::-1]
    with paper_style():
        _, ax = figure_and_axes(ax)
        for i, (name, sigma) in enumerate(values.items()):
            ax.plot(np.arange(1, sigma.size + 1), sigma, color=color_at(i), label=name)
        ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel("index $i$")
        ax.set_ylabel(r"singular value $\sigma_i$ of $\Delta_T$")
        ax.legend(loc="best")
    return ax


def replay_scores(
    history: pd.DataFrame, *, score_label: str = "validation score", ax: Axes | None = None
) -> Axes:
    """Replay score against step: the saved checkpoint, candidates tried, and the accepted path."""
    columns = ["step", "anchor", "candidate", "alpha", "multiple", "score", "accepted"]
    hint = "Pass the history DataFrame returned by the EffOPD replay."
    history = check_frame(history, "replay_scores", columns, arg="history", hint=hint)
    h = history.sort_values(["step", "candidate"])
    saved = h[h["candidate"] == 0]
    tried = h[h["candidate"] > 0]
    accepted = tried["accepted"].astype(bool).to_numpy()
    # The replay's checkpoint at each step is its last accepted candidate, else the saved one.
    path = pd.concat([saved, tried[accepted]]).groupby("step").tail(1).sort_values("step")
    with paper_style():
        _, ax = figure_and_axes(ax)
        ax.plot(saved["step"], saved["score"], color=color_at(7), marker="o",
                label="saved checkpoint (candidate 0)")  # fmt: skip
        ax.plot(path["step"], path["score"], color=color_at(0), linestyle="--", marker="o",
                label="after accepted extrapolations")  # fmt: skip
        ax.scatter(tried["step"][accepted], tried["score"][accepted], marker="^", s=30,
                   color=color_at(2), zorder=3, label="accepted candidate")  # fmt: skip
        ax.scatter(tried["step"][~accepted], tried["score"][~accepted], marker="x", s=24,
                   color=color_at(3), zorder=3, label="rejected candidate")  # fmt: skip
        if (h["step"] > 0).all():
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 8, not 8.0
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(score_label)
        ax.text(0.01, 0.01, "offline replay: training did not continue from accepted candidates",
                transform=ax.transAxes, fontsize=6.5, color="#666666")  # fmt: skip
        ax.legend(loc="best")
    return ax


def error_vs_alpha(errors: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Relative prediction error of one-shot extrapolation against α, one line per target step."""
    hint = "Pass the DataFrame of prediction errors from the extrapolation sweep."
    errors = check_frame(
        errors, "error_vs_alpha", ["alpha", "target_step", "rel_error"], arg="errors", hint=hint
    )
    targets = errors.sort_values("alpha").groupby("target_step")
    # One colour per target step, from a sequential map: later targets are lighter, none repeats.
    colors = sequential_colors(targets.ngroups)
    with paper_style():
        _, ax = figure_and_axes(ax)
        for color, (target, rows) in zip(colors, targets, strict=True):
            ax.plot(rows["alpha"], rows["rel_error"], color=color, marker="o",
                    label=f"$s$ = {target}")  # fmt: skip
        ax.axhline(1.0, color="#777777", linestyle="--", linewidth=0.8, label="standing still")
        ax.set_xlabel(r"extrapolation factor $\alpha$")
        ax.set_ylabel(
            "relative error\n"
            r"$\|\theta_{\mathrm{pred}} - \theta_s\| \,/\, \|\theta_t - \theta_s\|$"
        )
        ax.legend(loc="best", title="target step", ncols=2 if targets.ngroups > 6 else 1)
    return ax
