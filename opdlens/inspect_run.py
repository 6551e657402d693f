"""Describe a run's checkpoints (what `opdlens scan` prints) as records, a DataFrame and JSON."""

from __future__ import annotations

from typing import Any

import pandas as pd

from .run import Checkpoint, Run


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
    }


def describe_frame(run: Run) -> pd.DataFrame:
    """One row per checkpoint (base first) with step, path, layout, tensors, params, dtype, bytes."""
    d = describe(run)
    df = pd.DataFrame([d["base"], *d["checkpoints"]])
    return df.astype(
        {"step": "int64", "num_tensors": "int64", "num_params": "int64", "bytes": "int64"}
    )
