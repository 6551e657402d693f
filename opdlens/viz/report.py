"""One self-contained HTML page per analysis, from its template: what it found first, then each
analysis, inventories last. Everything stated is computed before (opdlens.report.load)."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import pandas as pd

from ..errors import OptionError
from ..io.paths import writable_dir, write_text_atomic
from ..provenance import versions
from .analyses import LENSES
from .figures import FigureSet, write_figures
from .save import FORMATS
from .sections import figure, table, top_table

if TYPE_CHECKING:
    from ..analysis.results import RunMetrics
    from ..report.sources import ReportOptions, Sources

logger = logging.getLogger(__name__)

__all__ = ["REPORT_FILE", "TEMPLATE", "key_figure", "macro", "render_report", "write_report"]

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"  # package data: opdlens/viz/templates/, with its macros
MACROS = "macros.html.j2"

_OWN_SECTION = tuple(lens.stem for lens in LENSES)  # figures shown in their lens' section
_KEY_FIGURES = ("findings", "training_and_weights", "block_norms")  # the first present leads
_NOTES = (" skipped", ": no training log (", "cached top-K singular values only")


@functools.cache
def _environment() -> jinja2.Environment:
    """The template environment: autoescaped, templates read from the package's data."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("opdlens.viz", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def macro(name: str) -> Any:
    """One of the template's macros (table, figure, score, *_section) as a callable."""
    return getattr(_environment().get_template(MACROS).module, name)


def key_figure(figures: FigureSet) -> str | None:
    """The figure shown on the first screen: the claims, else what the run learned, else norms."""
    stems = [s for s in figures.paths if s not in _OWN_SECTION]
    return next((s for s in _KEY_FIGURES if s in figures.paths), stems[0] if stems else None)


def _is_note(message: str) -> bool:
    """A figure or side analysis skipped for want of an input: a note, not a problem."""
    return any(marker in message for marker in _NOTES)


def _sentence(text: str) -> str:
    return text if text.rstrip().endswith((".", ")")) else text.rstrip() + "."


def _messages(sources: Sources, figures: FigureSet) -> tuple[list[str], list[str]]:
    """(warnings: real problems, notes: figures and analyses skipped, caveats), deduplicated."""
    out: list[str] = []
    for rm in sources.runs:
        out += [
            f"{rm.label}: {w}" for w in [*rm.reader_warnings, *rm.provenance.get("warnings", [])]
        ]
    out += [*sources.notes, *figures.notes]
    notes = []
    if sources.history is not None:
        notes.append(str(sources.history.attrs.get("note", "Offline replay (see replay_scores).")))
        if sources.history.attrs.get("oracle"):
            out.append("The replay scorer is the hindsight oracle: it looks at later checkpoints.")
    unique = list(dict.fromkeys(out))
    notes += [m for m in unique if _is_note(m)]
    return [m for m in unique if not _is_note(m)], [_sentence(n) for n in notes]


def _inventory(rm: RunMetrics, log: pd.DataFrame | None) -> dict[str, Any]:
    """One run's inputs: where its metrics come from, its checkpoints, its block table."""
    df = rm.frame
    return {
        "label": rm.label, "source": rm.source, "metrics_dir": rm.metrics_dir,
        "source_kind": "run directory" if rm.run is not None
        else "metrics directory (opdlens analyze)",
        "steps": sorted(int(s) for s in df["step"].unique()), "final": int(df["step"].max()),
        "tensors": df["tensor"].nunique(), "rows": len(df),
        "log": None if log is None else {"source": log.attrs.get("source", "given"),
                                         "format": log.attrs.get("format", ""), "n": len(log)},
        "checkpoints": None if rm.checkpoints.empty else table(rm.checkpoints),
        "summary": table(rm.summary),
    }  # fmt: skip


