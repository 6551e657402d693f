"""The analyses beyond the core figures ("lenses": foresight, ablation, sparsity, …): each draws one figure
from the Sources value and fills one section of the report. A new lens is its step in
opdlens.report.load, its viz module (report_figure, report_section), its section template
(templates/sections/<stem>.html.j2) and its row in LENSES."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from . import ablation, foresight, overlap, principal, sparsity
from .sections import Figure as Embedded

if TYPE_CHECKING:
    from ..report.sources import Sources

__all__ = ["LENSES", "Lens", "analysis_specs"]

_Spec = tuple[str, str, str, Callable[[], Figure]]  # stem, title, caption, draw


@dataclass(frozen=True)
class Lens:
    """One analysis in the figure set and the report: its figure stem (and section id), the
    figure it draws from the sources (or the note saying why not), and its section's context."""

    stem: str
    figure: Callable[[Sources], _Spec | str]
    section: Callable[[Sources, Callable[[str], Embedded]], dict[str, Any] | None]


LENSES = (
    Lens("foresight", foresight.report_figure, foresight.report_section),
    Lens("ablation", ablation.report_figure, ablation.report_section),
    Lens("sparsity", sparsity.report_figure, sparsity.report_section),
    Lens("overlap", overlap.report_figure, overlap.report_section),
    Lens("principal", principal.report_figure, principal.report_section),
)


def analysis_specs(sources: Sources) -> tuple[list[_Spec], list[str]]:
    """The lenses' figures the sources allow, and a note for each one missing."""
    specs: list[_Spec] = []
    notes: list[str] = []
    for lens in LENSES:
        spec = lens.figure(sources)
        if isinstance(spec, str):
            notes.append(spec)
        else:
            specs.append(spec)
    return specs, notes
