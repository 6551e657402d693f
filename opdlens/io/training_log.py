"""Read the training curves a run logged beside its checkpoints, as one tidy table keyed by step.

Sources, first found wins:
1. a file the user names (`--metrics FILE`; Python: `metrics=`): trainer_state.json, JSONL or CSV;
2. `trainer_state.json` of the Hugging Face Trainer / TRL (`log_history`), from the checkpoint
   with the highest step, or the run directory's own when it is newer;
3. one JSONL or CSV metric log in the run directory (verl's file logger writes
   `{"step": N, "data": {...}}` lines; OpenRLHF and the demo keep flat rows, e.g. `metrics.csv`).

Files are treated as hostile: a file that is not what its name says is a one-line
TrainingLogError naming it; rows without a usable step and values that are not finite numbers (or beyond ±1e100,
which no axis can span) are left out, with a warning in `attrs["warnings"]`.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import NoTrainingLogError, TrainingLogError

__all__ = [
    "NoTrainingLogError",
    "TrainingLogError",
    "choose_metric",
    "find_training_log",
    "log_at_steps",
    "metric_kind",
    "read_training_log",
    "run_training_log",
]

TRAINER_STATE = "trainer_state.json"
STEP_KEYS = ("step", "global_step", "train/global_step", "_step", "iteration")
_MAX_BYTES = 512 * 2**20  # a metric log is far smaller; refuse before reading a wrong file
_MAX_DEPTH = 4


def _flatten(record: Mapping[str, Any], prefix: str = "", depth: int = 0) -> Iterator[tuple]:
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth < _MAX_DEPTH:
            # verl's file logger nests the metrics under "data".
            yield from _flatten(
                value, "" if (key == "data" and not prefix) else f"{name}/", depth + 1
            )
        else:
            yield name, value


def _number(value: Any) -> float | None:
    """A finite float from a JSON value or a CSV cell, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) else None


# Larger logged values are left out: a figure's axis arithmetic (span, ticks) overflows float64.
MAX_DRAWN = 1e100


def _step(value: Any) -> int | None:
    x = _number(value)
    return int(x) if x is not None and 0 <= x < 2**62 and x == int(x) else None


def _frame(records: Iterable[Mapping[str, Any]], path: Path, kind: str) -> pd.DataFrame:
    """Wide table (step, one float column per metric), several records of one step merged."""
    rows: list[dict[str, float]] = []
    no_step = dropped = stepped = huge = 0
    example = huge_example = ""
    for record in records:
        flat = dict(_flatten(record))
        key = next((k for k in STEP_KEYS if k in flat), None)
        step = _step(flat.get(key)) if key is not None else None
        if step is None:
            no_step += 1
            continue
        row: dict[str, float] = {"step": step}
        for name, value in flat.items():
            if name in STEP_KEYS:
                continue
            x = _number(value)
            if x is None:
                dropped += 1
                example = example or f"{name!r} = {str(value)[:40]!r} at step {step}"
            elif abs(x) > MAX_DRAWN:
                huge += 1
                huge_example = huge_example or f"{name!r} = {x:g} at step {step}"
            else:
                row[name] = x
        stepped += 1
        if len(row) > 1:
            rows.append(row)
    warnings = []
    if no_step:
        warnings.append(
            f"{path}: {no_step} record(s) without a whole-number step ({', '.join(STEP_KEYS)}) "
            "left out."
        )
    if dropped:
        warnings.append(
            f"{path}: {dropped} value(s) that are not finite numbers left out, e.g. {example}."
        )
    if huge:
        warnings.append(
            f"{path}: {huge} value(s) beyond ±{MAX_DRAWN:g}, too large for a figure's axis, left "
            f"out, e.g. {huge_example}."
        )
    if stepped and not rows:
        raise TrainingLogError(
            f"{path}: its records have steps but no numeric metric (loss, accuracy, …) to draw."
        )
    if not rows:
        raise TrainingLogError(
            f"{path}: no record with a whole-number step ({', '.join(STEP_KEYS)}) and a metric; "
            "expected a trainer_state.json, or JSONL / CSV rows such as {'step': 10, 'loss': 0.5}."
        )
    df = pd.DataFrame(rows).groupby("step", sort=True).last().reset_index()
    df = df.astype({"step": "int64"}).dropna(axis=1, how="all")
    df.attrs.update({"source": str(path), "format": kind, "warnings": warnings})
    return df


