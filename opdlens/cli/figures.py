"""`opdlens figures` and `opdlens report`: the paper's figures, and one self-contained HTML page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import OptionError
from ._app import app, echo, handle_errors
from .figure_args import FigureArgs, figure_args, output

if TYPE_CHECKING:
    from ..report.sources import Sources


def _notes(src: Sources, notes: list[str]) -> None:
    for rm in src.runs:
        for w in rm.provenance.get("warnings", [])[:20]:
            typer.echo(f"warning: {rm.label}: {w}", err=True)
    for note in notes:
        typer.echo(f"note: {note}", err=True)


@app.command()
@handle_errors
@figure_args
def figures(args: FigureArgs) -> None:
    """Draw the paper's figures (PDF, SVG and 200-dpi PNG) for one run, several side by side, or
    groups of runs (group means with a band)."""
    from ..report.sources import ReportOptions

    options, given = args.resolve()
    with output("figures", args.out, given.paths):
        from ..report.load import load_sources

        src = load_sources(options, args.out, progress=not args.quiet)
        from ..viz.figures import write_figures

        result = write_figures(src, args.out, ReportOptions(band=given.band))
        from ..report.tables import write_tables

        tables = write_tables(src, args.out, {"labels": src.labels, **args.record(given)})
    _notes(src, [*src.notes, *result.notes])
    for stem in result.paths:
        echo(f"{args.out / stem}.{{pdf,svg,png}}  {result.titles[stem]}")
    echo(f"wrote {len(result.paths)} figures to {args.out}; every run's metrics in {tables}")


@app.command()
@handle_errors
@figure_args
def report(
    args: FigureArgs,
    *,
    top: Annotated[int, typer.Option(help="Rows in the top-tensors table.")] = 20,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
) -> None:
    """Write one self-contained HTML page: run summary, figures, top tensors, warnings, provenance."""
    from ..report.sources import ReportOptions

    if top < 1:
        raise OptionError(f"--top takes a count ≥ 1; got {top}.")
    options, given = args.resolve()
    with output("report", args.out, given.paths):
        from ..report.load import load_sources

        src = load_sources(options, args.out, progress=not args.quiet)
        record = {"labels": src.labels, **args.record(given), "top": top}
        from ..viz.report import write_report

        path = write_report(src, args.out, ReportOptions(given.band, title, top, record))
        from ..report.tables import write_tables

        tables = write_tables(src, args.out, record)
    _notes(src, list(src.notes))
    echo(f"wrote {path} (figures in {args.out / 'figures'}, every run's metrics in {tables})")
