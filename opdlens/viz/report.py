"""One self-contained HTML page per analysis: what it found first, then each analysis, inventories last."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..analysis.findings import GroupFindings, check_groups, claim_lines, group_findings
from ..analysis.side_inputs import OnlineEffOPD, find_online_effopd
from ..errors import OptionError
from ..io.paths import writable_dir, write_text_atomic
from ..provenance import versions
from .analyses import check_ablation
from .figures import FigureSet, write_figures
from .sections import (
    ablation_section,
    esc,
    figure_html,
    foresight_section,
    groups_section,
    online_lines,
    online_section,
    score_line,
    table_html,
    top_table,
)

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
ul.findings li { margin: 0.25em 0; } section#findings h2 { margin-top: 0.8em; }
ul.warnings li { color: #8a4b00; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto;
font-size: 0.8em; } code { font-size: 0.9em; } details { margin: 0.4em 0; }
summary { cursor: pointer; color: #333; }
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

_OWN_SECTION = ("foresight", "ablation")  # figures shown in their own sections
_KEY_FIGURES = ("findings", "training_and_weights", "block_norms")  # the first present leads


def _steps(rm: RunMetrics) -> list[int]:
    return sorted(int(s) for s in rm.frame["step"].unique())


def key_figure(figures: FigureSet) -> str | None:
    """The figure shown on the first screen: the claims, else what the run learned, else norms."""
    stems = [s for s in figures.paths if s not in _OWN_SECTION]
    return next((s for s in _KEY_FIGURES if s in figures.paths), stems[0] if stems else None)


def _findings(
    sources: Sources, findings: GroupFindings | None, online: Sequence[OnlineEffOPD],
    figures: FigureSet, key: str | None,
) -> str:  # fmt: skip
    """The first screen: the verdicts with intervals, each run's score from step 0, the key figure."""
    items = [esc(t) for t in claim_lines(findings)] if findings is not None else []
    for rm in sources.runs:
        line = score_line(sources.training.get(rm.label), _steps(rm))
        if line is not None:
            items.append(f"{esc(rm.label)}: {line}.")
    items += [esc(t) for t in online_lines(online)]
    if not items:
        items.append(
            "No verdicts (pass groups of runs) and no training log with a score: see the figures."
        )
    lis = "".join(f"<li>{t}</li>" for t in items)
    return "\n".join([
        '<section id="findings"><h2>Findings</h2>', f'<ul class="findings">{lis}</ul>',
        figure_html(figures, key) if key is not None else "", "</section>",
    ])  # fmt: skip


_NOTES = (" skipped", ": no training log (", "cached top-K singular values only")


def _is_note(message: str) -> bool:
    """A figure or side analysis skipped for want of an input: a note, not a problem."""
    return any(marker in message for marker in _NOTES)


def _messages(sources: Sources, figures: FigureSet) -> tuple[list[str], list[str]]:
    """(warnings: real problems, notes: figures and analyses skipped, caveats), deduplicated."""
    out: list[str] = []
    for rm in sources.runs:
        out += [
            f"{rm.label}: {w}" for w in [*rm.reader_warnings, *rm.provenance.get("warnings", [])]
        ]
    out += [*sources.notes, *figures.notes]
    notes = []
    if sources.history is not None:
        notes.append(str(sources.history.attrs.get("note", "Offline replay (see replay_scores).")))
        if sources.history.attrs.get("oracle"):
            out.append("The replay scorer is the hindsight oracle: it looks at later checkpoints.")
    unique = list(dict.fromkeys(out))
    return [m for m in unique if not _is_note(m)], [*notes, *(m for m in unique if _is_note(m))]


def _problems(warnings: list[str], notes: list[str]) -> str:
    lis = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    body = f'<ul class="warnings">{lis}</ul>' if lis else "<p>None.</p>"
    if notes:
        body += f'<p class="meta notes">Notes: {esc(" ".join(_sentence(n) for n in notes))}</p>'
    return f'<section id="warnings"><h2>Warnings ({len(warnings)})</h2>\n{body}</section>'


def _sentence(text: str) -> str:
    return text if text.rstrip().endswith((".", ")")) else text.rstrip() + "."


def _inventory(rm: RunMetrics, log: pd.DataFrame | None) -> str:
    """One run's inputs, folded: where its metrics come from, its checkpoints, its block table."""
    df = rm.frame
    source = "run directory" if rm.run is not None else "metrics directory (opdlens analyze)"
    training = (
        f"Training log: <code>{esc(log.attrs.get('source', 'given'))}</code> "
        f"({esc(log.attrs.get('format', ''))}, {len(log)} logged steps)."
        if log is not None
        else "Training log: none found."
    )
    parts = [
        f"<details><summary>{esc(rm.label)}: checkpoints and block table</summary>",
        f'<p class="meta">{esc(source)}: <code>{esc(rm.source)}</code>; metrics: '
        f"<code>{esc(rm.metrics_dir)}</code>. Steps analysed: "
        f"{esc(', '.join(str(s) for s in _steps(rm)))}; final step {int(df['step'].max())}; "
        f"{df['tensor'].nunique()} tensors, {len(df)} rows. {training}</p>",
    ]
    if not rm.checkpoints.empty:
        parts.append(table_html(rm.checkpoints))
    parts.append(
        f"<p>Update share and low-rank energy by block at step {int(df['step'].max())}:</p>"
    )
    parts += [table_html(rm.summary), "</details>"]
    return "\n".join(parts)


