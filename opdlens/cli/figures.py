"""`opdlens figures` and `opdlens report`: the paper's figures, and one self-contained HTML page."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple, TypeVar

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
    from ..report.sources import SourceOptions, Sources

SourceArg = Annotated[
    Path | None,
    typer.Argument(
        help="Run directory (checkpoint-<N>/ …), or the --out of `opdlens analyze` (omit with "
        "--group).",
        show_default=False,
    ),
]
GroupOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--group",
        metavar="<name=path,path,…>",
        help="A group of runs, e.g. seeds of one method (repeatable): NAME=PATH,PATH,…; its runs "
        "are labelled NAME-1, NAME-2, …. Lines become group means with a band, and summaries "
        "give mean ± sd per group and the difference of means (first group − each other) with "
        "a 95 % bootstrap interval. Replaces SOURCE, --compare and --labels.",
    ),
]
BandOpt = Annotated[
    str | None,
    typer.Option(
        "--band",
        help="With --group, the band around group means: sd (±1 sd, the default) or "
        "range (min–max).",
    ),
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
        "per run in the order RUN, --compare … (or the runs of each --group in turn; default: "
        "found beside the checkpoints).",
    ),
]
AblationOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ablation",
        metavar="<label=dir>",
        help="The --out of `opdlens ablate` for one run, as LABEL=DIR (repeatable): adds the "
        "utility-against-update-share figure (and the rank curve, if ablated with --ranks).",
    ),
]
ForesightOpt = Annotated[
    bool,
    typer.Option(
        "--foresight/--no-foresight",
        help="Compute `opdlens foresee` on each run directory (with --group: each group's first "
        "run; one pass of reads and dot products, cheap) and draw the foresight figure; runs "
        "with fewer than two saved steps after the base are skipped with a note.",
    ),
]
RanksOpt = Annotated[str, typer.Option(help="K values when a run is analysed, e.g. 1,4,16.")]
TopOpt = Annotated[int, typer.Option("--spectra", help="Tensors whose spectrum is drawn.")]
WorkersOpt = Annotated[
    int | None, typer.Option(help="Worker threads when a run is analysed (default: cores).")
]


class Inputs(NamedTuple):
    """The runs a figures or report command reads: paths, labels and groups (or None)."""

    paths: list[Path]
    labels: list[str] | None
    groups: dict[str, list[str]] | None
    band: str


def parse_groups(specs: list[str]) -> tuple[list[Path], dict[str, list[str]]]:
    """--group NAME=PATH,PATH,… options as the paths in order and NAME → [NAME-1, NAME-2, …]."""
    paths: list[Path] = []
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        name = name.strip()
        members = [p.strip() for p in rest.split(",") if p.strip()]
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+]*", name) or not members:
            raise OptionError(
                f"--group takes NAME=PATH,PATH,… (a name of letters, digits, '.', '_' or '+', then "
                f"one or more run or metrics directories); got {spec!r}."
            )
        if name in groups:
            raise OptionError(
                f"--group {name} is given twice; give each group once with all its runs."
            )
        groups[name] = [f"{name}-{i}" for i in range(1, len(members) + 1)]
        paths += [Path(p) for p in members]
    return paths, groups


def distinct(paths: list[Path], option: str) -> None:
    """Refuse a run given twice: 'g/a0', 'g/a0/' and 'g/./a0' are one directory, counted once."""
    seen: dict[Path, Path] = {}
    for p in paths:
        try:
            key = p.resolve()
        except (RuntimeError, OSError):  # a symlink loop: the path itself fails later, in one line
            key = p.absolute()
        if key in seen:
            raise OptionError(
                f"{option} gives the run {key} twice ({seen[key]} and {p}); each run may be "
                "given once, or a group's n and spread would count it again."
            )
        seen[key] = p


def inputs(
    source: Path | None, compare: list[Path] | None, labels: str | None,
    group: list[str] | None, band: str | None, checkpoint: list[str] | None,
) -> Inputs:  # fmt: skip
    """Which runs to read: SOURCE and --compare (single runs), or --group (groups of runs)."""
    if band is not None and band not in ("sd", "range"):
        raise OptionError(f"--band takes sd or range; got {band!r}.")
    if not group:
        if source is None:
            raise OptionError(
                "Give SOURCE (a run or metrics directory) or at least one --group NAME=PATH,PATH,…."
            )
        if band is not None:
            raise OptionError("--band draws a band around group means; it needs --group.")
        names = None if labels is None else labels.split(",")
        distinct([source, *(compare or [])], "SOURCE and --compare")
        return Inputs([source, *(compare or [])], names, None, "sd")
    clash = [opt for opt, given in (("SOURCE", source is not None), ("--compare", compare),
                                    ("--labels", labels is not None),
                                    ("--checkpoint", checkpoint)) if given]  # fmt: skip
    if clash:
        raise OptionError(
            f"--group replaces SOURCE, --compare, --labels and --checkpoint, but {', '.join(clash)} "
            "was given too: pass every run through --group NAME=PATH,PATH,…, or drop --group to "
            "compare single runs."
        )
    paths, groups = parse_groups(group)
    distinct(paths, "--group")
    return Inputs(paths, [lab for labs in groups.values() for lab in labs], groups, band or "sd")


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


def parse_ablation(specs: list[str]) -> dict[str, Path]:
    """--ablation LABEL=DIR options as LABEL → DIR (checked for form only)."""
    out: dict[str, Path] = {}
    for spec in specs:
        label, sep, rest = spec.partition("=")
        label, rest = label.strip(), rest.strip()
        if not sep or not label or not rest:
            raise OptionError(
                f"--ablation takes LABEL=DIR (a label such as OPD, then the --out of `opdlens "
                f"ablate`); got {spec!r}."
            )
        if label in out:
            raise OptionError(f"--ablation {label} is given twice; give each label once.")
        out[label] = Path(rest)
    return out


@dataclass(frozen=True)
class FigureArgs:
    """The options `figures` and `report` share, as given on the command line."""

    source: Path | None
    out: Path
    compare: list[Path] | None
    labels: str | None
    group: list[str] | None
    band: str | None
    base: Path | None
    checkpoint: list[str] | None
    trust_pickle: bool
    replay: Path | None
    errors: list[Path] | None
    metrics: list[Path] | None
    ablation: list[str] | None
    foresight: bool
    ranks: str
    spectra: int
    workers: int | None
    quiet: bool

    def resolve(self) -> tuple[SourceOptions, Inputs]:
        """What to load, checked (and each --ablation read) before --out is touched."""
        from ..report.load import read_ablation
        from ..report.sources import SourceOptions

        given = inputs(self.source, self.compare, self.labels, self.group, self.band,
                       self.checkpoint)  # fmt: skip
        analyze = _options(self.ranks, self.workers, self.spectra)
        ablation = read_ablation(parse_ablation(self.ablation or [])) or {}
        return SourceOptions(
            tuple(given.paths), None if given.labels is None else tuple(given.labels),
            given.groups, self.base, parse_checkpoints(self.checkpoint) or None,
            self.trust_pickle, self.replay, tuple(self.errors or ()), tuple(self.metrics or ()),
            ablation, self.foresight, analyze=analyze, spectra=self.spectra,
        ), given  # fmt: skip

    def record(self, given: Inputs) -> dict[str, object]:
        """The options a report records in its provenance."""
        return {
            "groups": given.groups,
            "band": given.band if given.groups else None,
            "replay": None if self.replay is None else str(self.replay),
            "errors": [str(e) for e in self.errors or []],
            "metrics": [str(m) for m in self.metrics or []],
            "ablation": list(self.ablation or []),
            "foresight": self.foresight, "ranks": self.ranks, "spectra": self.spectra,
        }  # fmt: skip


def _declaration(
    source: SourceArg = None,
    *,
    out: OutOpt,
    compare: CompareOpt = None,
    labels: LabelsOpt = None,
    group: GroupOpt = None,
    band: BandOpt = None,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    replay: ReplayOpt = None,
    errors: ErrorsOpt = None,
    metrics: MetricsOpt = None,
    ablation: AblationOpt = None,
    foresight: ForesightOpt = True,
    ranks: RanksOpt = "1,4,16",
    spectra: TopOpt = 6,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """The one declaration of FigureArgs' command-line options (typer reads its signature)."""


