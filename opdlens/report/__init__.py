"""What figures and reports draw, as one value built in one place: `Sources` and its loader."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

if TYPE_CHECKING:
    from .load import complete, from_frame, load_sources
    from .sources import ReportOptions, Score, SourceOptions, Sources

__all__ = ["ReportOptions", "Score", "SourceOptions", "Sources", "complete", "from_frame",
           "load_sources"]  # fmt: skip

__getattr__ = lazy_getattr(
    __name__,
    {
        "ReportOptions": "opdlens.report.sources:ReportOptions",
        "Score": "opdlens.report.sources:Score",
        "SourceOptions": "opdlens.report.sources:SourceOptions",
        "Sources": "opdlens.report.sources:Sources",
        "complete": "opdlens.report.load:complete",
        "from_frame": "opdlens.report.load:from_frame",
        "load_sources": "opdlens.report.load:load_sources",
    },
)
