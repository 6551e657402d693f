"""The side inputs of figures and reports that opdlens computes or reads: foresight, ablations."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..analysis.findings import online_sentence
from ..analysis.readback import check_finished, check_table
from ..analysis.results import read_json, read_table
from ..errors import CheckpointError, InputFileError, InputNotFoundError
from ..extrapolation.ablate import Ablation
from ..extrapolation.callback import CANDIDATE_COLUMNS, candidate_rows
from ..frames import ks_of
from ..io.paths import read_marker

if TYPE_CHECKING:
    from ..analysis.options import AnalyzeOptions
    from ..run import Run

__all__ = [
    "CANDIDATES_FILE",
    "FORESIGHT_MIN_STEPS",
    "OnlineEffOPD",
    "compute_foresight",
    "find_online_effopd",
    "load_ablation",
    "load_online_effopd",
]

FORESIGHT_MIN_STEPS = 2  # saved steps after the base: a step t and a later s to predict
CANDIDATES_FILE = "effopd_candidates.csv"  # EffOPDCallback's default, in the Trainer's output_dir
_COMPARISON = ("target_accuracy", "plain_steps_to_target", "effopd_steps_to_target",
               "plain_final_accuracy", "effopd_final_accuracy")  # fmt: skip


@dataclass
class OnlineEffOPD:
    """What online EffOPD did in one training run: every candidate it tried, and (the demo's
    online_effopd.json) the steps plain OPD and OPD + EffOPD took to reach a target score."""

    label: str
    source: Path
    candidates: pd.DataFrame  # CANDIDATE_COLUMNS, one row per candidate
    comparison: dict[str, Any] = field(default_factory=dict)  # online_sentence's keys, or {}


def load_online_effopd(path: str | Path, label: str) -> OnlineEffOPD:
    """An EffOPDCallback's effopd_candidates.csv, or the demo's online_effopd.json.

    Raises:
        InputNotFoundError: no such file. InputFileError: not one of those two files.
    """
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(
            f"{p} is not a file: expected an {CANDIDATES_FILE} (EffOPDCallback) or the demo's "
            "online_effopd.json."
        )
    if p.suffix == ".json":
        data = read_json(p, "online EffOPD comparison of `opdlens demo`")
        missing = [k for k in (*_COMPARISON, "history") if k not in data]
        if missing:
            raise InputFileError(
                f"{p} is not the demo's online_effopd.json: it lacks {missing}. Pass the file "
                "`opdlens demo` wrote (runs/online_effopd.json)."
            )
        rows = [r for rec in data["history"] if rec.get("extrapolated")
                for r in candidate_rows(rec)]  # fmt: skip
        comparison = {k: data[k] for k in _COMPARISON}
        plain = data.get("curves", {}).get("plain") or []
        if plain and int(plain[0][0]) == 0:
            comparison["start_accuracy"] = float(plain[0][1])
        table = pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
        return OnlineEffOPD(label, p, table, comparison)
    table = read_table(p, "EffOPDCallback's candidates CSV")
    if list(table.columns) != list(CANDIDATE_COLUMNS):
        raise InputFileError(
            f"{p} is not a candidates CSV of EffOPDCallback: its columns are "
            f"{list(table.columns)}, expected {list(CANDIDATE_COLUMNS)}."
        )
    return OnlineEffOPD(label, p, table)


def find_online_effopd(runs: Sequence[tuple[str, Path]]) -> list[OnlineEffOPD]:
    """The effopd_candidates.csv EffOPDCallback left in each run directory (label, directory)."""
    return [
        load_online_effopd(d / CANDIDATES_FILE, label)
        for label, d in runs
        if (d / CANDIDATES_FILE).is_file()
    ]


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
    table = check_table(read_table(d / "ablation.parquet", what), d / "ablation.parquet", what,
                        ["group", "update_share", "score_drop", "score_only", "utility", "step"])  # fmt: skip
    # The scorer's name from provenance.json: pandas before 2.1 keeps no attrs in Parquet.
    prov = d / "provenance.json"
    if prov.is_file():
        recorded = read_json(prov, "provenance.json of `opdlens ablate`")
        table.attrs.update({k: recorded[k] for k in ("scorer", "oracle") if k in recorded})
    curve_file = d / "rank_curve.parquet"
    what = "rank curve of `opdlens ablate`"
    curve = (
        check_table(read_table(curve_file, what), curve_file, what, ["k", "score", "energy_k"])
        if curve_file.is_file()
        else pd.DataFrame(columns=["k", "score", "energy_k", "step"])
    )
    return Ablation(table, curve)


def compute_foresight(
    runs: Mapping[str, Run | None], *, workers: int | None = None, progress: bool = False
) -> tuple[pd.DataFrame | None, list[str]]:
    """opdlens.foresee on each open run (label → Run or None), with a `run` column; skip notes."""
    from ..analysis.foresight import foresee

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


def overlap_pairs(
    labels: Sequence[str], groups: Mapping[str, Sequence[str]] | None
) -> list[tuple[str, str, str]]:
    """(group, run A, run B) to compare: each group's runs pairwise, else the first run against
    each other run (group '')."""
    if groups is None:
        return [("", labels[0], other) for other in labels[1:]]
    return [(str(g), str(a), str(b)) for g, members in groups.items()
            for a, b in itertools.combinations(members, 2)]  # fmt: skip


def compute_overlap(
    runs: Mapping[str, Run | None],
    pairs: Sequence[tuple[str, str, str]],
    analyze: AnalyzeOptions | None,
    *,
    progress: bool = False,
) -> tuple[pd.DataFrame | None, list[str]]:
    """opdlens compare of each (group, A, B) pair whose runs are both run directories, stacked
    with run_group, run_a and run_b columns; a note for each pair skipped (a metrics directory,
    different bases) and each warning."""
    from ..analysis.compare import CompareOptions, compute_pair
    from ..analysis.options import AnalyzeOptions

    a_opts = analyze or AnalyzeOptions()
    options = CompareOptions(
        ranks=a_opts.ranks, workers=a_opts.workers, device=a_opts.device,
        sparsity_dtype=a_opts.sparsity_dtype,
    )  # fmt: skip
    frames, notes = [], []
    for group, a, b in pairs:
        run_a, run_b = runs[a], runs[b]
        if run_a is None or run_b is None:
            notes.append(f"overlap {a} vs {b} skipped: it needs both run directories, not metrics.")
            continue
        try:
            got = compute_pair(run_a, run_b, options, progress=progress)
        except CheckpointError as e:
            notes.append(f"overlap {a} vs {b} skipped: {e}")
            continue
        frames.append(got.frame.assign(run_group=group, run_a=a, run_b=b))
        notes += [f"overlap {a} vs {b}: {w}" for w in got.warnings]
    if not frames:
        return None, [*notes, "figure overlap skipped: no pair of run directories to compare."]
    return pd.concat(frames, ignore_index=True), notes


def overlap_lines(overlap: pd.DataFrame | None) -> list[tuple[str, str]]:
    """("A vs B", compare's summary line) for each pair compared."""
    if overlap is None or overlap.empty:
        return []
    from ..analysis.compare_write import summary_line, summary_rank

    ks = ks_of(overlap, "subspace_left", "overlap_lines")
    overall = overlap[overlap["scope"] == "overall"]
    return [(f"{r['run_a']} vs {r['run_b']}", summary_line(r, summary_rank(ks)))
            for _, r in overall.iterrows()]  # fmt: skip


def online_lines(online: Sequence[OnlineEffOPD]) -> list[str]:
    """One sentence per run trained with online EffOPD: the speed-up, or its candidates."""
    out = []
    for o in online:
        c = o.candidates
        accepted = int(c["accepted"].astype(bool).sum()) if not c.empty else 0
        tried = (
            f"{len(c)} candidate(s) tried at steps {', '.join(map(str, pd.unique(c['step'])))}, "
            f"{accepted} accepted"
            if not c.empty
            else "no candidate tried"
        )
        if o.comparison:
            out.append(f"{o.label}: {online_sentence(o.comparison)} EffOPD: {tried}.")
        else:
            out.append(f"{o.label}: online EffOPD (EffOPDCallback): {tried}.")
    return out
