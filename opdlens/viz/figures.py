"""The paper's figure set from a metrics table (one or more runs): drawn, captioned and saved."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import NothingToDrawError, OptionError
from ..io.paths import writable_dir
from . import plots
from .analyses import analysis_specs
from .save import FORMATS, FigureSet, save_figure
from .style import new_figure, paper_style
from .training import training_caption, training_figure

if TYPE_CHECKING:
    from ..report.sources import ReportOptions, Sources

logger = logging.getLogger(__name__)

__all__ = [
    "FigureSet",
    "Panel",
    "alignment_figure",
    "draw_figures",
    "single_figure",
    "training_figure",
    "write_figures",
]

_Spec = tuple[str, str, str, Callable[[], Figure]]  # stem, title, caption, draw
_OFFLINE = "Offline replay: training did not continue from an accepted candidate."


@dataclass
class Panel:
    """One drawn figure: its file stem, title, caption and the Figure."""

    stem: str
    title: str
    caption: str
    figure: Figure


def single_figure(plot: Callable[..., Axes], *args: object, **kwargs: object) -> Figure:
    """A new one-panel Figure with `plot(*args, ax=…, **kwargs)` drawn on it."""
    with paper_style():
        fig = new_figure()
        plot(*args, ax=fig.add_subplot(), **kwargs)
    return fig


def alignment_figure(df: pd.DataFrame, *, fig: Figure | None = None) -> Figure:
    """Left and right alignment with the final update side by side, one legend below both."""
    with paper_style():
        fig = new_figure(8.6, 3.6) if fig is None else fig
        axes = fig.subplots(1, 2, sharey=True)
        for ax, side, what in zip(axes, ("left", "right"), ("left (U)", "right (V)"), strict=True):
            plots.alignment_by_step(df, side=side, ax=ax)
            ax.set_title(f"{what} singular subspaces")
        axes[1].set_ylabel("")
        # One legend below both panels, so neither panel's curves hide behind it.
        legend = axes[0].get_legend()
        handles = list(legend.legend_handles)
        labels = [t.get_text().replace("K/rows", "K/rows (left), K/cols (right)")
                  for t in legend.get_texts()]  # fmt: skip
        for ax in axes:
            ax.get_legend().remove()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    return fig


def _score_label(history: pd.DataFrame) -> str:
    scorer = history.attrs.get("scorer")
    label = f"score ({scorer})" if scorer else "validation score"
    return f"{label}, hindsight oracle" if history.attrs.get("oracle") else label


def _with_title(fig: Figure, title: str) -> Figure:
    with paper_style():
        fig.axes[0].set_title(title)
    return fig


def _spectra_panel(label: str, sp: pd.DataFrame, several: bool) -> Panel:
    """The spectra of one run: its rows of the tidy spectra frame (opdlens.analysis.spectra)."""
    step = int(sp["step"].iloc[0])
    which = "cached top-K singular values only" if sp["top_k_only"].any() else "full spectrum"
    title = f"{label}: step {step}, {which}" if several else f"step {step}, {which}"
    fig = _with_title(single_figure(plots.spectra, sp), title)
    caption = (
        f"Singular values σ_i of the update Δ_T = W_T − W_0 at step {step} for the "
        f"{sp['tensor'].nunique()} matrices with the largest update share ({which}; log scale). "
        "A fast drop after the first few values means a low-rank update."
    )
    stem = f"spectra-{label}" if several else "spectra"
    return Panel(stem, f"Singular-value spectra of Δ_T ({label})", caption, fig)


def draw_figures(
    sources: Sources, options: ReportOptions | None = None
) -> tuple[list[Panel], list[str]]:
    """Draw every figure the sources allow; return them and a note for each one skipped.

    With groups (sources.groups) lines are group means with a band (options.band "sd": ±1 sd,
    "range": min–max) and the claims' numbers are drawn per group; spectra, foresight and the
    training figure show each group's first run (sources.shown). A figure whose data is missing
    (no rows to draw, e.g. no per-layer tensors; a training log without accuracy or loss) is
    skipped with a note; any other error propagates.
    """
    from ..report.sources import ReportOptions  # the type of the value drawn, nothing more

    options = options or ReportOptions()
    df, runs = sources.frame, list(sources.shown)
    extra, notes = analysis_specs(sources)
    if sources.groups is not None:
        grouped = _group_specs(df, sources, options.band)
        df = df[df["run"].isin(runs)]
        notes.append(
            f"groups: spectra and the training figure show each group's first run ({', '.join(runs)})."
        )
        return _draw_all(grouped + extra, sources, df, runs, notes)
    several = len(runs) > 1
    specs: list[_Spec] = [
        ("allocation_heatmap", "Module allocation at the final step",
         "Share of the total squared update norm, ‖Δ‖_F² / Σ‖Δ‖_F², per layer and module kind "
         "at each run's final step, on one colour scale; grey cells have no such tensor. The "
         "title gives the share of tensors outside the layers (embeddings, final norm, head).",
         lambda: plots.allocation_heatmap_figure(df)),
    ]  # fmt: skip
    for run in runs:
        stem = f"allocation_strip-{run}" if several else "allocation_strip"
        specs.append((stem, f"Module allocation over steps ({run})",
                      "The allocation heatmap at up to six saved steps, first and last included.",
                      functools.partial(plots.allocation_strip_figure, df, run=run)))  # fmt: skip
    specs += [
        ("block_norms", "Update norm per block",
         "Update norm of each block, (Σ_block ‖Δ_t‖_F²)^½ with Δ_t = W_t − W_0, against step; "
         "colour is the block, line style the run.",
         lambda: single_figure(plots.block_norms, df)),
        ("energy_by_step", "Low-rank concentration against step",
         "Energy in the top-K singular directions, Σ_{i≤K} σ_i² / ‖Δ_t‖_F², per block against "
         "step (‖Δ‖_F²-weighted mean over the block's matrices); 1 means rank ≤ K.",
         lambda: single_figure(plots.energy_by_step, df)),
        ("energy_by_rank", "Low-rank concentration against K",
         "The same energy against K at each run's final step.",
         lambda: single_figure(plots.energy_by_rank, df)),
        ("alignment_by_step", "Alignment with the final update",
         "‖U_{t,K}ᵀ U_{T,K}‖_F² / K (left) and the same for V (right) against step, per K; the "
         "dashed line per K is a random K-dimensional subspace (K/rows, K/cols). Hollow grey "
         "points: the top-K subspace is ill-defined there (gap_K < 1e-2).",
         lambda: alignment_figure(df)),
    ]  # fmt: skip
    return _draw_all(specs + extra, sources, df, runs, notes)


def _group_specs(df: pd.DataFrame, sources: Sources, band: str) -> list[_Spec]:
    """The grouped figures: group-mean allocation, curves with a band, the claims per run."""
    from . import groups as g

    checked, findings = sources.groups, sources.findings
    assert checked is not None and findings is not None  # complete() computes both with groups
    if band not in g.BANDS:
        raise OptionError(
            f"The 'band' parameter must be one of {list(g.BANDS)}. Got {band!r} instead."
        )
    tail = g.band_caption(band, checked)
    shown = {name: f"{name} (mean of {len(runs)})" for name, runs in checked.items()}
    means = g.group_mean_frame(df, checked).replace({"run": shown})
    specs: list[_Spec] = [
        ("findings", "The paper's claims, run by run",
         "Each dot is one run's number, the bar its group's mean ± 1 sd; the text gives the "
         "difference of group means with its 95 % percentile bootstrap interval (10,000 "
         "resamples, seed 0). energy_k1: energy in the top direction of Δ_T (smallest K "
         "analysed); MLP share: Σ update share of the mlp block at the final step; alignment: "
         "top-K alignment with Δ_T at the first saved step.",
         lambda: g.findings_figure(findings)),
        ("allocation_heatmap", "Module allocation at the final step (group means)",
         "Share of the total squared update norm per layer and module kind at the final step, "
         "averaged over each group's runs, on one colour scale.",
         lambda: plots.allocation_heatmap_figure(means)),
        *((f"allocation_strip-{name}", f"Module allocation over steps ({name}, group mean)",
           "The group-mean allocation heatmap at up to six saved steps, first and last included.",
           functools.partial(plots.allocation_strip_figure, means, run=shown[name]))
          for name in checked),
        ("block_norms", "Update norm per block",
         f"Update norm of each block, (Σ_block ‖Δ_t‖_F²)^½, against step. {tail}",
         lambda: single_figure(g.group_block_norms, df, checked, band=band)),
        ("energy_by_step", "Low-rank concentration against step",
         f"Energy in the top-K singular directions per block against step (‖Δ‖_F²-weighted). {tail}",
         lambda: single_figure(g.group_energy_by_step, df, checked, band=band)),
        ("alignment_by_step", "Alignment with the final update",
         "Mean of the left and right top-K alignment with the final update, "
         f"‖U_{{t,K}}ᵀ U_{{T,K}}‖_F² / K and the same for V, against step, per K. {tail}",
         lambda: single_figure(g.group_alignment_by_step, df, checked, band=band)),
    ]  # fmt: skip
    return specs


def _draw_all(
    specs: list[_Spec], sources: Sources, df: pd.DataFrame, runs: list[str], notes: list[str]
) -> tuple[list[Panel], list[str]]:
    """Draw the specs, then the training, spectra, replay and error figures the sources allow."""
    several = len(runs) > 1
    spectra, history, errors = sources.spectra, sources.history, sources.errors
    if spectra is not None and not spectra.empty:
        spectra = spectra[spectra["run"].isin(runs)]
    logs = {run: log for run, log in sources.training.items() if run in runs}
    if logs:
        specs.append(("training_and_weights", "What the run learned, and how its weights moved",
                      training_caption(logs), lambda: training_figure(df, runs, logs)))  # fmt: skip
    panels: list[Panel] = []
    if not logs:
        notes.append(
            "figure training_and_weights skipped: no training log (trainer_state.json or a metric "
            "log beside the checkpoints, or --metrics FILE)."
        )
    for stem, title, caption, draw in specs:
        try:
            panels.append(Panel(stem, title, caption, draw()))
        except NothingToDrawError as e:
            notes.append(f"figure {stem} skipped: {e}")
    if spectra is not None and not spectra.empty:
        for label, sp in spectra.groupby("run", sort=False):
            panels.append(_spectra_panel(str(label), sp, several or str(label) not in runs))
    else:
        notes.append("figure spectra skipped: no spectra given (pass a run, or its metrics cache).")
    if history is not None:
        fig = single_figure(plots.replay_scores, history, score_label=_score_label(history))
        caption = (
            "EffOPD replay: score of each saved checkpoint (candidate 0) and of the extrapolated "
            "candidates θ_t + m(θ_t − θ_a) tried at it; triangles were accepted, crosses "
            f"rejected. {history.attrs.get('note', _OFFLINE)}"
        )
        panels.append(Panel("replay_scores", "EffOPD replay", caption, fig))
    else:
        notes.append("figure replay_scores skipped: no replay history (--replay DIR).")
    if errors is not None:
        fig = single_figure(plots.error_vs_alpha, errors)
        step = errors["step"].iloc[0] if "step" in errors else "t"
        anchor = errors["anchor"].iloc[0] if "anchor" in errors else "a"
        caption = (
            f"One-shot extrapolation θ_pred = θ_{step} + α(θ_{step} − θ_{anchor}): relative error "
            "‖θ_pred − θ_s‖ / ‖θ_t − θ_s‖ against α for each later saved step s; below the "
            "dashed line the prediction beats standing still."
        )
        panels.append(Panel("error_vs_alpha", "Prediction error against α", caption, fig))
    else:
        notes.append("figure error_vs_alpha skipped: no extrapolation errors (--errors CSV).")
    return panels, notes


def write_figures(
    sources: Sources,
    out_dir: str | Path,
    options: ReportOptions | None = None,
    formats: Sequence[str] = FORMATS,
) -> FigureSet:
    """Draw every figure (draw_figures) and save each as PDF, SVG and 200-dpi PNG in out_dir
    (or only `formats` of these)."""
    panels, notes = draw_figures(sources, options)
    out = FigureSet(notes=notes)
    writable_dir(out_dir)
    for p in panels:
        out.paths[p.stem] = save_figure(p.figure, Path(out_dir), p.stem, formats)
        out.titles[p.stem], out.captions[p.stem] = p.title, p.caption
    for note in notes:
        logger.info(note)
    return out
