"""The paper's claims as one number per run, their comparison across groups, and the wording.

The wording thresholds (docs/design.md, "Wording thresholds") live here and nowhere else: every
sentence the report, the demo and the CLI print that calls an effect negligible, or says which
way a score moved, decides it with these.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import NothingToDrawError, OptionError
from ..frames import check_frame, check_groups, values_of, weighted_mean
from .stats import Difference, MeanSD, bootstrap_difference, mean_sd

__all__ = [
    "CLAIMS",
    "NEGLIGIBLE_GAIN",
    "NEGLIGIBLE_SCORE",
    "Claim",
    "GroupFindings",
    "claim_lines",
    "closer_word",
    "group_findings",
    "online_sentence",
    "run_quantities",
    "score_change",
    "score_tolerance",
    "update_effect",
    "verdict",
]

# rel_error(α*) above 1 − NEGLIGIBLE_GAIN: the best extrapolation is "barely (< 1 %) closer".
NEGLIGIBLE_GAIN = 0.01
# A score change below NEGLIGIBLE_SCORE × the larger |score| compared is negligible.
NEGLIGIBLE_SCORE = 0.01


@dataclass(frozen=True)
class Claim:
    """A claim: the first group's `quantity` is larger than the second's (smaller with `less`)."""

    quantity: str
    label: str  # what the number is
    text: str  # the claim, '{s}' where the verb takes its 's'
    less: bool = False  # the claim is that the first group's quantity is the smaller


CLAIMS = (
    Claim("energy_k1", "energy_k1 of the final update (‖Δ‖_F²-weighted)",
          "concentrate{s} its final update more in its top singular direction"),
    Claim("mlp_share", "update share of the MLPs at the final step",
          "put{s} a larger share of its update norm into the MLPs"),
    Claim("align_first", "top-1 alignment with the final update at the first saved step",
          "settle{s} on its final update direction earlier"),
)  # fmt: skip


def _smallest_k(df: pd.DataFrame, prefix: str) -> int:
    ks = sorted(int(m.group(1)) for c in df.columns if (m := re.match(rf"^{prefix}_k(\d+)$", c)))
    if not ks:
        raise OptionError(
            f"The metrics have no {prefix}_k{{K}} column; analyse the run with ranks, e.g. 1,4,16."
        )
    return ks[0]


def run_quantities(df: pd.DataFrame) -> dict[str, float]:
    """One run's numbers behind CLAIMS, from its metrics (cumulative rows of opdlens.analyze).

    energy_k1: energy in the top-K directions of Δ_T (smallest K analysed) over the matrices,
    ‖Δ_T‖_F²-weighted; mlp_share: Σ update_share of the mlp block at the final step;
    align_first: mean of left and right top-K alignment with Δ_T at the first saved step ≥ 1,
    ‖Δ_t‖_F²-weighted.
    """
    if "span" in df.columns:
        df = df[df["span"] == "cumulative"]
    k = _smallest_k(df, "energy")
    final = df[df["step"] == df["step"].max()]
    w_final = final["update_norm"].astype(float) ** 2
    later = df.loc[df["step"] >= 1, "step"]
    first = df[df["step"] == (later.min() if not later.empty else df["step"].max())]
    w_first = first["update_norm"].astype(float) ** 2
    align = [
        weighted_mean(first[f"align_{s}_k{k}"].astype(float), w_first) for s in ("left", "right")
    ]
    return {
        "energy_k1": weighted_mean(final[f"energy_k{k}"].astype(float), w_final),
        "mlp_share": float(final.loc[final["block"] == "mlp", "update_share"].sum()),
        "align_first": float(np.mean(align)),
        "first_step": float(first["step"].iloc[0]),
    }


def mixed_architectures(df: pd.DataFrame, groups: Mapping[str, Sequence[str]]) -> list[str]:
    """A warning for each group whose runs differ in their tensors (names or shapes).

    A group mean and band over runs of different architectures average unlike things.
    `df` holds every run's rows, with a `run` column naming each run's label.
    """
    out = []
    for name, members in groups.items():
        shapes = {}
        for run in members:
            rows = df[df["run"] == run]
            shapes[run] = frozenset(zip(rows["tensor"], rows["rows"], rows["cols"], strict=True))
        kinds = list(dict.fromkeys(shapes.values()))
        if len(kinds) > 1:
            a = next(r for r in members if shapes[r] == kinds[0])
            b = next(r for r in members if shapes[r] == kinds[1])
            only = sorted(map(str, kinds[0] ^ kinds[1]))[:1]
            out.append(
                f"group {name} mixes architectures: {a} and {b} differ in their tensors or "
                f"shapes (e.g. {only[0]}), so its mean and band average unlike runs."
            )
    return out


@dataclass
class GroupFindings:
    """Per-run numbers, their mean ± sd per group, and first group − each other group."""

    groups: dict[str, list[str]]
    per_run: pd.DataFrame  # run × quantity
    summary: dict[str, dict[str, MeanSD]]  # quantity → group → mean ± sd
    differences: dict[str, dict[str, Difference | None]]  # quantity → other group → CI
    claims: tuple[Claim, ...] = CLAIMS  # what the numbers are for

    def table(self) -> pd.DataFrame:
        """One row per quantity: each group's mean ± sd, and each difference with its CI."""
        names = list(self.groups)
        rows = []
        for claim in self.claims:
            q = claim.quantity
            row = {"quantity": claim.label}
            row.update(
                {f"{g} (n = {len(m)})": self.summary[q][g].format() for g, m in self.groups.items()}
            )
            for other in names[1:]:
                d = self.differences[q][other]
                col = f"{names[0]} − {other}, 95 % CI"
                row[col] = (
                    d.format()
                    if d
                    else f"{self.summary[q][names[0]].mean - self.summary[q][other].mean:+.3f} (n = 1: no interval)"
                )
            rows.append(row)
        return pd.DataFrame(rows)


