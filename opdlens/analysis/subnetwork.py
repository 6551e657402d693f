"""How much of the weights runs changed (changed_frac, element-weighted), and the report's sentence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .frame import changed_share

__all__ = ["changed_by", "changed_cells", "changed_sentence", "final_changed"]

_NEEDED = ("changed_count", "changed_tol_count", "numel")


def changed_by(rows: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Element-weighted changed_frac and changed_frac_tol of `rows` per group of `by` (pooled:
    summed counts over summed numel, whatever run or step a row comes from); NaN for a group
    with a row without counts, or when `rows` has no count columns (metrics of older versions).
    """
    if not set(_NEEDED) <= set(rows.columns):
        rows = rows.assign(changed_count=pd.NA, changed_tol_count=pd.NA)
        if "numel" not in rows.columns:
            rows = rows.assign(numel=0)
    if not by:
        return pd.DataFrame([{**changed_share(rows), "numel": int(rows["numel"].sum())}])
    out = []
    for key, g in rows.groupby(list(by), dropna=False, sort=True):
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        out.append({**rec, **changed_share(g), "numel": int(g["numel"].sum())})
    return pd.DataFrame(out)


def final_changed(
    frames: Mapping[str, pd.DataFrame], groups: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """changed_frac over all weights at each run's last analysed step (cumulative rows), one row
    per run, or per group with its runs pooled and the lowest and highest run's share.

    Columns: label, where ('step T', or 'N runs' for a group), runs, changed_frac,
    changed_frac_tol, run_min, run_max.
    """
    last = {label: _last_step(df) for label, df in frames.items()}
    per_run = {label: changed_by(rows).iloc[0] for label, rows in last.items()}
    out = []
    for name, members in _sets(frames, groups).items():
        pooled = changed_by(pd.concat([last[m] for m in members], ignore_index=True)).iloc[0]
        shares = [float(per_run[m]["changed_frac"]) for m in members]
        where = f"step {int(last[members[0]]['step'].max())}" if len(members) == 1 else ""
        out.append({
            "label": name, "where": where or f"{len(members)} runs", "runs": len(members),
            "changed_frac": float(pooled["changed_frac"]),
            "changed_frac_tol": float(pooled["changed_frac_tol"]),
            "run_min": min(shares), "run_max": max(shares),
        })  # fmt: skip
    return pd.DataFrame(out)


def changed_cells(
    frames: Mapping[str, pd.DataFrame], groups: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """changed_frac and changed_frac_tol per (label, layer, kind) at each run's last analysed
    step, for the tensors inside layers; a group's runs pooled (summed counts over numel).
    """
    out = []
    for name, members in _sets(frames, groups).items():
        rows = pd.concat([_last_step(frames[m]) for m in members], ignore_index=True)
        if not {"layer", "kind"} <= set(rows.columns):
            continue  # a hand-made frame without modules: nothing to place on the grid
        rows = rows[rows["layer"].notna()]
        if rows.empty:
            continue
        rows = rows.assign(layer=rows["layer"].astype("int64"), kind=rows["kind"].astype(str))
        out.append(changed_by(rows, ("layer", "kind")).assign(label=name))
    cols = ["label", "layer", "kind", "changed_frac", "changed_frac_tol"]
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def _sets(
    frames: Mapping[str, pd.DataFrame], groups: Mapping[str, Sequence[str]] | None
) -> dict[str, list[str]]:
    if groups is None:
        return {label: [label] for label in frames}
    return {str(k): list(v) for k, v in groups.items()}


def _last_step(df: pd.DataFrame) -> pd.DataFrame:
    if "span" in df.columns:
        df = df[df["span"] == "cumulative"]
    return df[df["step"] == df["step"].max()]


def changed_sentence(shares: pd.DataFrame, tol: float | None = None) -> str:
    """One sentence: 'OPD changed 23 % of the weights (12 % by more than 1e-05), RL 31 % (20 %).'

    `shares` as `final_changed` gives it; a group adds its runs' range.
    """
    parts = []
    said = False  # the first counted run carries the verb: "OPD changed 23 % of the weights"
    for row in shares.itertuples():
        if not np.isfinite(row.changed_frac):
            parts.append(f"{row.label} has no counts (LoRA factors, or metrics written before "
                         "opdlens counted changed weights)")  # fmt: skip
            continue
        inner = []
        if tol is not None:
            inner.append(_pct(row.changed_frac_tol) + ("" if said else f" by more than {tol:g}"))
        if row.runs > 1:
            inner.append(f"runs {_pct(row.run_min)}–{_pct(row.run_max)}")
        head = f"{row.label} {_pct(row.changed_frac)}"
        if not said:
            head = f"{row.label} changed {_pct(row.changed_frac)} of the weights"
            said = True
        parts.append(head + (f" ({'; '.join(inner)})" if inner else ""))
    return ", ".join(parts) + "."


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %" if x >= 0.01 or x == 0 else f"{100 * x:.2g} %"
