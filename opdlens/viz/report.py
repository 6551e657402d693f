"""One self-contained HTML page per analysis: run summary, figures, top tensors, warnings, provenance."""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..analysis.findings import GroupFindings, check_groups, claim_lines, group_findings
from ..errors import OptionError
from ..io.paths import writable_dir, write_text_atomic
from ..io.training_log import choose_metric, log_at_steps
from ..provenance import versions
from .analyses import check_ablation
from .figures import FigureSet, write_figures
from .plots import GAP_THRESHOLD
from .save import PNG_DPI

if TYPE_CHECKING:
    from ..analysis.results import RunMetrics, Sources
    from ..extrapolation.ablate import Ablation

logger = logging.getLogger(__name__)

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"

_CSS = """
body { font-family: "STIX Two Text", "Times New Roman", Georgia, serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0 1.2em; }
div.wide { overflow-x: auto; max-width: 100%; } div.top table { font-size: 0.78em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 900px; }
.meta { color: #666; font-size: 0.9em; } .flag { color: #9a9a9a; }
ul.warnings li { color: #8a4b00; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto;
font-size: 0.8em; } code { font-size: 0.9em; }
"""

# Records in the page whether every embedded image decoded (read back by the browser test).
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-ok", ok + "/" + images.length);
});
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _table(df: pd.DataFrame, flags: pd.DataFrame | None = None, css: str = "") -> str:
    """An HTML table that scrolls inside the page column; cells where `flags` is True get a *."""
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = []
    for i, (_, row) in enumerate(df.iterrows()):
        cells = []
        for c in df.columns:
            v = row[c]
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            mark = flags is not None and c in flags.columns and bool(flags.iloc[i][c])
            text = _e(_fmt(v)) + ('<span class="flag">*</span>' if mark else "")
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    classes = " ".join(c for c in ("wide", css) if c)
    return f'<div class="{classes}"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _ks(df: pd.DataFrame, prefix: str) -> list[int]:
    return sorted(int(m.group(1)) for c in df.columns if (m := re.match(rf"^{prefix}_k(\d+)$", c)))


def _top_table(top: pd.DataFrame, finals: dict[str, int]) -> str:
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
    table = _table(top[cols].reset_index(drop=True), flags, css="top")
    return table + "".join(f'<p class="meta">{t}</p>' for t in notes)


def _training_line(log: pd.DataFrame | None, steps: list[int]) -> str:
    """Where the run's training curve comes from, and its value at the first and last saved step."""
    if log is None:
        return '<p class="meta">Training log: none found (see the warnings).</p>'
    choice = choose_metric(log)
    text = (
        f"Training log: <code>{_e(log.attrs.get('source', 'given'))}</code> "
        f"({_e(log.attrs.get('format', ''))}, {len(log)} logged steps)"
    )
    if choice is not None and steps:
        column, kind = choice
        at = log_at_steps(log[["step", column]], [steps[0], steps[-1]])[column].to_numpy()
        text += (
            f"; {_e(kind)} <code>{_e(column)}</code> at the first and last saved step "
            f"({steps[0]}, {steps[-1]}): {_e(_fmt(at[0]))} → {_e(_fmt(at[-1]))}"
        )
    return f'<p class="meta">{text}.</p>'


def _summary(rm: RunMetrics, log: pd.DataFrame | None = None) -> str:
    df = rm.frame
    final = int(df["step"].max())
    checkpoints = rm.checkpoints
    source = "run directory" if rm.run is not None else "metrics directory (opdlens analyze)"
    parts = [
        f"<h3>{_e(rm.label)}</h3>",
        f'<p class="meta">{_e(source)}: <code>{_e(rm.source)}</code>; metrics: '
        f"<code>{_e(rm.metrics_dir)}</code>. Steps analysed: "
        f"{_e(', '.join(str(s) for s in sorted(df['step'].unique())))}; final step {final}; "
        f"{df['tensor'].nunique()} tensors, {len(df)} rows.</p>",
    ]
    if not checkpoints.empty:
        parts.append(_table(checkpoints))
    parts.append(_training_line(log, sorted(int(s) for s in df["step"].unique())))
    parts.append(f"<p>Update share and low-rank energy by block at step {final}:</p>")
    parts.append(_table(rm.summary))
    return "\n".join(parts)


def _figure(figures: FigureSet, stem: str) -> str:
    png = figures.png(stem).read_bytes()
    data = base64.b64encode(png).decode("ascii")
    title = figures.titles[stem]
    # Shown at the figure's print size (the PNG is 200 dpi; CSS pixels are 1/96 in).
    width = int.from_bytes(png[16:20], "big") * 96 // PNG_DPI
    return (
        f'<figure id="fig-{_e(stem)}"><h3>{_e(title)}</h3>'
        f'<img src="data:image/png;base64,{data}" alt="{_e(title)}" width="{width}">'
        f"<figcaption>{_e(figures.captions[stem])} Files: {_e(stem)}.pdf, .svg, .png.</figcaption>"
        "</figure>"
    )


