"""Foresight and ablation in the figure set: the figures their tables allow, or a note."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ..extrapolation.ablate import Ablation

__all__ = ["analysis_specs"]

_Spec = tuple[str, str, str, Callable[[], Figure]]  # stem, title, caption, draw


def analysis_specs(
    foresight: pd.DataFrame | None, ablation: Mapping[str, Ablation] | None
) -> tuple[list[_Spec], list[str]]:
    """The foresight and ablation figures the inputs allow, and a note for each one missing."""
    from .ablation import ablation_figure
    from .foresight import foresight_figure

    specs: list[_Spec] = []
    notes: list[str] = []
    if foresight is not None and not foresight.empty:
        specs.append((
            "foresight", "Foresight: how close one extrapolation lands",
            "Top: for each run, the best relative error ‖θ_t + α(θ_t − θ_a) − θ_s‖ / ‖θ_t − θ_s‖ "
            "of the whole model (attention and MLP matrices; anchor a = the previous saved step; "
            "the best over α = 0.5, 1, 2, 4 and the closed-form α*) for step t against each "
            "later saved step s; below 1 the jump lands closer to θ_s than θ_t is. Bottom left: "
            "α* against the next saved step, per block (whole model in black), one line style "
            "per run. Bottom right: at EffOPD's scheduled steps, the cumulative α its candidates "
            "try (α₀ = 2, then α/(1+α)) against α*.",
            lambda: foresight_figure(foresight),
        ))  # fmt: skip
    else:
        notes.append(
            "figure foresight skipped: no foresight rows (--no-foresight, or no run directory "
            "with two saved steps after the base)."
        )
    if ablation:
        curves = {k: a.rank_curve for k, a in ablation.items() if not a.rank_curve.empty}
        specs.append((
            "ablation", "Marginal utility of each group's update",
            "Utility of each group's update, S(θ_T) − S(θ_T without the group's update), against "
            "its share of ‖Δ_T‖_F², one panel per run (the `opdlens ablate` outputs given); "
            "colour is the block. Last panel (when ablated with ranks): the score of "
            "θ_0 + rank-k(Δ_T) against k, with θ_T dashed and θ_0 dotted.",
            lambda: ablation_figure({k: a.ablation for k, a in ablation.items()}, curves or None),
        ))  # fmt: skip
    else:
        notes.append("figure ablation skipped: no ablation results (--ablation LABEL=DIR).")
    return specs, notes