def _text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > _MAX_BYTES:
            raise TrainingLogError(
                f"{path}: {size} bytes is more than a metric log holds ({_MAX_BYTES} at most); "
                "pass the training log itself with --metrics FILE."
            )
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TrainingLogError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except OSError as e:
        raise TrainingLogError(f"{path}: cannot be read ({e.strerror or e}).") from None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TrainingLogError(
            f"{where}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})."
        ) from None
    except RecursionError:
        raise TrainingLogError(f"{where}: JSON nested too deeply to be a training log.") from None


def _read_json(path: Path) -> pd.DataFrame:
    data = _json(_text(path), str(path))
    if isinstance(data, Mapping) and "log_history" in data:
        history = data["log_history"]
        if not isinstance(history, list):
            raise TrainingLogError(
                f"{path}: 'log_history' must be a list of records; got {type(history).__name__}."
            )
        return _frame([r for r in history if isinstance(r, Mapping)], path, "trainer_state")
    if isinstance(data, list):
        return _frame([r for r in data if isinstance(r, Mapping)], path, "json")
    raise TrainingLogError(
        f"{path}: expected a trainer_state.json (an object with 'log_history') or a list of "
        f"records; got a JSON {type(data).__name__} without 'log_history'."
    )


def _read_jsonl(path: Path) -> pd.DataFrame:
    text = _text(path)
    lines = text.splitlines()
    records = []
    warnings = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if i == len(lines) and not text.endswith("\n"):
                warnings.append(
                    f"{path}: its last line is cut short (still being written?); left out."
                )
                continue
            raise TrainingLogError(
                f"{path}: line {i} is not a JSON object; every line must be one."
            ) from None
        if not isinstance(record, Mapping):
            raise TrainingLogError(
                f"{path}: line {i} is a JSON {type(record).__name__}; every line must be an object."
            )
        records.append(record)
    df = _frame(records, path, "jsonl")
    df.attrs["warnings"] = warnings + df.attrs["warnings"]
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    reader = csv.reader(_text(path).splitlines())
    header = next(reader, None)
    if not header or not any(h.strip() in STEP_KEYS for h in header):
        raise TrainingLogError(
            f"{path}: the CSV header must name a step column ({', '.join(STEP_KEYS)}); got "
            f"{header[:8] if header else 'an empty file'}."
        )
    names = [h.strip() for h in header]
    records = []
    short = 0
    for row in reader:
        if len(row) != len(names):
            short += 1
            continue
        records.append({n: v for n, v in zip(names, row, strict=True) if v.strip()})
    df = _frame(records, path, "csv")
    if short:
        df.attrs["warnings"].insert(
            0, f"{path}: {short} row(s) with a different number of cells than the header left out."
        )
    return df


def read_training_log(path: str | Path) -> pd.DataFrame:
    """One metric log as a table: `step` (int) and one float column per logged metric.

    The format follows the name: `*.json` (trainer_state.json, or a list of records), `*.jsonl`,
    `*.csv`. `attrs` holds "source", "format" and "warnings".

    Raises:
        TrainingLogError: a missing or unreadable file, or one without step-keyed records.
    """
    p = Path(path)
    if not p.is_file():
        raise TrainingLogError(
            f"{p}: no such file; --metrics takes a trainer_state.json, a JSONL or a CSV metric log."
        )
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise TrainingLogError(
            f"{p}: unknown metric log format '{p.suffix}'; expected .json (trainer_state.json), "
            ".jsonl or .csv."
        )
    return reader(p)


def _global_step(state_file: Path) -> int:
    """global_step of a trainer_state.json (-1 when it has none)."""
    data = _json(_text(state_file), str(state_file))
    step = _step(data.get("global_step")) if isinstance(data, Mapping) else None
    return -1 if step is None else step