def _sections(sources: Sources, figures: FigureSet, options: ReportOptions) -> dict[str, Any]:
    """The context of the groups, lens and online EffOPD sections (None where nothing to show)."""
    from ..analysis.stats import BOOTSTRAP_SAMPLES  # a constant: stated in the groups' text
    from .groups import BANDS

    out: dict[str, Any] = {"groups": None, "online": None}
    f = sources.findings
    if f is not None:
        out["groups"] = {
            "claims": (*sources.claims, *sources.lens_claims), "table": table(f.table()),
            "per_run": table(f.per_run.reset_index(names="run")),
            "sizes": "; ".join(f"{g}: {', '.join(runs)}" for g, runs in f.groups.items()),
            "resamples": f"{BOOTSTRAP_SAMPLES:,}", "band": BANDS[options.band],
        }  # fmt: skip
    embed = functools.partial(figure, figures)
    drawn = [(lens.stem, lens.section(sources, embed)) for lens in LENSES
             if lens.stem in figures.paths]  # fmt: skip
    out["lenses"] = [(stem, section) for stem, section in drawn if section is not None]
    if sources.online:
        out["online"] = [(o, table(o.candidates)) for o in sources.online if not o.candidates.empty]
    return out


def _provenance(sources: Sources, options: ReportOptions) -> dict[str, Any]:
    own = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "runs": {rm.label: str(rm.source) for rm in sources.runs},
        "options": dict(options.record),
    }
    return {
        "own_provenance": json.dumps(own, indent=2),
        "provenance": [
            (rm.label, rm.metrics_dir / "provenance.json" if rm.metrics_dir is not None
             else f"the analysis of {rm.source}",
             json.dumps(rm.provenance, indent=2, default=str) if rm.provenance else "(none)")
            for rm in sources.runs
        ],
    }  # fmt: skip


def render_report(sources: Sources, figures: FigureSet, options: ReportOptions) -> str:
    """The report page as one HTML string; images are data: URIs, nothing loads from a network.

    Order: findings (verdicts, scores, online EffOPD, key figure), one section per analysis
    (groups, figures, foresight, ablation, online EffOPD, top tensors), warnings with a line of
    notes, then the inventories (checkpoints, block tables, provenance) folded.
    """
    warnings, notes = _messages(sources, figures)
    key = key_figure(figures)
    stems = [s for s in figures.paths if s not in (*_OWN_SECTION, key)]
    context = {
        "title": options.title or f"opdlens report: {' vs '.join(sources.labels)}",
        "refresh": options.refresh,
        "version": versions()["opdlens"], "sources": sources,
        "key": figure(figures, key) if key is not None else None,
        "figures": [figure(figures, s) for s in stems],
        "top_n": options.top, "top": top_table(sources.top_tensors(options.top),
                                               sources.final_steps),
        "warnings": warnings, "notes": notes,
        "inventories": [_inventory(rm, sources.training.get(rm.label)) for rm in sources.runs],
        **_sections(sources, figures, options), **_provenance(sources, options),
    }  # fmt: skip
    # jinja2 drops each template's final newline (sections are included mid-page); the page ends with one.
    return _environment().get_template(TEMPLATE).render(context) + "\n"


def write_report(
    sources: Sources,
    out_dir: str | Path,
    options: ReportOptions | None = None,
    *,
    figures: FigureSet | None = None,
) -> Path:
    """Write out_dir/report.html (figures saved under out_dir/figures/ and embedded); return it.

    With groups in sources: the groups section (mean ± sd, differences with 95 % bootstrap
    intervals, the claims' verdicts) and grouped figures (band: options.band). Foresight,
    ablation and online EffOPD in sources add a section each. figures: already drawn ones.

    Raises:
        OpdlensError: out_dir overlaps one of the runs, or is not a directory; options.top < 1.
    """
    from ..report.sources import ReportOptions

    options = options or ReportOptions()
    if options.top < 1:
        raise OptionError(
            f"The 'top' parameter of write_report must be ≥ 1. Got {options.top} instead."
        )
    runs = [rm.source for rm in sources.runs if rm.run is not None]
    out = writable_dir(out_dir, runs, "report")
    if figures is None:
        # A live page (refresh) is redrawn at every step: only the PNGs it embeds.
        formats = ("png",) if options.refresh else FORMATS
        figures = write_figures(sources, out / "figures", options, formats)
    page = render_report(sources, figures, options)
    path = out / REPORT_FILE
    write_text_atomic(path, page)
    logger.info("wrote %s (%d bytes)", path, len(page))
    return path
