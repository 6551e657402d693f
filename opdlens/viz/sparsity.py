"""The sparsity lens: share of weights changed over layer × module kind, per run or group."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from opdlens.errors import NothingToDrawError
from opdlens.frames import check_frame, values_of
from opdlens.viz.allocation import _grid_axes, _heatmaps
from opdlens.viz.style import paper_style

if TYPE_CHECKING:
    from ..report.sources import Sources
    from .sections import Figure as Embedded

__all__ = ["report_figure", "report_section", "sparsity_heatmap_figure"]

_CELLS = ["label", "layer", "kind", "changed_frac", "changed_frac_tol"]
_OVERALL = ["label", "where", "changed_frac", "changed_frac_tol"]
_HINT = "Pass the tables of opdlens.analysis.subnetwork.changed_cells and final_changed."
_LABEL = {
    False: "changed_frac: share of weights\nwhose stored value changed",
    True: "changed_frac_tol: share of weights\nwith |Δ| > τ",
}
_CAPTION = (
    "Share of the weights whose stored value at the run's last analysed step differs from the "
    "base (changed_frac), per layer and module kind: summed changed counts over summed element "
    "counts, on one 0–1 scale; with groups, each group's runs pooled. Grey cells have no such "
    "tensor or no counts (LoRA factors). bf16 storage hides updates smaller than half a bf16 "
    "step; in float32 checkpoints nearly every weight changes."
)


def sparsity_heatmap_figure(
    cells: pd.DataFrame, overall: pd.DataFrame, *, tol: bool = False, fig: Figure | None = None
) -> Figure:
    """Heatmaps of changed_frac (changed_frac_tol with `tol`) over layer × kind, one panel per
    label of `overall` (a run, or a group with its runs pooled), on one 0–1 colour scale.

    `cells` and `overall` as `opdlens.analysis.subnetwork.changed_cells` and `final_changed`
    give them. Draws into `fig` (its size kept) when given, else into a new Figure; returns it.
    """
    cells = check_frame(cells, "sparsity_heatmap_figure", _CELLS, "cells", _HINT)
    overall = check_frame(overall, "sparsity_heatmap_figure", _OVERALL, "overall", _HINT)
    col = "changed_frac_tol" if tol else "changed_frac"
    if cells.empty or not np.isfinite(values_of(cells[col])).any():
        raise NothingToDrawError(
            "The 'cells' argument of sparsity_heatmap_figure has no changed counts (LoRA "
            "factors, or metrics written before opdlens counted changed weights). " + _HINT
        )
    layers, kinds = _grid_axes(cells)
    with paper_style():
        panels = []
        for row in overall.itertuples():
            share = getattr(row, col)
            said = "no counts" if not np.isfinite(share) else f"{share:.1%} of all weights"
            grid = cells[cells["label"] == row.label].pivot(
                index="layer", columns="kind", values=col
            )
            values = grid.reindex(index=layers, columns=kinds).to_numpy("float64", na_value=np.nan)
            panels.append((f"{row.label} · {row.where}\n{said}", values))
        fig = _heatmaps(panels, layers, kinds, fig=fig, label=_LABEL[tol], vmax=1.0)
    return fig


def _has_counts(sources: Sources) -> bool:
    shares = sources.sparsity_shares
    return shares is not None and bool(np.isfinite(values_of(shares["changed_frac"])).any())


def report_figure(sources: Sources) -> tuple[str, str, str, Callable[[], Figure]] | str:
    """The sparsity heatmap (stem, title, caption, draw), or why it is skipped."""
    if not _has_counts(sources):
        return (
            "figure sparsity skipped: no changed counts (LoRA factors only, or metrics written "
            "before opdlens counted changed weights; run `opdlens analyze` again)."
        )
    cells, shares = sources.sparsity_cells, sources.sparsity_shares
    assert cells is not None and shares is not None  # _has_counts
    title = "Update sparsity: share of weights changed"
    return "sparsity", title, _CAPTION, lambda: sparsity_heatmap_figure(cells, shares)


def report_section(sources: Sources, embed: Callable[[str], Embedded]) -> dict[str, Any] | None:
    """The report's sparsity section: what was found in one sentence, then the figure."""
    if not _has_counts(sources):
        return None
    return {"line": sources.sparsity_line, "figure": embed("sparsity")}