def find_training_log(
    run_dir: str | Path | None, checkpoint_dirs: Mapping[int, str | Path]
) -> tuple[Path, list[str]]:
    """The training log beside a run's checkpoints (see the module docstring) and any notes.

    Raises:
        NoTrainingLogError: none found.
    """
    notes: list[str] = []
    states = sorted(
        ((step, Path(d) / TRAINER_STATE) for step, d in checkpoint_dirs.items()
         if (Path(d) / TRAINER_STATE).is_file()),
        reverse=True,
    )  # fmt: skip
    root = Path(run_dir) if run_dir is not None else None
    own = root / TRAINER_STATE if root is not None else None
    if own is not None and own.is_file() and (not states or _global_step(own) >= states[0][0]):
        return own, notes
    if states:
        return states[0][1], notes
    if root is not None and root.is_dir():
        logs = sorted(p for p in root.iterdir() if p.suffix in (".jsonl", ".csv") and p.is_file())
        if len(logs) > 1:
            named = [p for p in logs if re.search(r"metric|log|progress", p.name, re.IGNORECASE)]
            if len(named) != 1:
                raise NoTrainingLogError(
                    f"{root}: several metric logs ({', '.join(p.name for p in logs[:6])}) and no "
                    "trainer_state.json; name the one to draw with --metrics FILE."
                )
            notes.append(f"{root}: used {named[0].name} among {', '.join(p.name for p in logs)}.")
            logs = named
        if logs:
            return logs[0], notes
    where = root if root is not None else "the checkpoints"
    raise NoTrainingLogError(
        f"{where}: no training log (trainer_state.json in a checkpoint, or a .jsonl / .csv metric "
        "log in the run directory); pass one with --metrics FILE."
    )


def run_training_log(
    run_dir: str | Path | None,
    checkpoint_dirs: Mapping[int, str | Path],
    metrics: str | Path | None = None,
) -> pd.DataFrame:
    """read_training_log of `metrics`, or of the log found beside the checkpoints."""
    if metrics is not None:
        return read_training_log(metrics)
    path, notes = find_training_log(run_dir, checkpoint_dirs)
    df = read_training_log(path)
    df.attrs["warnings"] = notes + df.attrs["warnings"]
    return df


# The curve drawn above the weight metrics: accuracy, else evaluation loss, else training loss.
_CHOICES: tuple[tuple[str, str], ...] = (
    ("accuracy", r"^(eval_|val_|test_|eval/|val/|test/)?acc(uracy)?$"),
    ("accuracy", r"acc(uracy)?([/_@]|$)"),
    ("accuracy", r"^val[-_/].*(score|reward)"),  # verl: val-core/<data>/reward/mean@1
    ("eval loss", r"^(eval|val|test)[_/-]?loss$"),
    ("eval loss", r"^(eval|val|test).*loss$"),
    ("train loss", r"^(train[_/])?loss$"),
    ("train loss", r"loss$"),
)


def metric_kind(column: str) -> str:
    """accuracy, eval loss or train loss for a column choose_metric would pick, else "metric"."""
    hit = next((k for k, pattern in _CHOICES if re.search(pattern, column, re.IGNORECASE)), None)
    return hit or "metric"


def choose_metric(log: pd.DataFrame) -> tuple[str, str] | None:
    """(column, kind) of the metric to draw, kind one of accuracy / eval loss / train loss.

    Among columns of the same rank, the one logged at the most steps (HF's one-off `train_loss`
    summary loses to the `loss` curve).
    """
    names = [str(c) for c in log.columns if str(c) != "step"]
    for kind, pattern in _CHOICES:
        hits = [n for n in names if re.search(pattern, n, re.IGNORECASE)]
        if hits:
            return max(hits, key=lambda n: int(log[n].notna().sum())), kind
    return None


def log_at_steps(log: pd.DataFrame, steps: Iterable[int]) -> pd.DataFrame:
    """Each metric's last logged value at or before each step (one row per step).

    Trainers log every few steps and save every few hundred, so an exact join would be mostly
    empty; a value logged after a step never stands in for it.
    """
    out = pd.DataFrame({"step": sorted({int(s) for s in steps})}).astype({"step": "int64"})
    for column in log.columns.drop("step"):
        values = log[["step", column]].dropna().sort_values("step")
        out = pd.merge_asof(out, values, on="step", direction="backward")
    return out