F = TypeVar("F", bound=Callable[..., None])


def figure_args(command: F) -> F:
    """Give `command(args: FigureArgs, *, own options…)` the shared options of figures/report."""
    shared = inspect.signature(_declaration, eval_str=True).parameters
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.name != "args"]  # fmt: skip

    @functools.wraps(command)
    def wrapper(**kwargs: object) -> None:
        args = FigureArgs(**{name: kwargs.pop(name) for name in shared})  # type: ignore[arg-type]
        command(args, **kwargs)

    params = [*shared.values(), *own]
    wrapper.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


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
    with _output("figures", args.out, given.paths):
        from ..report.load import load_sources

        src = load_sources(options, args.out, progress=not args.quiet)
        from ..viz.figures import write_figures

        result = write_figures(src, args.out, ReportOptions(band=given.band))
    _notes(src, [*src.notes, *result.notes])
    for stem in result.paths:
        echo(f"{args.out / stem}.{{pdf,svg,png}}  {result.titles[stem]}")
    echo(f"wrote {len(result.paths)} figures to {args.out}")


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
    with _output("report", args.out, given.paths):
        from ..report.load import load_sources

        src = load_sources(options, args.out, progress=not args.quiet)
        record = {"labels": src.labels, **args.record(given), "top": top}
        from ..viz.report import write_report

        path = write_report(src, args.out, ReportOptions(given.band, title, top, record))
    _notes(src, list(src.notes))
    echo(f"wrote {path} (figures in {args.out / 'figures'})")
