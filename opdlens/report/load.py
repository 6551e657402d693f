"""Load what figures and reports draw, in one place: each run analysed (through its factor cache),
its checkpoints, training log and spectra, the side inputs, and what the report states."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..analysis.analyze import compute_analysis
from ..analysis.findings import (
    claim_lines,
    group_findings,
    mixed_architectures,
    score_change,
)
from ..analysis.options import AnalyzeOptions
from ..analysis.results import (
    RunMetrics,
    checkpoint_table,
    default_label,
    is_metrics_dir,
    load_errors,
    load_history,
    load_metrics,
    metrics_frame,
    read_json,
    run_summary,
)
from ..analysis.spectra import cached_spectra, run_spectra
from ..analysis.write import analysis_record
from ..errors import InputNotFoundError, OpdlensError, OptionError
from ..frames import check_groups
from ..io.paths import ensure_outside, output_dir
from ..io.training_log import (
    TrainingLogError,
    choose_metric,
    log_at_steps,
    read_training_log,
    run_training_log,
)
from ..run import open_run
from .side_inputs import (
    compute_foresight,
    compute_overlap,
    find_online_effopd,
    load_ablation,
    online_lines,
    overlap_lines,
    overlap_pairs,
)
from .sources import Score, SourceOptions, Sources

if TYPE_CHECKING:
    from ..extrapolation.ablate import Ablation
    from .side_inputs import OnlineEffOPD

logger = logging.getLogger(__name__)

__all__ = [
    "complete",
    "from_frame",
    "labels",
    "load_sources",
    "read_ablation",
    "score",
    "shown_runs",
]

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def load_sources(options: SourceOptions, out_dir: str | Path, *, progress: bool = False) -> Sources:
    """Load every run of `options` (a run directory is analysed in memory, its top-K factors
    cached in out_dir/cache/<label>/ for the next call) with its side inputs, then what the
    report states (`complete`). Nothing else is written.

    Raises:
        InputNotFoundError: a path, replay directory or errors file that does not exist.
        OpdlensError: an output directory overlapping an input run, an unreadable checkpoint.
        OptionError: labels or training logs that do not match the paths; InputFileError: an
            unreadable side file.
    """
    dirs = list(options.paths)
    if not dirs:
        raise OptionError("Give at least one run directory or metrics directory.")
    for p in dirs:
        if not p.exists():
            raise InputNotFoundError(
                f"{p} does not exist: expected a run directory (checkpoint-<N>/ …) or the output "
                "directory of `opdlens analyze` (metrics.parquet)."
            )
    names = labels(dirs, options.labels)
    if options.checkpoints and is_metrics_dir(dirs[0]):
        raise OptionError(
            f"--checkpoint adds checkpoints to a run directory, but {dirs[0]} is the output of "
            "`opdlens analyze` (metrics.parquet); pass the run directory, or drop --checkpoint."
        )
    out = ensure_outside(Path(out_dir), [p for p in dirs if not is_metrics_dir(p)], "output")
    # Side inputs first, so a wrong path fails before a long analysis.
    history = load_history(options.replay) if options.replay is not None else None
    errors = load_errors(options.errors) if options.errors else None
    if options.metrics and len(options.metrics) != len(dirs):
        raise OptionError(
            f"--metrics names {len(options.metrics)} training log(s) but {len(dirs)} run(s) were "
            "given (RUN plus each --compare); give one per run, in the same order."
        )
    logs = [read_training_log(m) for m in options.metrics] or [None] * len(dirs)
    ablation = read_ablation(options.ablation)
    runs: list[RunMetrics] = []
    notes: list[str] = []
    training: dict[str, pd.DataFrame] = {}
    spectra: list[pd.DataFrame] = []
    donors: list[Path] = []  # the caches of the runs before: a shared base is decomposed once
    for i, (path, label) in enumerate(zip(dirs, names, strict=True)):
        # --checkpoint adds to the first run only.
        own = options if i == 0 else dataclasses.replace(options, checkpoints=None)
        rm = _load_run(path, label, out, own, progress=progress, donors=donors)
        runs.append(rm)
        donors.append(out / "cache" / label if rm.metrics_dir is None else path)
        log = _training(rm, logs[i], notes)
        if log is not None:
            training[label] = log
        if options.spectra > 0:
            spectra += _spectra(rm, options.spectra, notes)
    loaded = Sources(
        tuple(runs), options.groups, _concat(spectra), history, errors, training,
        ablation=ablation, online=_online(options.online, runs), notes=tuple(notes),
    )  # fmt: skip
    return complete(_overlap(_foresight(loaded, options, progress), options, progress))


def labels(paths: Sequence[Path], given: Sequence[str] | None) -> list[str]:
    """The runs' labels: `given` (checked), else their directory names (which must differ)."""
    if given is None:
        out = [default_label(p) for p in paths]
        if len(set(out)) < len(out):
            raise OptionError(
                f"The runs {[str(p) for p in paths]} have the same directory names {out}; "
                "name them with --labels, e.g. --labels OPD,RL."
            )
        return out
    names = [str(x).strip() for x in given]
    if len(names) != len(paths):
        raise OptionError(
            f"--labels names {len(names)} run(s) ({','.join(names)}) but {len(paths)} were "
            "given (RUN plus each --compare); give one label per run, in the same order."
        )
    bad = [x for x in names if not _LABEL.match(x)]
    if bad or len(set(names)) < len(names):
        raise OptionError(
            f"--labels must be distinct names of letters, digits, '.', '_', '+' or '-'; got "
            f"{names}."
        )
    return names


