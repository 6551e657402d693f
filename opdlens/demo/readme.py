"""The demo's figures as README prints them (one source: `python scripts/demo_figures.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..analysis.findings import CLAIMS, GroupFindings
from ..analysis.stats import mean_sd
from .pipeline import DemoResult, online_sentence
from .runs import MANIFEST
from .settings import replicate_dir
from .train import accuracy

# README calls a verdict decided only with room to spare: the end of the 95 % interval nearest
# 0 must lie at least MARGIN_ABS from 0 and at least MARGIN_REL of |difference| from it.
MARGIN_ABS = 0.005
MARGIN_REL = 0.2
_ROWS = {
    "mlp_share": "update share of `mlp` at the final step",
    "energy_k1": "energy_k1 of the final update",
    "align_first": "top-1 alignment with the final update at step 1",
}


def accuracies(result: DemoResult) -> dict[str, pd.DataFrame]:
    """Method → one row per run: held-out accuracy at step 0 and at the last saved step."""
    out = {}
    for method, labels in result.groups.items():
        rows = []
        for i, label in enumerate(labels):
            run_dir = Path(result.out_dir) / "runs" / replicate_dir(method.lower(), i)
            acc = pd.read_csv(run_dir / "metrics.csv")["accuracy"]
            rows.append({"run": label, "start": float(acc.iloc[0]), "final": float(acc.iloc[-1])})
        out[method] = pd.DataFrame(rows)
    return out


def with_margin(findings: GroupFindings, quantity: str) -> bool:
    """True when the quantity's verdict has room to spare: its 95 % interval's end nearest 0 lies
    at least MARGIN_ABS from 0 and, when the interval excludes 0, at least MARGIN_REL of
    |difference| from it. False without an interval (n = 1)."""
    names = list(findings.groups)
    d = findings.differences[quantity][names[1]]
    if d is None:
        return False
    nearest = min(abs(d.low), abs(d.high))
    if not d.excludes_zero:
        return nearest >= MARGIN_ABS
    return nearest >= MARGIN_ABS and nearest >= MARGIN_REL * abs(d.diff)


def close_calls(findings: GroupFindings) -> list[str]:
    """One line for each claim whose verdict has no room to spare (with_margin is False)."""
    return [
        f"Too close to call: {claim.quantity} (its interval's end nearest 0 is within "
        f"{MARGIN_ABS} or {MARGIN_REL:.0%} of the difference of 0): read its verdict as undecided."
        for claim in CLAIMS
        if not with_margin(findings, claim.quantity)
    ]


def figures_markdown(result: DemoResult) -> str:
    """The teacher, the accuracy and claims table, and the printed claim and online lines."""
    f = result.findings
    a, b = list(result.groups)
    n = {g: len(m) for g, m in result.groups.items()}
    acc = accuracies(result)
    start = acc[a]["start"].iloc[0]
    final = {g: mean_sd(acc[g]["final"].to_numpy(float)).format() for g in (a, b)}
    lowest = {g: acc[g]["final"].min() for g in (a, b)}
    runs = Path(result.out_dir) / "runs"
    manifest = json.loads((runs / MANIFEST).read_text())
    sft_steps, path = manifest["sft_steps"], manifest["code_path"]
    lines = [
        f"Trained with torch {path['torch']} on the portable code path (ATen "
        f"{path['cpu_capability']} kernels, MKL_CBWR={path['mkl_cbwr']}, {path['threads']} thread).",
        "",
        f"Teacher: held-out accuracy {accuracy(runs / 'teacher'):.3f} after {sft_steps} SFT steps.",
        "",
        f"| | {a} (n = {n[a]}) | {b} (n = {n[b]}) | {a} − {b} [95 % CI] |",
        "| --- | --- | --- | --- |",
        f"| held-out accuracy at the last step (all start at {start:.3f}) | {final[a]} "
        f"(lowest {lowest[a]:.3f}) | {final[b]} (lowest {lowest[b]:.3f}) | |",
    ]
    share = result.share_by_block
    for claim in CLAIMS:
        q = claim.quantity
        d = f.differences[q][b]
        diff = d.format() if d is not None else "(n = 1: no interval)"
        lines.append(f"| {_ROWS[q]} | {f.summary[q][a].format()} | {f.summary[q][b].format()} "
                     f"| {diff} |")  # fmt: skip
        if q == "mlp_share" and "attn" in share.index:
            lines.append(f"| update share of `attn` at the final step | {share.loc['attn', a]} "
                         f"| {share.loc['attn', b]} | |")  # fmt: skip
    lines += ["", "```text", *result.verdict, *close_calls(f), "```"]
    lines += ["", "```text", online_sentence(result.online)]
    lines += ["```"]
    return "\n".join(lines)