def _warnings(sources: Sources, figures: FigureSet) -> list[str]:
    out: list[str] = []
    for rm in sources.runs:
        out += [
            f"{rm.label}: {w}" for w in [*rm.reader_warnings, *rm.provenance.get("warnings", [])]
        ]
    if sources.history is not None:
        out.append(str(sources.history.attrs.get("note", "Offline replay (see replay_scores).")))
        if sources.history.attrs.get("oracle"):
            out.append("The replay scorer is the hindsight oracle: it looks at later checkpoints.")
    out += [*sources.notes, *figures.notes]
    return list(dict.fromkeys(out))


def _groups_section(findings: GroupFindings, band: str) -> str:
    """Mean ± sd per group of the claims' numbers, each difference with its interval, verdicts."""
    from ..analysis.stats import BOOTSTRAP_SAMPLES
    from .groups import BANDS

    sizes = "; ".join(f"{g}: {', '.join(runs)}" for g, runs in findings.groups.items())
    lines = "".join(f"<li>{_e(t)}</li>" for t in claim_lines(findings))
    return "\n".join([
        "<h2>Groups of runs</h2>",
        f'<p class="meta">Groups: {_e(sizes)}. Mean ± sample sd (ddof = 1) per group; the '
        f"difference of group means with its 95 % percentile bootstrap interval "
        f"({BOOTSTRAP_SAMPLES:,} resamples of each group's runs, seed 0). A claim is stated to "
        "hold or not hold only when that interval excludes 0; with as few as 3 runs per group "
        "the percentile interval is narrower than a t interval, so read such a decision as "
        "tentative. Grouped figures draw group means "
        f"with a band of {_e(BANDS[band])}.</p>",
        _table(findings.table()),
        f'<ul class="claims">{lines}</ul>' if lines else "",
        _table(findings.per_run.reset_index(names="run")),
    ])  # fmt: skip


_OWN_SECTION = ("foresight", "ablation")  # figures shown in their own sections


def _foresight_section(figures: FigureSet, foresight: pd.DataFrame | None) -> str:
    """The foresight figure, its sentence per run, and EffOPD's α against α* (opdlens foresee)."""
    from ..analysis.foresight import effopd_comparison, foresight_sentence

    if foresight is None or "foresight" not in figures.paths:
        return ""
    runs = ", ".join(str(r) for r in pd.unique(foresight["run"]))
    lines = "".join(
        f"<li>{_e(run)}: {_e(foresight_sentence(df.drop(columns='run')))}</li>"
        for run, df in foresight.groupby("run", sort=False)
    )
    table = effopd_comparison(foresight)
    if not table.empty:
        nxt = table.groupby(["run", "step", "anchor"])["target_step"].transform("min")
        table = table[table["target_step"] == nxt].reset_index(drop=True)
    return "\n".join([
        "<h2>Foresight</h2>",
        f'<p class="meta">Computed from the checkpoints of {_e(runs)} (opdlens foresee: one pass '
        "of reads and dot products, exact; whole model = attention and MLP matrices). Against "
        "the last saved step, with the previous saved step as anchor and α = α*:</p>",
        f'<ul class="foresight">{lines}</ul>',
        _figure(figures, "foresight"),
        *(["<p>What EffOPD's schedule would try at each scheduled step (cumulative α of each "
           "candidate, and its rel_error against the next saved step) against α*:</p>",
           _table(table)] if not table.empty else []),
    ])  # fmt: skip


def _ablation_section(figures: FigureSet, ablation: Mapping[str, Ablation] | None) -> str:
    """The ablation figure, its sentence per run, and the table of each (opdlens ablate)."""
    from .ablation import ablation_sentence

    if not ablation or "ablation" not in figures.paths:
        return ""
    lines = "".join(
        f"<li>{_e(label)}: {_e(ablation_sentence(a.ablation))}</li>"
        for label, a in ablation.items()
    )
    cols = ["group", "update_share", "score_drop", "score_only", "utility"]
    tables = [
        f"<p>{_e(label)} (scorer {_e(a.ablation.attrs.get('scorer', 'given'))}):</p>"
        + _table(a.ablation[[c for c in cols if c in a.ablation]])
        for label, a in ablation.items()
    ]
    return "\n".join([
        "<h2>Marginal utility (ablation)</h2>",
        '<p class="meta">From <code>opdlens ablate</code>: each group\'s update removed (drop) or '
        "kept alone (only) at step T, scored by the user's scorer; utility = S(θ_T) − drop.</p>",
        f'<ul class="ablation">{lines}</ul>',
        _figure(figures, "ablation"),
        *tables,
    ])  # fmt: skip