def _load_run(
    path: Path, label: str, out: Path, options: SourceOptions, *, progress: bool,
    donors: Sequence[Path] = (),
) -> RunMetrics:  # fmt: skip
    """One run's metrics: analysed from its checkpoints in memory (through its factor cache in
    out/cache/<label>/; W_0's factors may come from the `donors` caches of runs before it), or
    read from the `opdlens analyze` output given."""
    if is_metrics_dir(path):
        frame = load_metrics(path, label)
        prov_file = path / "provenance.json"
        prov = (
            read_json(prov_file, "provenance.json of `opdlens analyze`")
            if prov_file.is_file()
            else {}
        )
        rm = RunMetrics(label, path, path, frame, prov)
    else:
        run = open_run(
            path, options.base, checkpoints=options.checkpoints, trust_pickle=options.trust_pickle
        )
        analyze = AnalyzeOptions.build(options.analyze, {})
        logger.info("analysing %s (factor cache in %s)", path, out / "cache" / label)
        with output_dir(out / "cache" / label, "cache", inputs=run.input_paths) as cache:
            analysis = compute_analysis(
                run, analyze, cache_dir=cache, progress=progress, base_donors=donors
            )
        frame = metrics_frame(analysis.frame, label)
        rm = RunMetrics(label, path, None, frame, analysis_record(run, analysis), run)
    rm.checkpoints, rm.reader_warnings = checkpoint_table(rm)
    rm.summary = run_summary(rm.frame)
    return rm


def _checkpoint_dirs(rm: RunMetrics) -> tuple[Path | None, dict[int, Path]]:
    """The run directory and checkpoint directories behind a run's metrics."""
    if rm.run is not None:
        return rm.source, {s: ck.path for s, ck in rm.run.checkpoints.items()}
    # A metrics directory: the checkpoints its provenance names, and their common parent.
    dirs = {int(i["step"]): Path(i["path"]) for i in rm.provenance.get("inputs", [])
            if i.get("step") and i.get("path")}  # fmt: skip
    parents = {d.parent for d in dirs.values()}
    return (parents.pop() if len(parents) == 1 else None), dirs


def _training(rm: RunMetrics, log: pd.DataFrame | None, notes: list[str]) -> pd.DataFrame | None:
    """The run's training log (given, else found beside its checkpoints); a note when none."""
    if log is None:
        run_dir, dirs = _checkpoint_dirs(rm)
        try:
            log = run_training_log(run_dir, dirs)
        except TrainingLogError as e:
            notes.append(f"{rm.label}: no training curve: {e}")
            return None
    notes += [f"{rm.label}: {w}" for w in log.attrs.get("warnings", [])]
    return log


