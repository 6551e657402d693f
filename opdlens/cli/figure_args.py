"""The options `opdlens figures` and `opdlens report` share: declared once, parsed and checked."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import typer

from ..errors import OptionError
from ._app import BaseOpt, QuietOpt, TrustPickleOpt, parse_checkpoints
from .analyze import parse_ints

if TYPE_CHECKING:
    from ..analysis.options import AnalyzeOptions
    from ..report.sources import SourceOptions

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
OverlapOpt = Annotated[
    bool,
    typer.Option(
        "--overlap/--no-overlap",
        help="Compare the runs' updates as `opdlens compare` does (with --group, each group's runs "
        "pairwise: how consistent one method's changed weights are across seeds; else the first "
        "run against each other run directory) and draw the overlap figure. Two SVDs per matrix "
        "and pair.",
    ),
]
RanksOpt = Annotated[str, typer.Option(help="K values when a run is analysed, e.g. 1,4,16.")]
BaseGeometryOpt = Annotated[
    bool,
    typer.Option(
        "--base-geometry",
        help="Analyse run directories with analyze --base-geometry and draw the principal figure: "
        "how much of each update lies in the base weights' top-K singular directions, and how "
        "far those singular values drift (several times the cost of a plain analysis).",
    ),
]
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


def _options(ranks: str, workers: int | None, spectra: int, geometry: bool) -> AnalyzeOptions:
    """The options a run is analysed with, checked (with --spectra) before --out is touched."""
    from ..analysis.options import AnalyzeOptions

    if spectra < 0:
        raise OptionError(f"--spectra takes a count ≥ 0; got {spectra}.")
    return AnalyzeOptions(ranks=parse_ints(ranks, "--ranks"), workers=workers,
                          base_geometry=geometry)  # fmt: skip


@contextmanager
def output(command: str, out: Path, paths: list[Path]) -> Iterator[Path]:
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


_P = TypeVar("_P")


@dataclass(frozen=True)
class RunArgs:
    """Which runs: SOURCE and --compare with --labels, or --group with --band."""

    source: Path | None
    compare: list[Path] | None
    labels: str | None
    group: list[str] | None
    band: str | None


@dataclass(frozen=True)
class ReadArgs:
    """How the runs' checkpoints are read."""

    base: Path | None
    checkpoint: list[str] | None
    trust_pickle: bool


@dataclass(frozen=True)
class SideArgs:
    """What is drawn beside the weight metrics: replay, errors, logs, ablation, foresight,
    overlap."""

    replay: Path | None
    errors: list[Path] | None
    metrics: list[Path] | None
    ablation: list[str] | None
    foresight: bool
    overlap: bool


@dataclass(frozen=True)
class AnalysisArgs:
    """How a run directory is analysed, and how many spectra are drawn."""

    ranks: str
    spectra: int
    workers: int | None
    base_geometry: bool


@dataclass(frozen=True)
class FigureArgs:
    """The options `figures` and `report` share, as given on the command line."""

    runs: RunArgs
    read: ReadArgs
    side: SideArgs
    analysis: AnalysisArgs
    out: Path
    quiet: bool

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> FigureArgs:
        """FigureArgs of the shared options' values, by option name (SHARED's names)."""

        def part(kind: type[_P]) -> _P:
            return kind(**{f.name: values[f.name] for f in fields(kind)})  # type: ignore[arg-type]

        return cls(part(RunArgs), part(ReadArgs), part(SideArgs), part(AnalysisArgs),
                   values["out"], values["quiet"])  # fmt: skip

    def resolve(self) -> tuple[SourceOptions, Inputs]:
        """What to load, checked (and each --ablation read) before --out is touched."""
        from ..report.load import read_ablation
        from ..report.sources import SourceOptions

        r, side, a = self.runs, self.side, self.analysis
        given = inputs(r.source, r.compare, r.labels, r.group, r.band, self.read.checkpoint)
        analyze = _options(a.ranks, a.workers, a.spectra, a.base_geometry)
        ablation = read_ablation(parse_ablation(side.ablation or [])) or {}
        return SourceOptions(
            tuple(given.paths), None if given.labels is None else tuple(given.labels),
            given.groups, self.read.base, parse_checkpoints(self.read.checkpoint) or None,
            self.read.trust_pickle, side.replay, tuple(side.errors or ()),
            tuple(side.metrics or ()), ablation, side.foresight, analyze=analyze,
            spectra=a.spectra, overlap=side.overlap,
        ), given  # fmt: skip

    def record(self, given: Inputs) -> dict[str, object]:
        """The options a report records in its provenance."""
        side = self.side
        return {
            "groups": given.groups,
            "band": given.band if given.groups else None,
            "replay": None if side.replay is None else str(side.replay),
            "errors": [str(e) for e in side.errors or []],
            "metrics": [str(m) for m in side.metrics or []],
            "ablation": list(side.ablation or []),
            "foresight": side.foresight, "overlap": side.overlap, "ranks": self.analysis.ranks,
            "spectra": self.analysis.spectra, "base_geometry": self.analysis.base_geometry,
        }  # fmt: skip


def _option(
    name: str, annotation: object, default: object = inspect.Parameter.empty
) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=default)  # fmt: skip


# The one declaration of the command-line options figures and report share: typer reads them as
# the commands' parameters, FigureArgs.of gathers their values.
SHARED = (
    inspect.Parameter("source", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=SourceArg,
                      default=None),
    _option("out", OutOpt),
    _option("compare", CompareOpt, None),
    _option("labels", LabelsOpt, None),
    _option("group", GroupOpt, None),
    _option("band", BandOpt, None),
    _option("base", BaseOpt, None),
    _option("checkpoint", CheckpointOpt, None),
    _option("trust_pickle", TrustPickleOpt, False),
    _option("replay", ReplayOpt, None),
    _option("errors", ErrorsOpt, None),
    _option("metrics", MetricsOpt, None),
    _option("ablation", AblationOpt, None),
    _option("foresight", ForesightOpt, True),
    _option("overlap", OverlapOpt, False),
    _option("ranks", RanksOpt, "1,4,16"),
    _option("spectra", TopOpt, 6),
    _option("workers", WorkersOpt, None),
    _option("base_geometry", BaseGeometryOpt, False),
    _option("quiet", QuietOpt, False),
)  # fmt: skip

F = TypeVar("F", bound=Callable[..., None])


def figure_args(command: F) -> F:
    """Give `command(args: FigureArgs, *, own options…)` the shared options of figures/report."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.name != "args"]  # fmt: skip

    @functools.wraps(command)
    def wrapper(**kwargs: object) -> None:
        args = FigureArgs.of({p.name: kwargs.pop(p.name) for p in SHARED})
        command(args, **kwargs)

    params = [*SHARED, *own]
    wrapper.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]
