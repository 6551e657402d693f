"""The side inputs of figures and reports that opdlens computes or reads: foresight, ablations."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import InputFileError, InputNotFoundError
from ..extrapolation.ablate import Ablation
from ..io.paths import read_marker
from .readback import check_finished, check_table
from .results import _read_table

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["FORESIGHT_MIN_STEPS", "compute_foresight", "load_ablation"]

FORESIGHT_MIN_STEPS = 2  # saved steps after the base: a step t and a later s to predict


def load_ablation(path: str | Path) -> Ablation:
    """The tables an `opdlens ablate --out DIR` wrote (ablation, and rank_curve when ranked)."""
    d = Path(path)
    if not d.is_dir():
        raise InputNotFoundError(
            f"--ablation {d} is not a directory: expected the --out of `opdlens ablate` "
            "(ablation.parquet, provenance.json)."
        )
    marker = read_marker(d) or {}
    if marker.get("command") != "ablate" or not (d / "ablation.parquet").is_file():
        what = (
            f"the output of `opdlens {marker.get('command')}`"
            if marker.get("command") not in (None, "ablate")
            else "no ablation.parquet"
            if marker.get("command") == "ablate"
            else "no opdlens ablate output"
        )
        raise InputFileError(
            f"--ablation {d} holds {what}: expected the finished --out of `opdlens ablate` "
            "(ablation.parquet); run `opdlens ablate RUN --step T --scorer … --out DIR` (again, "
            "to finish it) and pass that DIR."
        )
    check_finished(d, "ablate", "`opdlens ablate RUN --step T --scorer … --out DIR`")
    what = "ablation table of `opdlens ablate`"
    table = check_table(_read_table(d / "ablation.parquet", what), d / "ablation.parquet", what,
                        ["group", "update_share", "score_drop", "score_only", "utility", "step"])  # fmt: skip
    curve_file = d / "rank_curve.parquet"
    what = "rank curve of `opdlens ablate`"
    curve = (
        check_table(_read_table(curve_file, what), curve_file, what, ["k", "score", "energy_k"])
        if curve_file.is_file()
        else pd.DataFrame(columns=["k", "score", "energy_k", "step"])
    )
    return Ablation(table, curve)


def compute_foresight(
    runs: Mapping[str, Run | None], *, workers: int | None = None, progress: bool = False
) -> tuple[pd.DataFrame | None, list[str]]:
    """opdlens.foresee on each open run (label → Run or None), with a `run` column; skip notes."""
    from .foresight import foresee

    frames, notes = [], []
    for label, run in runs.items():
        if run is None:
            notes.append(
                f"foresight of {label} skipped: it was given as a metrics directory; foresee "
                "reads the checkpoints (pass the run directory)."
            )
            continue
        steps = run.steps
        if len(steps) < FORESIGHT_MIN_STEPS:
            notes.append(
                f"foresight of {label} skipped: it has {len(steps)} saved step(s) after the "
                f"base, foresee needs {FORESIGHT_MIN_STEPS} (a step and a later one to predict)."
            )
            continue
        if progress:
            print(
                f"foresight of {label}: computed from its checkpoints (one pass of reads and dot "
                "products, no SVD)",
                file=sys.stderr,
            )
        df = foresee(run, workers=workers, scopes=("block", "overall"), progress=progress)
        frames.append(df.assign(run=label))
    if not frames:
        return None, notes
    return pd.concat(frames, ignore_index=True), notes
