"""The value a figure set or report draws (`Sources`), and the options that say what to read and
how to draw it. Built by `opdlens.report.load`; viz takes it as a value and only draws."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from ..analysis.findings import GroupFindings
    from ..analysis.lenses import OverlapFinding
    from ..analysis.options import AnalyzeOptions
    from ..analysis.results import RunMetrics
    from ..extrapolation.ablate import Ablation
    from .side_inputs import OnlineEffOPD

__all__ = ["ReportOptions", "Score", "SourceOptions", "Sources"]


@dataclass(frozen=True)
class SourceOptions:
    """What a figure set or report reads: the runs, their side inputs, how a run is analysed.

    paths: run directories or `opdlens analyze` outputs; labels one per path (default: the
    directory names); groups NAME → its runs' labels (each group's first run is the one shown
    where one run stands for its group). checkpoints (step → directory) apply to the first path.
    metrics: one training log per path (default: found beside the checkpoints). ablation: label
    → the --out of `opdlens ablate` or its result. foresight: True computes `opdlens foresee` on
    the shown runs; a DataFrame is taken as its rows (with a `run` column). online: the online
    EffOPD results (default: the effopd_candidates.csv found in each run directory). overlap:
    True compares the runs' updates (`opdlens compare`): each group's runs pairwise, else the
    first run against each other run directory.
    """

    paths: tuple[Path, ...]
    labels: tuple[str, ...] | None = None
    groups: Mapping[str, list[str]] | None = None
    base: Path | None = None
    checkpoints: Mapping[int, Path] | None = None
    trust_pickle: bool = False
    replay: Path | None = None
    errors: tuple[Path, ...] = ()
    metrics: tuple[Path, ...] = ()
    ablation: Mapping[str, Path | Ablation] = field(default_factory=dict)
    foresight: bool | pd.DataFrame = False
    online: tuple[OnlineEffOPD, ...] | None = None
    analyze: AnalyzeOptions | None = None
    spectra: int = 6
    overlap: bool = False

    def __post_init__(self) -> None:
        # Paths may come as str or os.PathLike, one or many, as users write them.
        def many(value: Any) -> tuple[Path, ...]:
            if isinstance(value, (str, os.PathLike)):
                return (Path(value),)
            return tuple(Path(v) for v in value)

        def one(value: Any) -> Path | None:
            return None if value is None else Path(value)

        fixed: dict[str, Any] = {
            "paths": many(self.paths),
            "labels": None if self.labels is None else tuple(self.labels),
            "base": one(self.base),
            "replay": one(self.replay),
            "errors": many(self.errors),
            "metrics": many(self.metrics),
        }
        if isinstance(self.ablation, Mapping):  # anything else is refused by the loader
            fixed["ablation"] = {k: Path(v) if isinstance(v, (str, os.PathLike)) else v
                                 for k, v in self.ablation.items()}  # fmt: skip
        if isinstance(self.checkpoints, Mapping):
            fixed["checkpoints"] = {
                int(k) if isinstance(k, str) and k.isdecimal() else k: Path(v)
                if isinstance(v, (str, os.PathLike))
                else v
                for k, v in self.checkpoints.items()
            }  # anything else is refused by the loader
        for name, value in fixed.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class ReportOptions:
    """How figures and the report are drawn: the band of group means, page title, table rows,
    and the options recorded in the report's provenance."""

    band: str = "sd"
    title: str | None = None
    top: int = 20
    record: Mapping[str, Any] = field(default_factory=dict)
    refresh: int | None = None  # seconds: the page reloads itself (a live `opdlens watch`)


@dataclass(frozen=True)
class Score:
    """A run's logged score from step 0 (or the first saved step it was logged by) to its last
    saved step; change is 'raised', 'lowered' or 'left about unchanged' for an accuracy."""

    kind: str
    column: str
    first: int
    last: int
    before: float
    after: float
    change: str | None = None


@dataclass(frozen=True)
class Sources:
    """Everything a figure set or report draws, for one or more runs, computed before drawing.

    shown: the runs drawn one by one (each group's first run with groups, else every run);
    foresight holds the shown runs' rows only. findings, claims, scores, foresight_lines,
    effopd, online_lines, ablation_lines, overlap_lines, the sparsity_*, principal*, lens_* and
    overlap_findings fields are what the report states and draws, computed by the loader.
    """

    runs: tuple[RunMetrics, ...]
    groups: Mapping[str, list[str]] | None = None
    spectra: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    errors: pd.DataFrame | None = None
    training: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    foresight: pd.DataFrame | None = None
    ablation: Mapping[str, Ablation] | None = None
    online: tuple[OnlineEffOPD, ...] = ()
    notes: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()
    findings: GroupFindings | None = None
    claims: tuple[str, ...] = ()
    scores: Mapping[str, Score] = field(default_factory=dict)
    foresight_lines: Mapping[str, str] = field(default_factory=dict)
    effopd: pd.DataFrame | None = None
    online_lines: tuple[str, ...] = ()
    ablation_lines: tuple[tuple[str, str], ...] = ()  # (label, ablation_sentence) per ablation
    overlap: pd.DataFrame | None = None  # opdlens compare's rows, with run_group, run_a, run_b
    overlap_lines: tuple[tuple[str, str], ...] = ()  # ("A vs B", summary line) per pair
    sparsity_line: str = ""  # subnetwork.changed_sentence of the runs (or groups)
    sparsity_shares: pd.DataFrame | None = None  # subnetwork.final_changed
    sparsity_cells: pd.DataFrame | None = None  # subnetwork.changed_cells
    principal: pd.DataFrame | None = None  # principal.principal_curves (--base-geometry)
    principal_line: str = ""  # principal.principal_sentence
    lens_findings: GroupFindings | None = None  # lenses.lens_findings of the groups
    overlap_findings: tuple[OverlapFinding, ...] = ()  # lenses.overlap_findings (with overlap)
    lens_claims: tuple[str, ...] = ()  # lenses.lens_lines: the lenses' verdicts

    @property
    def labels(self) -> list[str]:
        """The runs' labels, in order."""
        return [rm.label for rm in self.runs]

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
        from ..analysis.results import top_tensors

        return top_tensors(self.frame, n)
