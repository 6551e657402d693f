"""The three lenses as findings of one group against another: which changes fewer weights, whether
each group's seeds change overlapping weights more than chance, and which puts less of its update
into the base's principal directions (`analyze --base-geometry`, `compare` within each group)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..frames import check_frame, check_groups
from .findings import Claim, GroupFindings, claim_lines, group_findings
from .principal import principal_curves
from .stats import Interval, MeanSD, bootstrap_mean, mean_sd

__all__ = [
    "LENS_CLAIMS",
    "OverlapFinding",
    "lens_findings",
    "lens_lines",
    "lens_quantities",
    "overlap_findings",
    "overlap_line",
]

LENS_CLAIMS = (
    Claim("changed_frac", "share of weights changed at the final step (all elements)",
          "change{s} fewer weights", less=True),
    Claim("principal_energy", "share of ‖Δ_T‖² in the base's top-K left singular directions "
          "(‖Δ‖²-weighted)", "put{s} less of its update into the base's principal directions",
          less=True),
)  # fmt: skip


_HINT = "Pass opdlens compare_group's rows with run_group, run_a and run_b (the report's overlap)."


def lens_quantities(df: pd.DataFrame) -> dict[str, float]:
    """One run's numbers behind LENS_CLAIMS, from its metrics (cumulative rows of analyze).

    changed_frac: Σ changed_count / Σ numel over every row at the final step (NaN without
    counts); principal_energy: principal_curves' energy_left at the final step (largest K;
    NaN without --base-geometry's columns), principal_random: a random update's share there.
    """
    if "span" in df.columns:
        df = df[df["span"] == "cumulative"]
    final = df[df["step"] == df["step"].max()]
    numel = changed = 0.0
    if {"changed_count", "numel"} <= set(final.columns):
        counted = final[final["changed_count"].notna()]
        numel = float(counted["numel"].astype("float64").sum())
        changed = float(counted["changed_count"].astype("float64").sum())
    curve = principal_curves({"run": df})
    last = curve[curve["step"] == curve["step"].max()] if not curve.empty else curve
    return {
        "changed_frac": changed / numel if numel > 0 else np.nan,
        "principal_energy": float(last["energy_left"].iloc[0]) if not last.empty else np.nan,
        "principal_random": float(last["random_left"].iloc[0]) if not last.empty else np.nan,
        "principal_k": float(last["k"].iloc[0]) if not last.empty else np.nan,
    }


def lens_findings(
    frames: Mapping[str, pd.DataFrame], groups: Mapping[str, Sequence[str]], *, seed: int = 0
) -> GroupFindings:
    """LENS_CLAIMS' numbers per run, their mean ± sd per group and the bootstrap differences.

    A claim whose number some run lacks (no changed counts, or no --base-geometry columns) is
    left out of the findings' claims.
    """
    groups = check_groups(groups, list(frames))
    known = {run: lens_quantities(frames[run]) for m in groups.values() for run in m}
    claims = tuple(c for c in LENS_CLAIMS
                   if all(np.isfinite(q[c.quantity]) for q in known.values()))  # fmt: skip
    return group_findings(frames, groups, seed=seed, claims=claims, quantities=lens_quantities)


@dataclass(frozen=True)
class OverlapFinding:
    """One group's pairs of runs: overall overlap_ratio per pair, its mean's interval, verdict."""

    group: str
    runs: int
    ratios: pd.Series  # "A vs B" → overlap_ratio (Jaccard / chance) of the whole model
    jaccard: MeanSD | None
    chance: MeanSD | None
    interval: Interval | None  # bootstrap interval of the mean ratio over the pairs (≥ 2 pairs)

    @property
    def verdict(self) -> str:
        """'holds' (the interval is above 1), 'does not hold' (below 1) or 'inconclusive at n = …'."""
        i = self.interval
        if i is None or i.low == i.high or i.low <= 1 <= i.high:
            return f"inconclusive at n = {len(self.ratios)} pair(s) of {self.runs} run(s)"
        return "holds" if i.low > 1 else "does not hold"


def overlap_findings(
    overlap: pd.DataFrame | None, groups: Mapping[str, Sequence[str]], *, seed: int = 0
) -> list[OverlapFinding]:
    """Per group, the overall overlap_ratio of each pair of its runs (compare's rows with
    run_group, run_a, run_b, as the report's overlap holds them) and the mean's interval."""
    groups = check_groups(groups, [r for m in groups.values() for r in m])
    rows = pd.DataFrame(columns=["run_group", "run_a", "run_b", "overlap_ratio"])
    if overlap is not None and not overlap.empty:
        cols = [
            "scope",
            "run_group",
            "run_a",
            "run_b",
            "jaccard",
            "jaccard_chance",
            "overlap_ratio",
        ]
        overlap = check_frame(overlap, "overlap_findings", cols, arg="overlap", hint=_HINT)
        rows = overlap[overlap["scope"] == "overall"]
    out = []
    for name, members in groups.items():
        mine = rows[rows["run_group"].astype(str) == str(name)]
        ratios = pd.Series(
            mine["overlap_ratio"].astype("float64").to_numpy(),
            index=[f"{a} vs {b}" for a, b in zip(mine["run_a"], mine["run_b"], strict=True)],
            dtype="float64",
        )
        finite = ratios[np.isfinite(ratios)]
        jaccard, chance = (mean_sd(mine[c].astype("float64")) if len(mine) else None
                           for c in ("jaccard", "jaccard_chance"))  # fmt: skip
        interval = bootstrap_mean(finite, seed=seed) if len(finite) > 1 else None
        out.append(OverlapFinding(str(name), len(members), ratios, jaccard, chance, interval))
    return out


def overlap_line(f: OverlapFinding) -> str:
    """'OPD's seeds change overlapping weights more than chance: holds — …' with the numbers."""
    head = f"{f.group}'s seeds change overlapping weights more than chance: {f.verdict}"
    if f.ratios.empty:
        return f"{head} — one run: no pair to compare."
    mean = mean_sd(f.ratios.to_numpy())
    assert f.jaccard is not None and f.chance is not None
    ci = (
        f"95 % bootstrap CI of the mean {f.interval.format('.4f')}" if f.interval else "no interval"
    )
    return (
        f"{head} — overlap_ratio (Jaccard / chance) over {len(f.ratios)} pair(s): "
        f"{mean.format('.4f')}, {ci}; Jaccard {f.jaccard.format()} against chance "
        f"{f.chance.format()}."
    )


def lens_lines(findings: GroupFindings, overlap: Sequence[OverlapFinding] = ()) -> list[str]:
    """The lenses' sentences, those the findings hold: fewer weights changed, each group's
    overlap against chance, less of the update in the base's principal directions (with a
    random update's share beside it)."""
    if len(findings.groups) < 2:
        return []  # nothing to compare a group against
    lines = dict(zip((c.quantity for c in findings.claims), claim_lines(findings), strict=True))
    out = [lines["changed_frac"]] if "changed_frac" in lines else []
    out += [overlap_line(f) for f in overlap]
    if "principal_energy" in lines:
        per_run = findings.per_run
        k = int(per_run["principal_k"].min())
        randoms = ", ".join(
            f"{g} {mean_sd(per_run.loc[m, 'principal_random'].to_numpy(float)).format()}"
            for g, m in findings.groups.items()
        )
        out.append(
            lines["principal_energy"].replace("top-K", f"top-{k}")
            + f" A random update would put K/rows there: {randoms}."
        )
    return out