def _provenance(sources: Sources, options: dict[str, Any]) -> str:
    own = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "runs": {rm.label: str(rm.source) for rm in sources.runs},
        "options": options,
    }
    parts = [f"<details><summary>provenance of this report</summary><pre>"
             f"{esc(json.dumps(own, indent=2))}</pre></details>"]  # fmt: skip
    for rm in sources.runs:
        text = json.dumps(rm.provenance, indent=2, default=str) if rm.provenance else "(none)"
        parts.append(
            f"<details><summary>provenance of the analysis of {esc(rm.label)} "
            f"({esc(rm.metrics_dir / 'provenance.json')})</summary><pre>{esc(text)}</pre></details>"
        )
    return "\n".join(parts)


def _figures(figures: FigureSet, skip: Iterable[str]) -> str:
    stems = [s for s in figures.paths if s not in (*_OWN_SECTION, *skip)]
    if not stems:
        return ""
    return "\n".join(
        ['<section id="figures"><h2>Figures</h2>', *(figure_html(figures, s) for s in stems),
         "</section>"]
    )  # fmt: skip


def render_report(
    sources: Sources, figures: FigureSet, *, title: str | None = None, top: int = 20,
    options: dict[str, Any] | None = None, findings: GroupFindings | None = None,
    band: str = "sd", foresight: pd.DataFrame | None = None,
    ablation: Mapping[str, Ablation] | None = None, online: Sequence[OnlineEffOPD] = (),
) -> str:  # fmt: skip
    """The report page as one HTML string; images are data: URIs, nothing loads from a network.

    Order: findings (verdicts, scores, online EffOPD, key figure), one section per analysis
    (groups, figures, foresight, ablation, online EffOPD, top tensors), warnings with a line of
    notes, then the inventories (checkpoints, block tables, provenance) folded.
    """
    labels = [rm.label for rm in sources.runs]
    title = title or f"opdlens report: {' vs '.join(labels)}"
    warnings, notes = _messages(sources, figures)
    key = key_figure(figures)
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">How post-training moved the weights, from the saved checkpoints '
        f"(opdlens {esc(versions()['opdlens'])}). Δ_t = W_t − W_0 per tensor; definitions in "
        "each caption.</p>",
        _findings(sources, findings, online, figures, key),
        groups_section(findings, band) if findings is not None else "",
        _figures(figures, [key] if key else []),
        foresight_section(figures, foresight), ablation_section(figures, ablation),
        online_section(online),
        f'<section id="top"><h2>Top {top} tensors by update share at the final step</h2>',
        top_table(sources.top_tensors(top), sources.final_steps), "</section>",
        _problems(warnings, notes),
        '<section id="inventories"><h2>Inventories</h2>',
        *(_inventory(rm, sources.training.get(rm.label)) for rm in sources.runs),
        _provenance(sources, options or {}), "</section>",
    ]  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head>"
        f"<body>\n{chr(10).join(b for b in body if b)}\n</body></html>\n"
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
    online: Sequence[OnlineEffOPD] | None = None,
) -> Path:
    """Write out_dir/report.html (figures saved under out_dir/figures/ and embedded); return it.

    groups ({"OPD": ["OPD-1", "OPD-2"], …}: run labels) adds the groups section (mean ± sd,
    differences with 95 % bootstrap intervals, the claims' verdicts) and draws grouped figures
    (group means with a band: band="sd" ±1 sd, "range" min–max). foresight (opdlens.foresee's
    rows with a `run` column, e.g. from analysis.side_inputs.compute_foresight) and ablation (label →
    opdlens.ablate's result (side_inputs.load_ablation reads its --out)) add a section each.
    online (side_inputs.load_online_effopd of each run; default: the effopd_candidates.csv
    EffOPDCallback left in each run directory) adds the online EffOPD section.

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
    if online is None:
        online = find_online_effopd([(rm.label, rm.source) for rm in sources.runs if rm.run])
    out = writable_dir(out_dir, [*runs, *inputs], "report")
    if figures is None:
        figures = write_figures(
            sources.frame, out / "figures", spectra=sources.spectra, history=sources.history,
            errors=sources.errors, training=sources.training, groups=groups, band=band,
            foresight=foresight, ablation=abl,
        )  # fmt: skip
    page = render_report(sources, figures, title=title, top=top, options=options,
                         findings=findings, band=band, foresight=foresight, ablation=abl,
                         online=online)  # fmt: skip
    path = out / REPORT_FILE
    write_text_atomic(path, page)
    logger.info("wrote %s (%d bytes)", path, len(page))
    return path