def group_findings(
    frames: Mapping[str, pd.DataFrame],
    groups: Mapping[str, Sequence[str]],
    *,
    seed: int = 0,
    claims: tuple[Claim, ...] = CLAIMS,
    quantities: Callable[[pd.DataFrame], dict[str, float]] = run_quantities,
) -> GroupFindings:
    """The claims' numbers per run (frames: run label → metrics; `quantities` computes them
    from one run's metrics), summarised per group."""
    groups = check_groups(groups, list(frames))
    per_run = pd.DataFrame({run: quantities(frames[run]) for m in groups.values() for run in m}).T
    names = list(groups)
    summary: dict[str, dict[str, MeanSD]] = {}
    diffs: dict[str, dict[str, Difference | None]] = {}
    for claim in claims:
        q = claim.quantity
        values = {g: per_run.loc[m, q].to_numpy(dtype=float) for g, m in groups.items()}
        summary[q] = {g: mean_sd(v) for g, v in values.items()}
        diffs[q] = {}
        for other in names[1:]:
            a, b = values[names[0]], values[other]
            enough = len(a) > 1 and len(b) > 1
            diffs[q][other] = bootstrap_difference(a, b, seed=seed) if enough else None
    return GroupFindings(groups, per_run, summary, diffs, claims)


def verdict(findings: GroupFindings, claim: Claim, other: str | None = None) -> str:
    """'holds', 'does not hold' or 'inconclusive at n = …' for the first group against `other`.

    A claim holds or does not hold only when the 95 % interval of the difference excludes 0 (on
    the claim's side: above for a larger quantity, below for a `less` one) and has a width (runs that all agree within each group, e.g. one run given twice, show no
    spread to judge the difference by).
    """
    names = list(findings.groups)
    other = other or names[1]
    d = findings.differences[claim.quantity][other]
    if d is None or not d.excludes_zero or d.low == d.high:
        n = sorted({len(findings.groups[names[0]]), len(findings.groups[other])})
        return f"inconclusive at n = {' and '.join(map(str, n))}"
    return "holds" if (d.high < 0 if claim.less else d.low > 0) else "does not hold"