def _list(items: Iterable[str]) -> str:
    lis = "".join(f"<li>{_e(w)}</li>" for w in items)
    return f'<ul class="warnings">{lis}</ul>' if lis else "<p>None.</p>"


def _provenance(sources: Sources, options: dict[str, Any]) -> str:
    own = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "runs": {rm.label: str(rm.source) for rm in sources.runs},
        "options": options,
    }
    parts = [f"<details open><summary>this report</summary><pre>{_e(json.dumps(own, indent=2))}"
             "</pre></details>"]  # fmt: skip
    for rm in sources.runs:
        text = json.dumps(rm.provenance, indent=2, default=str) if rm.provenance else "(none)"
        parts.append(
            f"<details><summary>analysis of {_e(rm.label)} "
            f"({_e(rm.metrics_dir / 'provenance.json')})</summary><pre>{_e(text)}</pre></details>"
        )
    return "\n".join(parts)


def render_report(
    sources: Sources, figures: FigureSet, *, title: str | None = None, top: int = 20,
    options: dict[str, Any] | None = None, findings: GroupFindings | None = None,
    band: str = "sd", foresight: pd.DataFrame | None = None,
    ablation: Mapping[str, Ablation] | None = None,
) -> str:  # fmt: skip
    """The report page as one HTML string; images are data: URIs, nothing loads from a network."""
    labels = [rm.label for rm in sources.runs]
    title = title or f"opdlens report: {' vs '.join(labels)}"
    warnings = _warnings(sources, figures)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">How post-training moved the weights, from the saved checkpoints '
        f"(opdlens {_e(versions()['opdlens'])}). Δ_t = W_t − W_0 per tensor; definitions in "
        "each caption.</p>",
        "<h2>Run summary</h2>", *(_summary(rm, sources.training.get(rm.label)) for rm in sources.runs),
        _groups_section(findings, band) if findings is not None else "",
        "<h2>Figures</h2>",
        *(_figure(figures, stem) for stem in figures.paths if stem not in _OWN_SECTION),
        _foresight_section(figures, foresight), _ablation_section(figures, ablation),
        f"<h2>Top {top} tensors by update share at the final step</h2>",
        _top_table(sources.top_tensors(top), sources.final_steps),
        f"<h2>Warnings ({len(warnings)})</h2>", _list(warnings),
        "<h2>Provenance</h2>", _provenance(sources, options or {}),
    ]  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>"
        f"<body>\n{chr(10).join(body)}\n</body></html>\n"
    )


def write_report(
    sources: Sources,
    out_dir: str | Path,
    *,
    title: str | None = None,
    top: int = 20,
    figures: FigureSet | None = None,
    options: dict[str, Any] | None = None,
    inputs: Sequence[Path] = (),
    groups: Mapping[str, Sequence[str]] | None = None,
    band: str = "sd",
    foresight: pd.DataFrame | None = None,
    ablation: Mapping[str, Ablation] | None = None,
) -> Path:
    """Write out_dir/report.html (figures saved under out_dir/figures/ and embedded); return it.

    groups ({"OPD": ["OPD-1", "OPD-2"], …}: run labels) adds the groups section (mean ± sd,
    differences with 95 % bootstrap intervals, the claims' verdicts) and draws grouped figures
    (group means with a band: band="sd" ±1 sd, "range" min–max). foresight (opdlens.foresee's
    rows with a `run` column, e.g. from analysis.side_inputs.compute_foresight) and ablation (label →
    opdlens.ablate's result (side_inputs.load_ablation reads its --out)) add a section each.

    Raises:
        OpdlensError: out_dir overlaps one of the runs (or `inputs`), or is not a directory;
            groups naming runs not in sources.
    """
    if top < 1:
        raise OptionError(f"The 'top' parameter of write_report must be ≥ 1. Got {top} instead.")
    runs = [rm.source for rm in sources.runs if rm.run is not None]
    findings = None
    if groups is not None:
        frames = {rm.label: rm.frame for rm in sources.runs}
        findings = group_findings(frames, check_groups(groups, list(frames)))
    abl = check_ablation(ablation)
    if groups is not None and foresight is not None:
        foresight = foresight[foresight["run"].isin([m[0] for m in groups.values() if m])]
    out = writable_dir(out_dir, [*runs, *inputs], "report")
    if figures is None:
        figures = write_figures(
            sources.frame, out / "figures", spectra=sources.spectra, history=sources.history,
            errors=sources.errors, training=sources.training, groups=groups, band=band,
            foresight=foresight, ablation=abl,
        )  # fmt: skip
    page = render_report(sources, figures, title=title, top=top, options=options,
                         findings=findings, band=band, foresight=foresight, ablation=abl)  # fmt: skip
    path = out / REPORT_FILE
    write_text_atomic(path, page)
    logger.info("wrote %s (%d bytes)", path, len(page))
    return path
