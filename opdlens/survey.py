"""Describe a run's checkpoints (what `opdlens scan` prints) as records, a DataFrame and JSON."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import PartialRunError
from .run import Checkpoint, Run, open_run

_HINTS = {
    "base (step 0)": "pass --base PATH pointing at the model the run started from",
    "checkpoints after the base": (
        "the run saved none yet, or saved them in a layout not found automatically: pass "
        "--checkpoint STEP=PATH"
    ),
}


def _row(ck: Checkpoint) -> dict[str, Any]:
    return {
        "step": ck.step,
        "path": str(ck.path),
        "layout": ck.layout,
        "num_tensors": len(ck.names()),
        "num_params": ck.num_params,
        "dtype": ck.dtype,
        "bytes": ck.bytes_on_disk,
    }


def describe(run: Run) -> dict[str, Any]:
    """The run as a JSON-ready dict: base, checkpoints sorted by step, missing tensors, warnings."""
    base = _row(run.base)
    base["step"] = 0
    return {
        "base": base,
        "checkpoints": [_row(ck) for ck in run.checkpoints.values()],
        "num_common_tensors": len(run.tensor_names),
        "missing_tensors": {name: steps for name, steps in run.missing.items()},
        "warnings": list(run.warnings),
        "missing": None,
    }


def _describe_partial(e: PartialRunError) -> dict[str, Any]:
    base = _row(e.found[0]) if 0 in e.found else None
    if base is not None:
        base["step"] = 0
    later = [ck for step, ck in sorted(e.found.items()) if step != 0]
    names = [set(ck.names()) for ck in e.found.values()]
    return {
        "base": base,
        "checkpoints": [_row(ck) for ck in later],
        "num_common_tensors": len(set.intersection(*names)) if names else 0,
        "missing_tensors": {},
        "warnings": list(e.warnings),
        "missing": f"{e.missing} — {_HINTS[e.missing]}",
    }


def survey(
    path: str | Path | None,
    base: str | Path | None = None,
    *,
    checkpoints: Mapping[int, str | Path] | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """describe() of a run, or of what was found when it lacks a base or any later checkpoint.

    Checkpoints still being written are skipped with a warning. "missing" says what the run
    lacks to be analysed (None when nothing) and how to supply it.
    """
    try:
        run = open_run(path, base, checkpoints=checkpoints, trust_pickle=trust_pickle,
                       skip_incomplete=True)  # fmt: skip
    except PartialRunError as e:
        return _describe_partial(e)
    return describe(run)


def describe_frame(run: Run | Mapping[str, Any]) -> pd.DataFrame:
    """One row per checkpoint (base first) with step, path, layout, tensors, params, dtype, bytes."""
    d = describe(run) if isinstance(run, Run) else run
    rows = [d["base"]] if d["base"] is not None else []
    df = pd.DataFrame([*rows, *d["checkpoints"]])
    return df.astype(
        {"step": "int64", "num_tensors": "int64", "num_params": "int64", "bytes": "int64"}
    )
