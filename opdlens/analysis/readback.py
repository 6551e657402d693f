"""Checks on the tables opdlens reads back from an earlier command's output (analyze, ablate).

A file on disk may have been edited, truncated or left by an interrupted run: before figures
or a report use it, its marker must say the command finished and its columns must hold what
the command wrote. Anything else is one InputFileError naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import InputFileError
from ..io.paths import MARKER, read_marker

__all__ = ["check_finished", "check_table"]

_TEXT = {"span", "tensor", "block", "kind", "part", "group", "by"}
_WHOLE = {"step", "layer", "expert", "rows", "cols", "numel", "k", "tensors"}
_NUMBER = re.compile(
    r"^(update_norm|base_norm|rel_update_norm|update_share|stable_rank|cos_to_final|"
    r"effective_rank|energy_k\d+|align_(left|right)_k\d+|gap_k\d+|score(_\w+)?|utility|energy_k|"
    r"changed_frac(_tol)?|changed(_tol)?_count)$"
)


def check_finished(directory: Path, command: str, what: str) -> None:
    """Refuse an output whose marker says `command` did not finish (complete: false).

    A directory without a marker (tables copied by hand) is read as it is.

    Raises:
        InputFileError: the marker names another command, or says the output is incomplete.
    """
    marker = read_marker(directory)
    if marker is None:
        return
    if marker.get("command") != command:
        raise InputFileError(
            f"{directory} holds the output of `opdlens {marker.get('command')}`, not of "
            f"`opdlens {command}`; pass the --out of {what}."
        )
    if marker.get("complete") is not True:
        raise InputFileError(
            f"{directory} was left unfinished by an interrupted `opdlens {command}` (its {MARKER} "
            f"marker says complete: false), so its files may mix two runs; run {what} into it "
            "again to finish it."
        )


def check_table(df: pd.DataFrame, path: Path, what: str, required: list[str]) -> pd.DataFrame:
    """Refuse a table with no rows, a missing column, or a column of the wrong kind.

    Raises:
        InputFileError: naming the file and the first column that is wrong.
    """
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputFileError(
            f"{path} has no column {missing[0]!r}, which the {what} always holds; pass the file "
            "that command wrote, or run it again."
        )
    if df.empty:
        raise InputFileError(f"{path} has no rows; the {what} always has some. Run it again.")
    for col in df.columns:
        series = df[col]
        if col in _WHOLE:
            ok = pd.api.types.is_integer_dtype(series) or series.isna().all()
            kind = "whole numbers"
        elif col in _TEXT:
            ok = series.map(lambda v: isinstance(v, str) or v is pd.NA or v is None).all()
            kind = "text"
        elif _NUMBER.match(str(col)):
            ok = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
            kind = "numbers"
        else:
            continue
        if not ok:
            raise InputFileError(
                f"{path}: column {col!r} holds {series.dtype} values, expected {kind}; this is "
                f"not the {what} as written. Run that command again."
            )
    return df
