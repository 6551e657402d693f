"""What figures and reports draw, loaded as data: each run's metrics (a run is analysed first),
its checkpoints, summary and spectra, the replay history and extrapolation errors."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputFileError, InputNotFoundError, OpdlensError, OptionError
from ..io.paths import ensure_outside
from ..io.training_log import TrainingLogError, read_training_log, run_training_log
from ..run import Run, open_run
from ..survey import describe
from .options import AnalyzeOptions
from .readback import check_finished, check_table
from .spectra import SPECTRA_COLUMNS, cached_spectra, run_spectra
from .write import final_summary, write_analysis

logger = logging.getLogger(__name__)

__all__ = [
    "RunMetrics",
    "Sources",
    "checkpoint_table",
    "is_metrics_dir",
    "load_errors",
    "load_history",
    "load_metrics",
    "load_sources",
    "top_tensors",
]

METRICS_FILE = "metrics.parquet"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class RunMetrics:
    """One run's metrics as loaded for figures: its label, where they came from, the open Run.

    `checkpoints` (step, path, layout, …) and `reader_warnings` describe its checkpoints (from
    the open run, else from the analysis' provenance); `summary` is its final-step block table.
    """

    label: str
    source: Path
    metrics_dir: Path
    frame: pd.DataFrame
    provenance: dict[str, Any]
    run: Run | None = None
    checkpoints: pd.DataFrame = field(default_factory=pd.DataFrame)
    reader_warnings: list[str] = field(default_factory=list)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def final_step(self) -> int:
        """The step of Δ_T: from the analysis provenance, else the last analysed step."""
        final = self.provenance.get("final_step")
        return int(final) if final is not None else int(self.frame["step"].max())


@dataclass
class Sources:
    """Everything a figure set or report needs, for one or more runs."""

    runs: list[RunMetrics]
    spectra: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SPECTRA_COLUMNS))
    history: pd.DataFrame | None = None
    errors: pd.DataFrame | None = None
    training: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def frame(self) -> pd.DataFrame:
        """All runs' cumulative-update rows in one DataFrame with a `run` column."""
        return pd.concat([r.frame for r in self.runs], ignore_index=True)

    @property
    def final_steps(self) -> dict[str, int]:
        """Each run's final step Δ_T, by label."""
        return {rm.label: rm.final_step for rm in self.runs}

    def top_tensors(self, n: int = 20) -> pd.DataFrame:
        """The n rows with the largest update share at each run's final analysed step."""
        return top_tensors(self.frame, n)


def is_metrics_dir(path: str | Path) -> bool:
    """True when `path` holds the metrics.parquet that `opdlens analyze` writes."""
    return (Path(path) / METRICS_FILE).is_file()


def _read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV or Parquet file opdlens wrote earlier; one that cannot be parsed is a user error."""
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as e:  # pandas' ParserError, pyarrow's ArrowInvalid, bad UTF-8
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputFileError(
            f"{path} cannot be read as the {what}: {first}. Pass the file that command wrote, "
            "or run it again."
        ) from e


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object opdlens wrote earlier; anything else is a user error naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise InputFileError(
            f"{path} cannot be read as the {what}: {e}. Pass the file that command wrote."
        ) from e
    if not isinstance(data, dict):
        raise InputFileError(
            f"{path} holds a JSON {type(data).__name__}, expected the object of the {what}."
        )
    return data


def load_metrics(metrics_dir: str | Path, label: str | None = None) -> pd.DataFrame:
    """The cumulative-update rows of an analysis output, with a `run` column set to `label`."""
    path = Path(metrics_dir) / METRICS_FILE
    if not path.is_file():
        raise InputNotFoundError(
            f"{path} does not exist: expected the output directory of `opdlens analyze RUN --out "
            "DIR` (it holds metrics.parquet). Run that first, or pass the run directory itself."
        )
    check_finished(Path(metrics_dir), "analyze", "`opdlens analyze RUN --out DIR`")
    df = _read_table(path, "metrics.parquet of `opdlens analyze`")
    check_table(
        df, path, "metrics table of `opdlens analyze`", ["step", "tensor", "block", "update_share"]
    )
    if "update" in df.columns and "span" not in df.columns:
        df = df.rename(columns={"update": "span"})  # written before the column was renamed
    if "span" in df.columns:
        df = df[df["span"] == "cumulative"].reset_index(drop=True)
    df = df.drop(columns=["run"], errors="ignore")
    df.insert(0, "run", label or _default_label(Path(metrics_dir)))
    return df


def top_tensors(df: pd.DataFrame, n: int = 20, *, step: int | None = None) -> pd.DataFrame:
    """The n rows with the largest update share at the final (or given) step of each run."""
    if "run" not in df.columns:
        df = df.assign(run="run")
    out = []
    for _, rows in df.groupby("run", sort=False):
        at = rows[rows["step"] == (rows["step"].max() if step is None else step)]
        out.append(at.sort_values("update_share", ascending=False).head(n))
    return pd.concat(out, ignore_index=True) if out else df.iloc[0:0]


def _default_label(path: Path) -> str:
    name = path.resolve().name
    return name[len("metrics-") :] if name.startswith("metrics-") and len(name) > 8 else name


def _labels(paths: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        out = [_default_label(p) for p in paths]
        if len(set(out)) < len(out):
            raise OptionError(
                f"The runs {[str(p) for p in paths]} have the same directory names {out}; "
                "name them with --labels, e.g. --labels OPD,RL."
            )
        return out
    labels = [str(x).strip() for x in labels]
    if len(labels) != len(paths):
        raise OptionError(
            f"--labels names {len(labels)} run(s) ({','.join(labels)}) but {len(paths)} were "
            "given (RUN plus each --compare); give one label per run, in the same order."
        )
    bad = [x for x in labels if not _LABEL.match(x)]
    if bad or len(set(labels)) < len(labels):
        raise OptionError(
            f"--labels must be distinct names of letters, digits, '.', '_', '+' or '-'; got "
            f"{labels}."
        )
    return labels


def load_sources(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    base: str | Path | None = None,
    checkpoints: Mapping[int, str | Path] | None = None,
    trust_pickle: bool = False,
    replay: str | Path | None = None,
    errors: Sequence[str | Path] = (),
    metrics: Sequence[str | Path] = (),
    spectra_top: int = 6,
    analyze_options: AnalyzeOptions | None = None,
    progress: bool = False,
) -> Sources:
    """Load metrics for each path (a run is analysed into out_dir/metrics-<label>/ first).

    `base` and `trust_pickle` apply to every run directory; `checkpoints` (step → directory,
    as open_run takes them) to the first path only, which must then be a run directory.
    Training logs: `metrics` names one per path (in order), else each run's own is looked for
    beside its checkpoints (Run.training_log); a run without one gets a note, not an error.
    A run is analysed with `analyze_options` (default: `AnalyzeOptions()`).

    Raises:
        InputNotFoundError: a path, replay directory or errors file that does not exist.
        OpdlensError: an output directory overlapping an input run, an unreadable checkpoint.
        OptionError: labels that do not match the paths; InputFileError: an unreadable side file.
    """
    dirs = [Path(p) for p in paths]
    if not dirs:
        raise OptionError("Give at least one run directory or metrics directory.")
    for p in dirs:
        if not p.exists():
            raise InputNotFoundError(
                f"{p} does not exist: expected a run directory (checkpoint-<N>/ …) or the output "
                "directory of `opdlens analyze` (metrics.parquet)."
            )
    names = _labels(dirs, labels)
    if checkpoints and is_metrics_dir(dirs[0]):
        raise OptionError(
            f"--checkpoint adds checkpoints to a run directory, but {dirs[0]} is the output of "
            "`opdlens analyze` (metrics.parquet); pass the run directory, or drop --checkpoint."
        )
    run_dirs = [p for p in dirs if not is_metrics_dir(p)]
    out = ensure_outside(Path(out_dir), run_dirs, "output")
    # Side inputs first, so a wrong path fails before a long analysis.
    history = load_history(replay) if replay is not None else None
    errs = load_errors(errors) if errors else None
    if metrics and len(metrics) != len(dirs):
        raise OptionError(
            f"--metrics names {len(metrics)} training log(s) but {len(dirs)} run(s) were given "
            "(RUN plus each --compare); give one per run, in the same order."
        )
    logs = [read_training_log(m) for m in metrics]
    result = Sources(runs=[], history=history, errors=errs)
    for i, (path, label) in enumerate(zip(dirs, names, strict=True)):
        if is_metrics_dir(path):
            metrics_dir, run = path, None
        else:
            extra = checkpoints if i == 0 else None
            run = open_run(path, base, checkpoints=extra, trust_pickle=trust_pickle)
            metrics_dir = out / f"metrics-{label}"
            logger.info("analysing %s into %s", path, metrics_dir)
            write_analysis(run, metrics_dir, analyze_options, progress=progress)
        prov_file = metrics_dir / "provenance.json"
        prov = (
            _read_json(prov_file, "provenance.json of `opdlens analyze`")
            if prov_file.is_file()
            else {}
        )
        frame = load_metrics(metrics_dir, label)
        rm = RunMetrics(label, path, metrics_dir, frame, prov, run)
        rm.checkpoints, rm.reader_warnings = checkpoint_table(rm)
        rm.summary = _summary(rm)
        result.runs.append(rm)
        _add_training(result, result.runs[-1], logs[i] if logs else None)
        if spectra_top > 0:
            _add_spectra(result, result.runs[-1], spectra_top)
    return result


def checkpoint_table(rm: RunMetrics) -> tuple[pd.DataFrame, list[str]]:
    """The run's checkpoints and reader warnings: from the open run, else from provenance."""
    if rm.run is not None:
        d = describe(rm.run)
        rows = [d["base"], *d["checkpoints"]]
        df = pd.DataFrame(rows)[["step", "path", "layout", "num_tensors", "num_params", "dtype",
                                 "bytes"]]  # fmt: skip
        extra = [f"{len(d['missing_tensors'])} tensor(s) missing from some checkpoints"] * bool(
            d["missing_tensors"]
        )
        return df, [*d["warnings"], *extra]
    inputs = rm.provenance.get("inputs", [])
    df = pd.DataFrame(
        [{"step": i.get("step"), "path": i.get("path"), "layout": i.get("layout"),
          "bytes": sum(f.get("bytes", 0) for f in i.get("files", []))} for i in inputs]
    )  # fmt: skip
    return df, []


def _summary(rm: RunMetrics) -> pd.DataFrame:
    """Update share and low-rank energy by block at the run's last analysed step."""
    df = rm.frame
    if "span" not in df.columns:
        df = df.assign(span="cumulative")
    final = int(df["step"].max())
    return final_summary(df.drop(columns=["run"]), final).reset_index(drop=True)


def _checkpoint_dirs(rm: RunMetrics) -> tuple[Path | None, dict[int, Path]]:
    """The run directory and checkpoint directories behind a run's metrics."""
    if rm.run is not None:
        return rm.source, {s: ck.path for s, ck in rm.run.checkpoints.items()}
    # A metrics directory: the checkpoints its provenance names, and their common parent.
    dirs = {int(i["step"]): Path(i["path"]) for i in rm.provenance.get("inputs", [])
            if i.get("step") and i.get("path")}  # fmt: skip
    parents = {d.parent for d in dirs.values()}
    return (parents.pop() if len(parents) == 1 else None), dirs


def _add_training(result: Sources, rm: RunMetrics, log: pd.DataFrame | None) -> None:
    if log is None:
        run_dir, dirs = _checkpoint_dirs(rm)
        try:
            log = run_training_log(run_dir, dirs)
        except TrainingLogError as e:
            result.notes.append(f"{rm.label}: no training curve: {e}")
            return
    result.training[rm.label] = log
    result.notes += [f"{rm.label}: {w}" for w in log.attrs.get("warnings", [])]


def _add_spectra(result: Sources, rm: RunMetrics, n: int) -> None:
    if "stable_rank" not in rm.frame or rm.frame["stable_rank"].isna().all():
        result.notes.append(f"{rm.label}: no matrix tensors with a spectrum; spectra skipped.")
        return
    if rm.run is not None:
        _append_spectra(result, run_spectra(rm.run, rm.frame, n, label=rm.label))
        return
    try:
        sp = cached_spectra(rm.metrics_dir, rm.frame, n, label=rm.label)
    except OpdlensError as e:
        result.notes.append(f"{rm.label}: spectra skipped: {e}")
        return
    _append_spectra(result, sp)
    if sp["top_k_only"].any():
        result.notes.append(
            f"{rm.label}: spectra show the cached top-K singular values only (a metrics directory "
            "was given); pass the run directory for full spectra."
        )


def _append_spectra(result: Sources, sp: pd.DataFrame) -> None:
    frames = [f for f in (result.spectra, sp) if not f.empty]
    result.spectra = pd.concat(frames, ignore_index=True) if frames else sp


def load_history(replay_dir: str | Path) -> pd.DataFrame:
    """The replay history (history.csv) with its scorer, oracle flag and note in `attrs`."""
    d = Path(replay_dir)
    csv = d / "history.csv" if d.is_dir() else d
    if not csv.is_file():
        raise InputNotFoundError(
            f"{csv} does not exist: --replay takes the --out directory of `opdlens replay` "
            "(it holds history.csv and history.json)."
        )
    history = _read_table(csv, "history.csv of `opdlens replay`")
    meta_file = csv.with_name("history.json")
    if meta_file.is_file():
        meta = _read_json(meta_file, "history.json of `opdlens replay`")
        history.attrs.update({k: meta[k] for k in ("scorer", "oracle", "note") if k in meta})
    return history


def load_errors(files: Sequence[str | Path]) -> pd.DataFrame:
    """Overall rel_error rows of one or more `extrapolate --evaluate` CSVs, one per α."""
    frames = []
    for f in map(Path, files):
        if not f.is_file():
            raise InputNotFoundError(
                f"{f} does not exist: --errors takes the extrapolation_errors.csv that "
                "`opdlens extrapolate --evaluate` writes into its output checkpoint."
            )
        frames.append(_read_table(f, "extrapolation_errors.csv of `opdlens extrapolate`"))
    df = pd.concat(frames, ignore_index=True)
    missing = [c for c in ("alpha", "target_step", "rel_error") if c not in df.columns]
    if missing:
        raise InputFileError(
            f"--errors files need the columns alpha, target_step and rel_error; "
            f"{[str(f) for f in files]} lack {missing}. Pass extrapolation_errors.csv files."
        )
    if "scope" in df.columns:
        df = df[df["scope"] == "overall"]
    pairs = df[["step", "anchor"]].drop_duplicates() if {"step", "anchor"} <= set(df) else None
    if pairs is not None and len(pairs) > 1:
        raise OptionError(
            f"--errors files extrapolate from {len(pairs)} different (step, anchor) pairs "
            f"{[tuple(int(v) for v in p) for p in pairs.to_numpy()]}; one figure compares α "
            "for one pair: pass the files of one step and anchor."
        )
    return df.reset_index(drop=True)
