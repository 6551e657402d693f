"""Analysis outputs read back as data: a run's metrics, checkpoints and block summary, the replay
history and extrapolation errors (opdlens.report.load gathers them for figures and reports)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import InputFileError, InputNotFoundError, OptionError
from ..survey import describe
from .readback import check_finished, check_table
from .write import final_summary

if TYPE_CHECKING:
    from ..run import Run

__all__ = [
    "RunMetrics",
    "checkpoint_table",
    "default_label",
    "is_metrics_dir",
    "load_errors",
    "load_history",
    "load_metrics",
    "metrics_frame",
    "read_json",
    "read_table",
    "run_summary",
    "top_tensors",
]

METRICS_FILE = "metrics.parquet"


@dataclass
class RunMetrics:
    """One run's metrics as loaded for figures: its label, where they came from, the open Run.

    `checkpoints` (step, path, layout, …) and `reader_warnings` describe its checkpoints (from
    the open run, else from the analysis' provenance); `summary` is its final-step block table.
    """

    label: str
    source: Path
    metrics_dir: Path | None  # the `opdlens analyze` output read, None when analysed here
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


def is_metrics_dir(path: str | Path) -> bool:
    """True when `path` holds the metrics.parquet that `opdlens analyze` writes."""
    return (Path(path) / METRICS_FILE).is_file()


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV or Parquet file opdlens wrote earlier; one that cannot be parsed is a user error."""
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as e:  # pandas' ParserError, pyarrow's ArrowInvalid, bad UTF-8
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputFileError(
            f"{path} cannot be read as the {what}: {first}. Pass the file that command wrote, "
            "or run it again."
        ) from e


def read_json(path: Path, what: str) -> dict[str, Any]:
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
    df = read_table(path, "metrics.parquet of `opdlens analyze`")
    check_table(
        df, path, "metrics table of `opdlens analyze`", ["step", "tensor", "block", "update_share"]
    )
    return metrics_frame(df, label or default_label(Path(metrics_dir)))


def metrics_frame(df: pd.DataFrame, label: str) -> pd.DataFrame:
    """An analysis' rows as figures take them: the cumulative update, a `run` column first."""
    if "update" in df.columns and "span" not in df.columns:
        df = df.rename(columns={"update": "span"})  # written before the column was renamed
    if "span" in df.columns:
        df = df[df["span"] == "cumulative"].reset_index(drop=True)
    df = df.drop(columns=["run"], errors="ignore")
    df.insert(0, "run", label)
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


def default_label(path: Path) -> str:
    """A run's label from its directory name (metrics-OPD → OPD)."""
    name = path.resolve().name
    return name[len("metrics-") :] if name.startswith("metrics-") and len(name) > 8 else name


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


def run_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Update share and low-rank energy by block at a run's last analysed step."""
    df = frame if "span" in frame.columns else frame.assign(span="cumulative")
    final = int(df["step"].max())
    return final_summary(df.drop(columns=["run"]), final).reset_index(drop=True)


def load_history(replay_dir: str | Path) -> pd.DataFrame:
    """The replay history (history.csv) with its scorer, oracle flag and note in `attrs`."""
    d = Path(replay_dir)
    csv = d / "history.csv" if d.is_dir() else d
    if not csv.is_file():
        raise InputNotFoundError(
            f"{csv} does not exist: --replay takes the --out directory of `opdlens replay` "
            "(it holds history.csv and history.json)."
        )
    history = read_table(csv, "history.csv of `opdlens replay`")
    meta_file = csv.with_name("history.json")
    if meta_file.is_file():
        meta = read_json(meta_file, "history.json of `opdlens replay`")
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
        frames.append(read_table(f, "extrapolation_errors.csv of `opdlens extrapolate`"))
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
