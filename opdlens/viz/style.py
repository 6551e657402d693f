"""The one look of every opdlens figure: serif type, Okabe–Ito colours, applied per call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType, RcKeyType

__all__ = [
    "BLOCK_COLORS",
    "FLAG_COLOR",
    "LINESTYLES",
    "OKABE_ITO",
    "RC_PARAMS",
    "block_color",
    "color_at",
    "figure_and_axes",
    "linestyle_at",
    "new_figure",
    "paper_style",
    "sequential_colors",
]

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour
# vision deficiencies. Black comes last so it is the eighth line, not the first.
OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

# Fixed per block, so a block keeps its colour across figures and runs.
BLOCK_COLORS = {
    "attn": OKABE_ITO[0],
    "mlp": OKABE_ITO[1],
    "embed": OKABE_ITO[2],
    "norm": OKABE_ITO[4],
    "head": OKABE_ITO[3],
    "other": "#7F7F7F",
}

# Line styles tell runs apart where colour already encodes a block or a rank.
LINESTYLES: tuple[LineStyleType, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))

# Grey for points the figure marks as unreliable (ill-defined subspaces).
FLAG_COLOR = "#9A9A9A"

RC_PARAMS: dict[RcKeyType, Any] = {
    # STIX ships with matplotlib, so the serif face never depends on the host's fonts.
    "font.family": "serif",
    "font.serif": ["STIXGeneral", "DejaVu Serif"],
    "mathtext.fontset": "stix",
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "axes.prop_cycle": cycler(color=list(OKABE_ITO)),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E5E5E5",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "lines.linewidth": 1.4,
    "lines.markersize": 3.5,
    "image.cmap": "viridis",
    "figure.dpi": 100,
    "savefig.dpi": 200,
    # TrueType in PDFs: journals reject Type 3 fonts, and text stays selectable.
    "pdf.fonttype": 42,
    # Stable element ids, so an unchanged SVG figure is byte-identical when re-exported.
    "svg.hashsalt": "opdlens",
}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Apply the opdlens rcParams inside a `with` block, leaving global state untouched."""
    with mpl.rc_context(RC_PARAMS):
        yield


def color_at(i: int) -> str:
    """The i-th Okabe–Ito colour, cycling."""
    return OKABE_ITO[i % len(OKABE_ITO)]


def sequential_colors(n: int) -> list[str]:
    """n distinct colours in order, sampled evenly from viridis (its lightest yellow left out)."""
    cmap = mpl.colormaps["viridis"]
    return [mpl.colors.to_hex(cmap(x)) for x in np.linspace(0.0, 0.85, n)]


def linestyle_at(i: int) -> LineStyleType:
    """The i-th line style, cycling."""
    return LINESTYLES[i % len(LINESTYLES)]


def block_color(block: str) -> str:
    """The fixed colour of a block (attn, mlp, embed, norm, head, other)."""
    return BLOCK_COLORS.get(block, BLOCK_COLORS["other"])


def new_figure(width: float = 4.2, height: float = 2.8) -> Figure:
    """A headless Figure with constrained layout and an Agg canvas; call inside paper_style()."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_and_axes(
    ax: Axes | None, width: float = 4.2, height: float = 2.8
) -> tuple[Figure, Axes]:
    """The root Figure of `ax`, or a new Figure with one Axes when `ax` is None."""
    if ax is None:
        fig = new_figure(width, height)
        return fig, fig.add_subplot()
    root: Figure | SubFigure = ax.figure
    # A SubFigure's parent chain ends at the Figure that saves and displays it.
    while not isinstance(root, Figure):
        root = root.figure
    return root, ax
