"""The compare table: per-tensor rows, their block / layer / overall sums, and the ratios of both."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .overlap import COUNT_COLUMNS, SUM_COLUMNS
from .sparsity import jaccard_chance

if TYPE_CHECKING:
    import pandas as pd

SCOPES = ("tensor", "block", "layer", "overall")
_KEYS = ["scope", "group", "tensor", "expert", "part", "layer", "block", "kind", "rows", "cols"]
_RATIOS = ["changed_frac_a", "changed_frac_b", "jaccard", "jaccard_chance", "overlap_ratio", "cos"]
_INTS = ["expert", "layer", "rows", "cols", *COUNT_COLUMNS]


def subspace_columns(ranks: Sequence[int]) -> list[str]:
    """subspace_left_k{K}, its random baseline, then the same for right, per K."""
    return [
        f"subspace_{side}{what}_k{k}"
        for k in ranks
        for side in ("left", "right")
        for what in ("", "_random")
    ]


def _weighted(values: pd.Series, weights: pd.Series, where: pd.Series) -> float:
    w = weights[where].astype(float)
    return float((values[where] * w).sum() / w.sum()) if w.sum() > 0 else math.nan


def _aggregate(t: pd.DataFrame, scope: str, key: str | None, ranks: Sequence[int]) -> list[dict]:
    """One row per group: counts and inner products summed; subspaces an element-weighted mean
    over the group's matrices that have one (their random baselines over the same matrices)."""
    if key is None:
        groups: list[tuple[object, pd.DataFrame]] = [("all", t)]
    else:
        src = t[t[key].notna()]
        groups = list(src.groupby(key, sort=True))
    out = []
    for g, sub in groups:
        row: dict[str, object] = {"scope": scope, "group": str(g)}
        if key is not None:
            row[key] = g
        for c in SUM_COLUMNS:
            # A group with a LoRA tensor has no complete count: empty, not an undercount.
            missing = c in COUNT_COLUMNS and bool(sub[c].isna().any())
            row[c] = None if missing else sub[c].sum()
        for k in ranks:
            for side in ("left", "right"):
                col = f"subspace_{side}_k{k}"
                has = sub[col].notna()
                row[col] = _weighted(sub[col], sub["numel"], has)
                rnd = f"subspace_{side}_random_k{k}"
                row[rnd] = _weighted(sub[rnd], sub["numel"], has)
        out.append(row)
    return out


def _ratios(df: pd.DataFrame) -> None:
    """The ratio columns of every row, from its counts and inner products."""
    n = df["numel"].astype(float)
    count = {c: df[c].astype("float64") for c in COUNT_COLUMNS}
    pa, pb = count["changed_a"] / n, count["changed_b"] / n
    either = count["changed_either"]
    df["changed_frac_a"], df["changed_frac_b"] = pa, pb
    df["jaccard"] = (count["changed_both"] / either).where(either > 0)
    df["jaccard_chance"] = [jaccard_chance(x, y) for x, y in zip(pa, pb, strict=True)]
    df["overlap_ratio"] = df["jaccard"] / df["jaccard_chance"]
    den = np.sqrt(df["sq_a"].astype(float)) * np.sqrt(df["sq_b"].astype(float))
    df["cos"] = (df["dot"] / den).where(den > 0)


def build_frame(
    rows: list[dict[str, object]], ranks: Sequence[int], scopes: Sequence[str]
) -> pd.DataFrame:
    """The compare table from the per-tensor rows: the chosen scopes, with every ratio column."""
    import pandas as pd

    t = pd.DataFrame(rows)
    for c in ["tensor", "layer", "block", "expert", "part", "kind", "rows", "cols", *SUM_COLUMNS]:
        if c not in t:
            t[c] = pd.Series(dtype="float64")
    for c in subspace_columns(ranks):
        if c not in t:
            t[c] = pd.Series(dtype="float64")
    t["layer"] = t["layer"].astype("Int64")
    parts = []
    if "tensor" in scopes:
        parts.append(t.assign(scope="tensor", group=t["tensor"]))
    for scope, key in (("block", "block"), ("layer", "layer"), ("overall", None)):
        if scope in scopes:
            agg = _aggregate(t, scope, key, ranks)
            if agg:
                parts.append(pd.DataFrame(agg))
    df = pd.concat(parts, ignore_index=True) if parts else t.iloc[:0].assign(scope=[], group=[])
    df = df.reindex(columns=[*_KEYS, *t.columns.difference(_KEYS)])  # aggregates lack some keys
    for c in _INTS:
        df[c] = pd.to_numeric(df[c]).astype("Int64")
    df["numel"] = df["numel"].astype("int64")
    for c in ("dot", "sq_a", "sq_b", *subspace_columns(ranks)):
        df[c] = df[c].astype("float64")
    for c in ("scope", "group", "tensor", "part", "block", "kind"):
        df[c] = df[c].astype("object").where(df[c].notna(), None)
    _ratios(df)
    return df[[*_KEYS, "numel", *_RATIOS, *subspace_columns(ranks), *SUM_COLUMNS[1:]]]