def _spectra(rm: RunMetrics, n: int, notes: list[str]) -> list[pd.DataFrame]:
    """The spectra of the run's top n matrices: from its checkpoints, else its factor cache."""
    if "stable_rank" not in rm.frame or rm.frame["stable_rank"].isna().all():
        notes.append(f"{rm.label}: no matrix tensors with a spectrum; spectra skipped.")
        return []
    if rm.run is not None:
        return [run_spectra(rm.run, rm.frame, n, label=rm.label)]
    try:
        assert rm.metrics_dir is not None  # a run without an open Run was read from one
        sp = cached_spectra(rm.metrics_dir, rm.frame, n, label=rm.label)
    except OpdlensError as e:
        notes.append(f"{rm.label}: spectra skipped: {e}")
        return []
    if sp["top_k_only"].any():
        notes.append(
            f"{rm.label}: spectra show the cached top-K singular values only (a metrics directory "
            "was given); pass the run directory for full spectra."
        )
    return [sp]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    frames = [f for f in frames if not f.empty] or frames[:1]
    return pd.concat(frames, ignore_index=True) if frames else None


def read_ablation(given: Mapping[str, Path | Ablation]) -> dict[str, Ablation] | None:
    """label → opdlens.ablate's result: each directory read (refused in one line if not one)."""
    if not isinstance(given, Mapping) or not all(
        isinstance(a, (str, Path)) or _is_ablation(a) for a in given.values()
    ):
        raise OptionError(
            "The 'ablation' option must map a label to what opdlens.ablate returns or the --out "
            f"directory it wrote, e.g. {{'OPD': Path('ablate-out')}}. Got {given!r:.80} instead."
        )
    if not given:
        return None
    return {
        str(label): load_ablation(a) if isinstance(a, (str, Path)) else a
        for label, a in given.items()
    }


def _is_ablation(value: object) -> bool:
    return all(
        isinstance(getattr(value, t, None), pd.DataFrame) for t in ("ablation", "rank_curve")
    )


def _online(
    given: Sequence[OnlineEffOPD] | None, runs: Sequence[RunMetrics]
) -> tuple[OnlineEffOPD, ...]:
    if given is not None:
        return tuple(given)
    return tuple(find_online_effopd([(rm.label, rm.source) for rm in runs if rm.run is not None]))


def _foresight(sources: Sources, options: SourceOptions, progress: bool) -> Sources:
    """opdlens foresee on the shown runs (True), or the rows given (a DataFrame)."""
    if isinstance(options.foresight, pd.DataFrame):
        return dataclasses.replace(sources, foresight=options.foresight)
    if not options.foresight:
        return sources
    shown = set(shown_runs(sources.labels, sources.groups))
    runs = {rm.label: rm.run for rm in sources.runs if rm.label in shown}
    workers = options.analyze.workers if options.analyze is not None else None
    rows, notes = compute_foresight(runs, workers=workers, progress=progress)
    return dataclasses.replace(sources, foresight=rows, notes=(*sources.notes, *notes))


def _overlap(sources: Sources, options: SourceOptions, progress: bool) -> Sources:
    """opdlens compare on the pairs `overlap_pairs` names (--overlap)."""
    if not options.overlap:
        return sources
    groups = check_groups(sources.groups, sources.labels) if sources.groups is not None else None
    runs = {rm.label: rm.run for rm in sources.runs}
    pairs = overlap_pairs(sources.labels, groups)
    frame, notes = compute_overlap(runs, pairs, options.analyze, progress=progress)
    return dataclasses.replace(sources, overlap=frame, notes=(*sources.notes, *notes))


def shown_runs(labels: Sequence[str], groups: Mapping[str, Sequence[str]] | None) -> list[str]:
    """The runs drawn one by one: each group's first run with groups, else every run."""
    if groups is None:
        return list(labels)
    return [str(members[0]) for members in groups.values() if members]


def score(log: pd.DataFrame | None, steps: Sequence[int]) -> Score | None:
    """The logged score from step 0 (else the first saved step it was logged by) to the last
    saved step; None without a log, a metric, or a value at a saved step."""
    choice = choose_metric(log) if log is not None else None
    if log is None or choice is None or not steps:
        return None
    column, kind = choice
    at = log_at_steps(log[["step", column]].dropna(), [0, *steps]).dropna()
    if at.empty:
        return None
    v0, v1 = float(at[column].iloc[0]), float(at[column].iloc[-1])
    change = score_change(v0, v1) if kind == "accuracy" else None
    return Score(kind, column, int(at["step"].iloc[0]), int(at["step"].iloc[-1]), v0, v1, change)


