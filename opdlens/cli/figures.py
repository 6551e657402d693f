"""`opdlens figures` and `opdlens report`: the paper's figures, and one self-contained HTML page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import OptionError
from ._app import (
    BaseOpt,
    QuietOpt,
    TrustPickleOpt,
    app,
    echo,
    handle_errors,
    parse_checkpoints,
)
from .analyze import parse_ints

if TYPE_CHECKING:
    from ..analysis.options import AnalyzeOptions
    from ..analysis.results import Sources

SourceArg = Annotated[
    Path,
    typer.Argument(help="Run directory (checkpoint-<N>/ …), or the --out of `opdlens analyze`."),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory (outside every run).")]
CompareOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--compare",
        metavar="<path>",
        help="Another run or metrics directory to compare (repeatable).",
    ),
]
LabelsOpt = Annotated[
    str | None,
    typer.Option("--labels", help="Comma-separated run names, RUN first, e.g. OPD,RL."),
]
ReplayOpt = Annotated[
    Path | None, typer.Option("--replay", help="The --out directory of `opdlens replay`.")
]
ErrorsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--errors",
        metavar="<path>",
        help="extrapolation_errors.csv of `extrapolate --evaluate` (one per α).",
    ),
]
CheckpointOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--checkpoint",
        metavar="<step=path>",
        help="Explicit STEP=PATH (repeatable) for SOURCE's checkpoints in layouts not found "
        "automatically.",
    ),
]
MetricsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--metrics",
        metavar="<path>",
        help="Training log drawn above the weight metrics: trainer_state.json, JSONL or CSV; one "
        "per run in the order RUN, --compare … (default: found beside the checkpoints).",
    ),
]
RanksOpt = Annotated[str, typer.Option(help="K values when a run is analysed, e.g. 1,4,16.")]
TopOpt = Annotated[int, typer.Option("--spectra", help="Tensors whose spectrum is drawn.")]
WorkersOpt = Annotated[
    int | None, typer.Option(help="Worker processes when a run is analysed (default: cores).")
]


def _load(
    source: Path, compare: list[Path] | None, labels: str | None, out: Path, base: Path | None,
    checkpoint: list[str] | None, trust_pickle: bool,
    replay: Path | None, errors: list[Path] | None, metrics: list[Path] | None,
    options: AnalyzeOptions, spectra: int, quiet: bool,
) -> Sources:  # fmt: skip
    names = None if labels is None else [x for x in labels.split(",")]
    # matplotlib and pandas load only for these commands
    from ..analysis.results import load_sources

    return load_sources(
        [source, *(compare or [])], out, labels=names, base=base,
        checkpoints=parse_checkpoints(checkpoint), trust_pickle=trust_pickle, replay=replay,
        errors=errors or (), metrics=metrics or (), spectra_top=spectra, progress=not quiet,
        analyze_options=options,
    )  # fmt: skip


def _options(ranks: str, workers: int | None, spectra: int) -> AnalyzeOptions:
    """The options a run is analysed with, checked (with --spectra) before --out is touched."""
    from ..analysis.options import AnalyzeOptions

    if spectra < 0:
        raise OptionError(f"--spectra takes a count ≥ 0; got {spectra}.")
    return AnalyzeOptions(ranks=parse_ints(ranks, "--ranks"), workers=workers)


@contextmanager
def _output(command: str, out: Path, paths: list[Path]) -> Iterator[Path]:
    """Create and mark --out (new, empty, or written by opdlens)."""
    from ..analysis.results import is_metrics_dir
    from ..io.paths import output_dir

    runs = [p for p in paths if not is_metrics_dir(p)]  # --out may hold figures of a metrics dir
    with output_dir(out, command, inputs=runs) as path:
        yield path


def _notes(src: Sources, notes: list[str]) -> None:
    for rm in src.runs:
        for w in rm.provenance.get("warnings", [])[:20]:
            typer.echo(f"warning: {rm.label}: {w}", err=True)
    for note in notes:
        typer.echo(f"note: {note}", err=True)


@app.command()
@handle_errors
def figures(
    source: SourceArg,
    out: OutOpt,
    compare: CompareOpt = None,
    labels: LabelsOpt = None,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    replay: ReplayOpt = None,
    errors: ErrorsOpt = None,
    metrics: MetricsOpt = None,
    ranks: RanksOpt = "1,4,16",
    spectra: TopOpt = 6,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Draw the paper's figures (PDF, SVG and 200-dpi PNG) for one run or several side by side."""
    options = _options(ranks, workers, spectra)
    with _output("figures", out, [source, *(compare or [])]):
        src = _load(source, compare, labels, out, base, checkpoint, trust_pickle, replay, errors,
                    metrics, options, spectra, quiet)  # fmt: skip
        from ..viz.figures import write_figures

        result = write_figures(
            src.frame, out, spectra=src.spectra, history=src.history, errors=src.errors,
            training=src.training,
        )  # fmt: skip
    _notes(src, [*src.notes, *result.notes])
    for stem in result.paths:
        echo(f"{out / stem}.{{pdf,svg,png}}  {result.titles[stem]}")
    echo(f"wrote {len(result.paths)} figures to {out}")


@app.command()
@handle_errors
def report(
    source: SourceArg,
    out: OutOpt,
    compare: CompareOpt = None,
    labels: LabelsOpt = None,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    replay: ReplayOpt = None,
    errors: ErrorsOpt = None,
    metrics: MetricsOpt = None,
    ranks: RanksOpt = "1,4,16",
    spectra: TopOpt = 6,
    top: Annotated[int, typer.Option(help="Rows in the top-tensors table.")] = 20,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write one self-contained HTML page: run summary, figures, top tensors, warnings, provenance."""
    if top < 1:
        raise OptionError(f"--top takes a count ≥ 1; got {top}.")
    analyze_options = _options(ranks, workers, spectra)
    with _output("report", out, [source, *(compare or [])]):
        src = _load(source, compare, labels, out, base, checkpoint, trust_pickle, replay, errors,
                    metrics, analyze_options, spectra, quiet)  # fmt: skip
        options = {
            "labels": [r.label for r in src.runs],
            "replay": None if replay is None else str(replay),
            "errors": [str(e) for e in errors or []],
            "metrics": [str(m) for m in metrics or []],
            "ranks": ranks,
            "spectra": spectra,
            "top": top,
        }
        from ..viz.report import write_report

        path = write_report(src, out, title=title, top=top, options=options)
    _notes(src, src.notes)
    echo(f"wrote {path} (figures in {out / 'figures'})")
