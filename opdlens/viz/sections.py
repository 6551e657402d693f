"""The report's HTML pieces: tables, figures, and one section per analysis, each led by its sentence."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..analysis.findings import GroupFindings, claim_lines, online_sentence, score_change
from ..io.training_log import choose_metric, log_at_steps
from .plots import GAP_THRESHOLD
from .save import PNG_DPI

if TYPE_CHECKING:
    from ..analysis.side_inputs import OnlineEffOPD
    from ..extrapolation.ablate import Ablation
    from .figures import FigureSet

__all__ = [
    "ablation_section",
    "figure_html",
    "foresight_section",
    "groups_section",
    "online_section",
    "score_line",
    "table_html",
    "top_table",
]


def esc(value: object) -> str:
    """HTML-escaped text of a value."""
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """A cell's text: — for missing, 4 significant digits for floats."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def table_html(df: pd.DataFrame, flags: pd.DataFrame | None = None, css: str = "") -> str:
    """An HTML table that scrolls inside the page column; cells where `flags` is True get a *."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = []
    for i, (_, row) in enumerate(df.iterrows()):
        cells = []
        for c in df.columns:
            v = row[c]
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            mark = flags is not None and c in flags.columns and bool(flags.iloc[i][c])
            text = esc(fmt(v)) + ('<span class="flag">*</span>' if mark else "")
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    classes = " ".join(c for c in ("wide", css) if c)
    return f'<div class="{classes}"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def figure_html(figures: FigureSet, stem: str) -> str:
    """One figure as an embedded PNG with its title and caption."""
    png = figures.png(stem).read_bytes()
    data = base64.b64encode(png).decode("ascii")
    title = figures.titles[stem]
    # Shown at the figure's print size (the PNG is 200 dpi; CSS pixels are 1/96 in).
    width = int.from_bytes(png[16:20], "big") * 96 // PNG_DPI
    return (
        f'<figure id="fig-{esc(stem)}"><h3>{esc(title)}</h3>'
        f'<img src="data:image/png;base64,{data}" alt="{esc(title)}" width="{width}">'
        f"<figcaption>{esc(figures.captions[stem])} Files: {esc(stem)}.pdf, .svg, .png.</figcaption>"
        "</figure>"
    )


def _ks(df: pd.DataFrame, prefix: str) -> list[int]:
    return sorted(int(m.group(1)) for c in df.columns if (m := re.match(rf"^{prefix}_k(\d+)$", c)))


def top_table(top: pd.DataFrame, finals: dict[str, int]) -> str:
    """The top tensors' rows; alignment columns only where they are not 1 by construction."""
    top = top.copy()
    ks = _ks(top, "energy")
    k = ks[(len(ks) - 1) // 2] if ks else None
    if "rows" in top and "cols" in top:
        top["shape"] = [f"{r}×{c}" for r, c in zip(top["rows"], top["cols"], strict=True)]
    cols = ["run", "step", "tensor", "expert", "part", "block", "shape", "update_share",
            "rel_update_norm", "stable_rank", "cos_to_final"]  # fmt: skip
    aligned = ["cos_to_final"]
    if k is not None:
        aligned += [f"align_left_k{k}", f"align_right_k{k}"]
        cols[-2:-2] = [f"energy_k{k}", *aligned[1:]]
    # Δ_T compared with itself: alignment and cosine are 1 at each run's final step.
    at_final = (top["step"] == top["run"].map(finals)).to_numpy(dtype=bool)
    top.loc[at_final, [c for c in aligned if c in top]] = np.nan
    cols = [c for c in cols if c in top.columns and not top[c].isna().all()]
    flags = None
    if k is not None and f"gap_k{k}" in top and f"align_left_k{k}" in cols:
        gap = top[f"gap_k{k}"].to_numpy(dtype="float64", na_value=np.nan)
        ill = ~(gap >= GAP_THRESHOLD) & top[f"align_left_k{k}"].notna().to_numpy()
        flags = pd.DataFrame({f"align_left_k{k}": ill, f"align_right_k{k}": ill})
    notes = []
    if at_final.any():
        notes.append(
            "align_* and cos_to_final are left out at the final step: they compare Δ_T with "
            "itself and are 1 by construction (see the alignment figure for earlier steps)."
        )
    if flags is not None and flags.to_numpy().any():
        notes.append(
            f'<span class="flag">*</span> gap_k{k} &lt; {GAP_THRESHOLD:g} at this step: the '
            "top-K subspace is not well defined and its alignment means little."
        )
    table = table_html(top[cols].reset_index(drop=True), flags, css="top")
    return table + "".join(f'<p class="meta">{t}</p>' for t in notes)


def score_line(log: pd.DataFrame | None, steps: Sequence[int]) -> str | None:
    """The logged score from step 0 (else the first saved step it was logged by) to the last
    saved step: 'accuracy `acc` from step 0 to step 120: 0.174 → 0.385 (up)'; None
    without a log, a metric, or a value at a saved step."""
    choice = choose_metric(log) if log is not None else None
    if log is None or choice is None or not steps:
        return None
    column, kind = choice
    values = log[["step", column]].dropna()
    at = log_at_steps(values, [0, *steps]).dropna()
    if at.empty:
        return None
    first, last = int(at["step"].iloc[0]), int(at["step"].iloc[-1])
    v0, v1 = float(at[column].iloc[0]), float(at[column].iloc[-1])
    if first == last:
        return f"{esc(kind)} <code>{esc(column)}</code> at step {first}: {esc(fmt(v0))}"
    words = {"raised": "up", "lowered": "down", "left about unchanged": "about unchanged"}
    verb = f" ({words[score_change(v0, v1)]})" if kind == "accuracy" else ""
    unlogged = " (step 0 was not logged)" if first > 0 else ""
    return (
        f"{esc(kind)} <code>{esc(column)}</code> from step {first} to step {last}{unlogged}: "
        f"{esc(fmt(v0))} → {esc(fmt(v1))}{verb}"
    )


def groups_section(findings: GroupFindings, band: str) -> str:
    """Mean ± sd per group of the claims' numbers, each difference with its interval, verdicts."""
    from ..analysis.stats import BOOTSTRAP_SAMPLES
    from .groups import BANDS

    sizes = "; ".join(f"{g}: {', '.join(runs)}" for g, runs in findings.groups.items())
    lines = "".join(f"<li>{esc(t)}</li>" for t in claim_lines(findings))
    return "\n".join([
        '<section id="groups"><h2>Groups of runs</h2>',
        f'<ul class="claims">{lines}</ul>' if lines else "",
        table_html(findings.table()),
        f'<p class="meta">Groups: {esc(sizes)}. Mean ± sample sd (ddof = 1) per group; the '
        f"difference of group means with its 95 % percentile bootstrap interval "
        f"({BOOTSTRAP_SAMPLES:,} resamples of each group's runs, seed 0). A claim is stated to "
        "hold or not hold only when that interval excludes 0; with as few as 3 runs per group "
        "the percentile interval is narrower than a t interval, so read such a decision as "
        "tentative. Grouped figures draw group means "
        f"with a band of {esc(BANDS[band])}.</p>",
        "<details><summary>per-run numbers</summary>",
        table_html(findings.per_run.reset_index(names="run")), "</details></section>",
    ])  # fmt: skip


def foresight_section(figures: FigureSet, foresight: pd.DataFrame | None) -> str:
    """Its sentence per run, the foresight figure, and EffOPD's α against α* (opdlens foresee)."""
    from ..analysis.foresight import effopd_comparison, foresight_sentence

    if foresight is None or "foresight" not in figures.paths:
        return ""
    runs = ", ".join(str(r) for r in pd.unique(foresight["run"]))
    lines = "".join(
        f"<li>{esc(run)}: {esc(foresight_sentence(df.drop(columns='run')))}</li>"
        for run, df in foresight.groupby("run", sort=False)
    )
    table = effopd_comparison(foresight)
    if not table.empty:
        nxt = table.groupby(["run", "step", "anchor"])["target_step"].transform("min")
        table = table[table["target_step"] == nxt].reset_index(drop=True)
    return "\n".join([
        '<section id="foresight"><h2>Foresight</h2>',
        f'<ul class="foresight">{lines}</ul>',
        f'<p class="meta">Computed from the checkpoints of {esc(runs)} (opdlens foresee: one pass '
        "of reads and dot products, exact; whole model = attention and MLP matrices). Each line: "
        "against the last saved step, with the previous saved step as anchor and α = α*.</p>",
        figure_html(figures, "foresight"),
        *(["<p>What EffOPD's schedule would try at each scheduled step (cumulative α of each "
           "candidate, and its rel_error against the next saved step) against α*:</p>",
           table_html(table)] if not table.empty else []),
        "</section>",
    ])  # fmt: skip


def ablation_section(figures: FigureSet, ablation: Mapping[str, Ablation] | None) -> str:
    """Its sentence per run, the ablation figure, and the table of each (opdlens ablate)."""
    from .ablation import ablation_sentence

    if not ablation or "ablation" not in figures.paths:
        return ""
    lines = "".join(
        f"<li>{esc(label)}: {esc(ablation_sentence(a.ablation))}</li>"
        for label, a in ablation.items()
    )
    cols = ["group", "update_share", "score_drop", "score_only", "utility"]
    tables = [
        f"<p>{esc(label)} (scorer {esc(a.ablation.attrs.get('scorer', 'given'))}):</p>"
        + table_html(a.ablation[[c for c in cols if c in a.ablation]])
        for label, a in ablation.items()
    ]
    return "\n".join([
        '<section id="ablation"><h2>Marginal utility (ablation)</h2>',
        f'<ul class="ablation">{lines}</ul>',
        '<p class="meta">From <code>opdlens ablate</code>: each group\'s update removed (drop) or '
        "kept alone (only) at step T, scored by the user's scorer; utility = S(θ_T) − drop.</p>",
        figure_html(figures, "ablation"),
        *tables,
        "</section>",
    ])  # fmt: skip


def online_lines(online: Iterable[OnlineEffOPD]) -> list[str]:
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


def online_section(online: Sequence[OnlineEffOPD]) -> str:
    """The online EffOPD result: its sentence per run, then every candidate it tried."""
    if not online:
        return ""
    lines = "".join(f"<li>{esc(t)}</li>" for t in online_lines(online))
    tables = [
        f"<p>{esc(o.label)} (<code>{esc(o.source)}</code>):</p>" + table_html(o.candidates)
        for o in online
        if not o.candidates.empty
    ]
    return "\n".join([
        '<section id="online"><h2>Online EffOPD</h2>',
        f'<ul class="online">{lines}</ul>',
        '<p class="meta">EffOPD inside training: at steps 1, 2, 4, 8, … candidates '
        "θ_t + α(θ_t − θ_anchor) are scored and kept only if the score improves, and training "
        "continues from the kept weights (unlike the offline replay).</p>",
        *tables,
        "</section>",
    ])  # fmt: skip