def complete(sources: Sources) -> Sources:
    """`sources` with what the report states computed: groups checked, the shown runs, the
    claims' numbers and verdicts, each run's score, foresight's sentences and EffOPD table,
    online EffOPD's sentences.

    Raises:
        OpdlensError: groups naming runs that are not in sources.
    """
    from ..analysis.findings import ablation_sentence
    from ..analysis.foresight import effopd_comparison, foresight_sentence
    from ..analysis.lenses import lens_findings, lens_lines, overlap_findings
    from ..analysis.principal import principal_curves, principal_sentence
    from ..analysis.subnetwork import changed_cells, changed_sentence, final_changed

    names = sources.labels
    groups = check_groups(sources.groups, names) if sources.groups is not None else None
    shown = shown_runs(names, groups)
    frames = {rm.label: rm.frame for rm in sources.runs}
    findings = group_findings(frames, groups) if groups is not None else None
    fore = sources.foresight
    if groups is not None and fore is not None and "run" in fore:
        fore = fore[fore["run"].isin(shown)]
    effopd = None
    lines: dict[str, str] = {}
    if fore is not None and not fore.empty:
        lines = {str(run): foresight_sentence(df.drop(columns="run"))
                 for run, df in fore.groupby("run", sort=False)}  # fmt: skip
        effopd = effopd_comparison(fore)
        if not effopd.empty:
            nxt = effopd.groupby(["run", "step", "anchor"])["target_step"].transform("min")
            effopd = effopd[effopd["target_step"] == nxt].reset_index(drop=True)
    mixed = mixed_architectures(sources.frame, groups) if groups is not None else []
    shares = final_changed(frames, groups)
    principal = principal_curves(frames, groups)
    lens = lens_findings(frames, groups) if groups is not None else None
    pairs = (
        overlap_findings(sources.overlap, groups) if groups and sources.overlap is not None else []
    )
    scores = {rm.label: s for rm in sources.runs
              if (s := score(sources.training.get(rm.label), _steps(rm))) is not None}  # fmt: skip
    return dataclasses.replace(
        sources, groups=groups, foresight=fore, shown=tuple(shown), findings=findings,
        claims=tuple(claim_lines(findings)) if findings is not None else (), scores=scores,
        foresight_lines=lines, effopd=effopd, online_lines=tuple(online_lines(sources.online)),
        ablation_lines=tuple((label, ablation_sentence(a.ablation))
                             for label, a in (sources.ablation or {}).items()),
        overlap_lines=tuple(overlap_lines(sources.overlap)),
        sparsity_line=changed_sentence(shares, _tolerance(sources)), sparsity_shares=shares,
        sparsity_cells=changed_cells(frames, groups),
        principal=principal, principal_line=principal_sentence(principal),
        lens_findings=lens, overlap_findings=tuple(pairs),
        lens_claims=tuple(lens_lines(lens, pairs)) if lens is not None else (),
        notes=tuple(dict.fromkeys([*sources.notes, *mixed])),
    )  # fmt: skip


def _tolerance(sources: Sources) -> float | None:
    """The runs' common --sparsity-tol from their provenance, or None (unknown or differing)."""
    found = {rm.provenance.get("options", {}).get("sparsity_tol") for rm in sources.runs}
    return float(found.pop()) if len(found) == 1 and None not in found else None


def _steps(rm: RunMetrics) -> list[int]:
    return sorted(int(s) for s in rm.frame["step"].unique())


def from_frame(df: pd.DataFrame, **fields: Any) -> Sources:
    """Sources of a metrics frame with a `run` column (one RunMetrics per run, no files behind
    it) and the given Sources fields (training, groups, spectra, …), completed."""
    if not isinstance(df, pd.DataFrame) or "run" not in df.columns:
        raise OptionError(
            "The 'df' argument must be a metrics DataFrame with a 'run' column; add one with "
            "df.assign(run='OPD') (opdlens.analysis.results.load_metrics does this)."
        )
    if "span" in df.columns:
        df = df[df["span"] == "cumulative"]
    runs = tuple(
        RunMetrics(str(label), Path(str(label)), Path(str(label)), rows.reset_index(drop=True), {})
        for label, rows in df.groupby("run", sort=False)
    )
    return complete(Sources(runs, **fields))
