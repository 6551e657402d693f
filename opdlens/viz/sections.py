"""The report's pieces as data for its template: tables, figures and the top-tensors table."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .plots import GAP_THRESHOLD
from .save import PNG_DPI

if TYPE_CHECKING:
    from .save import FigureSet

__all__ = ["Cell", "Figure", "Table", "TopTable", "figure", "fmt", "table", "top_table"]


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, right-aligned when numeric, flagged with a *."""

    text: str
    num: bool = False
    flag: bool = False


@dataclass(frozen=True)
class Table:
    """An HTML table's header and rows, and the CSS class of the box it scrolls in."""

    head: list[str]
    rows: list[list[Cell]]
    css: str = "wide"


@dataclass(frozen=True)
class Figure:
    """One figure embedded as a PNG data URI, with its stem, title, caption and print width."""

    stem: str
    title: str
    caption: str
    data: str
    width: int


@dataclass(frozen=True)
class TopTable:
    """The top tensors' table, the K whose gap flags it, and whether any row is at a final step."""

    table: Table
    k: int | None = None
    at_final: bool = False
    flagged: bool = False
    gap: float = GAP_THRESHOLD


def fmt(value: object) -> str:
    """A cell's text: — for missing, 4 significant digits for floats."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def table(df: pd.DataFrame, flags: pd.DataFrame | None = None, css: str = "") -> Table:
    """A table that scrolls inside the page column; cells where `flags` is True get a *."""
    rows = []
    for i, (_, row) in enumerate(df.iterrows()):
        cells = []
        for c in df.columns:
            v = row[c]
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            mark = flags is not None and c in flags.columns and bool(flags.iloc[i][c])
            cells.append(Cell(fmt(v), num, mark))
        rows.append(cells)
    return Table([str(c) for c in df.columns], rows, " ".join(c for c in ("wide", css) if c))


def figure(figures: FigureSet, stem: str) -> Figure:
    """One saved figure as an embedded PNG with its title and caption."""
    png = figures.png(stem).read_bytes()
    # Shown at the figure's print size (the PNG is 200 dpi; CSS pixels are 1/96 in).
    width = int.from_bytes(png[16:20], "big") * 96 // PNG_DPI
    data = base64.b64encode(png).decode("ascii")
    return Figure(stem, figures.titles[stem], figures.captions[stem], data, width)


def _ks(df: pd.DataFrame, prefix: str) -> list[int]:
    return sorted(int(m.group(1)) for c in df.columns if (m := re.match(rf"^{prefix}_k(\d+)$", c)))


def top_table(top: pd.DataFrame, finals: dict[str, int]) -> TopTable:
    """The top tensors' rows; alignment columns only where they are not 1 by construction."""
    top = top.copy()
    ks = _ks(top, "energy")
    k = ks[(len(ks) - 1) // 2] if ks else None
    if "rows" in top and "cols" in top:
        top["shape"] = [f"{r}×{c}" for r, c in zip(top["rows"], top["cols"], strict=True)]
    cols = ["run", "step", "tensor", "expert", "part", "block", "shape", "update_share",
            "rel_update_norm", "stable_rank", "cos_to_final"]  # fmt: skip
    aligned = ["cos_to_final"]
    if k is not None:
        aligned += [f"align_left_k{k}", f"align_right_k{k}"]
        cols[-2:-2] = [f"energy_k{k}", *aligned[1:]]
    # Δ_T compared with itself: alignment and cosine are 1 at each run's final step.
    at_final = (top["step"] == top["run"].map(finals)).to_numpy(dtype=bool)
    top.loc[at_final, [c for c in aligned if c in top]] = np.nan
    cols = [c for c in cols if c in top.columns and not top[c].isna().all()]
    flags = None
    if k is not None and f"gap_k{k}" in top and f"align_left_k{k}" in cols:
        gap = top[f"gap_k{k}"].to_numpy(dtype="float64", na_value=np.nan)
        ill = ~(gap >= GAP_THRESHOLD) & top[f"align_left_k{k}"].notna().to_numpy()
        flags = pd.DataFrame({f"align_left_k{k}": ill, f"align_right_k{k}": ill})
    flagged = flags is not None and bool(flags.to_numpy().any())
    return TopTable(table(top[cols].reset_index(drop=True), flags, css="top"), k,
                    bool(at_final.any()), flagged)  # fmt: skip