def claim_lines(findings: GroupFindings) -> list[str]:
    """One sentence per claim: the first group against the second, its verdict and numbers."""
    names = list(findings.groups)
    if len(names) < 2:
        return []
    a, b = names[:2]
    lines = []
    for claim in findings.claims:
        q = claim.quantity
        ms = findings.summary[q]
        d = findings.differences[q][b]
        diff = (f"difference {d.format()} (95 % bootstrap CI)" if d is not None
                else f"difference {ms[a].mean - ms[b].mean:+.3f} (no interval at n = 1)")  # fmt: skip
        lines.append(
            f"{a} {claim.text.format(s='s')} than {b}: {verdict(findings, claim, b)} — "
            f"{claim.label}: {a} {ms[a].format()}, {b} {ms[b].format()}; {diff}."
        )
    return lines


def closer_word(rel_error: float) -> str:
    """'closer', or 'barely (< 1 %) closer' when rel_error is within NEGLIGIBLE_GAIN of 1."""
    if rel_error > 1 - NEGLIGIBLE_GAIN:
        return f"barely (< {NEGLIGIBLE_GAIN:.0%}) closer".replace("%", " %")
    return "closer"


def score_tolerance(*scores: float) -> float:
    """The largest score change still negligible: NEGLIGIBLE_SCORE × the largest |score|."""
    finite = [abs(float(x)) for x in scores if np.isfinite(x)]
    return NEGLIGIBLE_SCORE * max(finite, default=0.0)


def score_change(before: float, after: float) -> str:
    """'raised', 'lowered' or 'left about unchanged' (within score_tolerance) from before to after."""
    tol = score_tolerance(before, after)
    if after - before > tol:
        return "raised"
    if before - after > tol:
        return "lowered"
    return "left about unchanged"


def update_effect(full: float, base: float) -> str:
    """What the whole update did to the score: 'the final update as a whole lowered the score …'."""
    verb = score_change(base, full)
    if verb.startswith("left"):
        return (
            f"the final update as a whole left the score about unchanged ({base:.4g} → "
            f"{full:.4g}, within {NEGLIGIBLE_SCORE:.0%})"
        ).replace("%)", " %)")
    return f"the final update as a whole {verb} the score from {base:.4g} to {full:.4g}"


def online_sentence(online: Mapping[str, Any]) -> str:
    """Online EffOPD against plain OPD: steps each took to reach the target score, the speed-up.

    `online` holds target_accuracy, plain_steps_to_target, effopd_steps_to_target,
    plain_final_accuracy, effopd_final_accuracy (the demo's online_effopd.json), and
    optionally start_accuracy (the score at step 0).
    """
    target = float(online["target_accuracy"])
    plain, eff = online.get("plain_steps_to_target"), online.get("effopd_steps_to_target")
    finals = (
        f"final accuracy: plain {float(online['plain_final_accuracy']):.4g}, "
        f"with EffOPD {float(online['effopd_final_accuracy']):.4g}"
    )
    start = online.get("start_accuracy")
    head = f"steps to reach {target:.4g} accuracy"
    if start is not None and float(start) >= target:
        return (
            f"{head}: the start already scores {float(start):.4g} (≥ the target), so there is no "
            f"speed-up to measure; {finals}."
        )
    if plain is None or eff is None:
        missing = " and ".join(n for n, v in (("plain", plain), ("with EffOPD", eff)) if v is None)
        return f"{head}: {missing} never reached it, so there is no speed-up to measure; {finals}."
    p, e = int(plain), int(eff)
    if p == 0 or e == 0:
        return (
            f"{head}: reached at step 0 (plain {p}, with EffOPD {e}), so there is no speed-up to "
            f"measure; {finals}."
        )
    ratio = p / e
    how = "no faster" if abs(ratio - 1) <= NEGLIGIBLE_SCORE else "faster" if ratio > 1 else "slower"
    return f"{head}: plain OPD {p}, with online EffOPD {e} — {ratio:.2f}× ({how}); {finals}."


