"""Module allocation heatmaps: update share over layer × module kind, per run or per step."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from opdlens.errors import NothingToDrawError, OptionError
from opdlens.frames import (
    ANALYZE_HINT,
    check_frame,
    final_steps,
    ordered,
    run_names,
    values_of,
)
from opdlens.viz.style import new_figure, paper_style

__all__ = ["allocation_heatmap_figure", "allocation_strip_figure"]

_MAX_STRIP_PANELS = 6
_STRIP_COLUMNS = 3
_KINDS = (
    "embed_tokens", "q_proj", "k_proj", "v_proj", "qkv", "o_proj", "gate_proj", "up_proj",
    "gate_up", "down_proj", "experts", "router", "norm", "lm_head",
)  # fmt: skip
_SHARE_LABEL = r"update share  $\|\Delta\|_F^2 \,/\, \sum \|\Delta\|_F^2$"


def _share_grid(rows: pd.DataFrame, layers: list[int], kinds: list[str]) -> np.ndarray:
    rows = rows[rows["layer"].notna()]
    keys = [rows["layer"].astype("int64"), rows["kind"].astype(str)]
    table = rows["update_share"].groupby(keys).sum(min_count=1).unstack()
    return table.reindex(index=layers, columns=kinds).to_numpy(dtype="float64", na_value=np.nan)


def _heatmaps(
    panels: list[tuple[str, np.ndarray]],
    layers: list[int],
    kinds: list[str],
    ncols: int = 0,
    fig: Figure | None = None,
    label: str = _SHARE_LABEL,
    vmax: float | None = None,
) -> Figure:
    """One heatmap per panel on one colour scale, `ncols` per row (0: all in one row).

    Drawn into `fig` when given, else into a new Figure sized for the panels. The scale runs
    from 0 to `vmax` (default: the largest value drawn), labelled `label`.
    """
    ncols = min(len(panels), ncols or len(panels))
    nrows = -(-len(panels) // ncols)
    # Height: rotated kind labels below, the titles above, and room for the colour-bar label
    # (about 1.7 in long) beside images of at least that height, whatever the layer count.
    labels = 0.055 * max((len(k) for k in kinds), default=4)
    image = max(1.8 / nrows, 0.14 * len(layers))
    height = 0.8 + labels + nrows * image + (nrows - 1) * (0.35 + labels)
    if fig is None:
        fig = new_figure(1.3 + ncols * (0.6 + 0.22 * len(kinds)), height)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = list(grid.flat[: len(panels)])
    for ax in grid.flat[len(panels) :]:
        ax.remove()
    finite = [grid[np.isfinite(grid)] for _, grid in panels]
    if vmax is None:
        vmax = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
    cmap = mpl.colormaps["viridis"].with_extremes(bad="#EEEEEE")
    drawn = None
    every = max(1, len(layers) // 12)
    for i, (ax, (title, values)) in enumerate(zip(axes, panels, strict=True)):
        drawn = ax.imshow(
            np.ma.masked_invalid(values), origin="lower", aspect="auto", cmap=cmap,
            vmin=0.0, vmax=vmax, interpolation="nearest",
        )  # fmt: skip
        # Kind names only under the lowest panel of each column, layers only in the first column.
        lowest = i + ncols >= len(panels)
        ax.set_xticks(range(len(kinds)), kinds if lowest else [], rotation=60, ha="right",
                      rotation_mode="anchor")  # fmt: skip
        ax.set_yticks(range(0, len(layers), every), [str(v) for v in layers[::every]])
        if i % ncols:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel("layer")
        ax.grid(False)
        ax.set_title(title)
    assert drawn is not None  # every figure has at least one panel
    fig.colorbar(drawn, ax=axes, label=label, fraction=0.05, pad=0.02)
    return fig


def _grid_axes(df: pd.DataFrame) -> tuple[list[int], list[str]]:
    layered = df[df["layer"].notna()]
    if layered.empty:
        raise NothingToDrawError(f"The 'df' argument has no rows with a layer. {ANALYZE_HINT}")
    layers = sorted(int(v) for v in layered["layer"].unique())
    return layers, ordered(layered["kind"].unique(), _KINDS)


def _outside_layers(rows: pd.DataFrame) -> float:
    return float(np.nansum(values_of(rows.loc[rows["layer"].isna(), "update_share"])))


def allocation_heatmap_figure(
    df: pd.DataFrame,
    *,
    step: int | None = None,
    runs: Sequence[str] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Heatmaps of update share over layer × kind, one panel per run, on one colour scale.

    Draws into `fig` (its size kept) when given, else into a new Figure; returns the Figure.
    """
    columns = ["run", "step", "layer", "kind", "update_share"]
    df = check_frame(df, "allocation_heatmap_figure", columns)
    runs = run_names(df, runs, "allocation_heatmap_figure")
    finals = final_steps(df, runs, step, "allocation_heatmap_figure")
    layers, kinds = _grid_axes(df[df["run"].isin(runs)])
    with paper_style():
        panels = []
        for run in runs:
            rows = df[(df["run"] == run) & (df["step"] == finals[run])]
            title = f"{run} · step {finals[run]}\noutside layers: {_outside_layers(rows):.1%}"
            panels.append((title, _share_grid(rows, layers, kinds)))
        fig = _heatmaps(panels, layers, kinds, fig=fig)
    return fig


def allocation_strip_figure(
    df: pd.DataFrame,
    *,
    run: str | None = None,
    steps: Sequence[int] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Small multiples of the allocation heatmap over steps of one run; returns the Figure.

    steps=None takes up to six saved steps spread evenly, always the first and the last.
    Draws into `fig` (its size kept) when given, else into a new Figure.
    """
    columns = ["run", "step", "layer", "kind", "update_share"]
    df = check_frame(df, "allocation_strip_figure", columns)
    present = run_names(df, None, "allocation_strip_figure")
    if run is None and len(present) > 1:
        raise OptionError(
            f"The 'run' parameter of allocation_strip_figure is needed when df holds several runs; "
            f"pass one of {present}."
        )
    run = run_names(df, [present[0] if run is None else run], "allocation_strip_figure")[0]
    rows = df[df["run"] == run]
    with_share = np.isfinite(values_of(rows["update_share"]))
    saved = sorted(int(s) for s in rows.loc[with_share, "step"].unique())
    if steps is None:
        picks = np.linspace(0, len(saved) - 1, min(len(saved), _MAX_STRIP_PANELS))
        steps = [saved[i] for i in sorted({int(round(p)) for p in picks})]
    elif not steps or any(s not in saved for s in steps):
        raise OptionError(
            f"The 'steps' parameter of allocation_strip_figure must list steps of run '{run}' with "
            f"update shares. Got {list(steps)} instead; the run has {saved}."
        )
    layers, kinds = _grid_axes(rows)
    with paper_style():
        panels = [(f"step {s}", _share_grid(rows[rows["step"] == s], layers, kinds)) for s in steps]
        # Three panels a row: the strip stays as wide as the report's column, its labels legible.
        fig = _heatmaps(panels, layers, kinds, ncols=_STRIP_COLUMNS, fig=fig)
        fig.suptitle(f"{run}: update share by layer and module")
    return fig
