"""The paper-style figures as `opdlens.plots.<name>(df)`: each returns a matplotlib Figure."""

from .viz.export import save_figure
from .viz.plots import (
    alignment_by_step,
    allocation_heatmap,
    allocation_strip,
    block_norms,
    energy_by_rank,
    energy_by_step,
    error_vs_alpha,
    replay_scores,
    spectra,
)

__all__ = [
    "alignment_by_step",
    "allocation_heatmap",
    "allocation_strip",
    "block_norms",
    "energy_by_rank",
    "energy_by_step",
    "error_vs_alpha",
    "replay_scores",
    "save_figure",
    "spectra",
]