ABLATION_HINT = "Pass the ablation table opdlens.ablate returns (or ablation.csv it writes)."


def ablation_sentence(df: pd.DataFrame) -> str:
    """One line on what the update did to the score and which group's update is worth most.

    Says so when the whole update lowered the score, when dropping a group raises it (negative
    utility), and when no group's update helps; negligible is decided by `score_tolerance`.
    """
    cols = [
        "group",
        "update_share",
        "score_full",
        "score_base",
        "score_drop",
        "score_only",
        "utility",
    ]
    df = check_frame(df, "ablation_sentence", cols, hint=ABLATION_HINT)
    step = f"step {int(df['step'].iloc[0])}" if "step" in df else "step T"
    full, base = float(df["score_full"].iloc[0]), float(df["score_base"].iloc[0])
    utility = values_of(df["utility"])
    head = f"At {step}, {update_effect(full, base)}"
    if np.isfinite(utility).any():
        return f"{head}; {_utility_clause(df, utility, full, base)}."
    only = values_of(df["score_only"])
    if not np.isfinite(only).any():
        raise NothingToDrawError(
            f"The 'df' argument of ablation_sentence has neither utility nor score_only. {ABLATION_HINT}"
        )
    top = df.iloc[int(np.nanargmax(only))]
    gain = top["score_only"] - base
    return (
        f"{head}; the update of {top['group']} alone ({top['update_share']:.0%} of ‖Δ_T‖²) "
        f"scores highest: {top['score_only']:.4g}, {gain:+.4g} over the base."
    )


def _share(row: pd.Series) -> str:
    return f"{row['update_share']:.0%} of ‖Δ_T‖²"


def _utility_clause(df: pd.DataFrame, utility: np.ndarray, full: float, base: float) -> str:
    """Which group's update helps most, which hurts (negative utility), or that none helps."""
    tol = score_tolerance(full, base, *values_of(df["score_drop"]))
    finite = np.where(np.isfinite(utility), utility, 0.0)
    parts = []
    if (finite > tol).any():
        top = df.iloc[int(np.argmax(finite))]
        if score_change(base, full) == "raised":
            text = (
                f"dropping the update of {top['group']} ({_share(top)}) costs the most: the score "
                f"falls to {top['score_drop']:.4g} (utility {top['utility']:+.4g})"
            )
        else:
            text = (
                f"{top['group']}'s update helps most: dropping it ({_share(top)}) lowers the "
                f"score to {top['score_drop']:.4g} (utility {top['utility']:+.4g})"
            )
        share = values_of(df["update_share"])
        per_share = np.where(
            (share > 0) & (finite > tol), finite / np.where(share > 0, share, 1), np.nan
        )
        best = df.iloc[int(np.nanargmax(per_share))]
        if best["group"] != top["group"]:
            text += (
                f"; per unit of update share, {best['group']} is worth most "
                f"({best['utility'] / best['update_share']:.3g})"
            )
        parts.append(text)
    elif (finite < -tol).any():
        parts.append("no group's update helps: dropping any one leaves the score as high or higher")
    else:
        return (
            "no group's update matters on its own: dropping any one changes the score by less "
            f"than {NEGLIGIBLE_SCORE:.0%}".replace("%", " %")
        )
    if (finite < -tol).any():
        low = df.iloc[int(np.argmin(finite))]
        hurt = int((finite < -tol).sum())
        most, others = (
            (" most,", f"; {hurt} groups have negative utility") if hurt > 1 else ("", "")
        )
        parts.append(
            f"dropping {low['group']}'s ({_share(low)}) raises the score{most} to "
            f"{low['score_drop']:.4g} (negative utility {low['utility']:+.4g}{others})"
        )
    return "; ".join(parts)
