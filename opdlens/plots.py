"""The paper-style plots as `opdlens.plots.<name>(df, ax=None)`, each returning the Axes it drew on.

Figure-level helpers (`*_figure`, `single_figure`) compose them and return a matplotlib Figure;
`save_figure` writes one as PDF, SVG and PNG. Groups of runs: `group_*` (group means with a
band) and `findings_figure`; foresight (opdlens.foresee) and ablation (opdlens.ablate) plots too.
"""

from typing import Any

from .analysis.findings import ablation_sentence
from .viz import plots as _plots
from .viz.ablation import ablation_figure, score_by_rank, utility_by_share
from .viz.figures import alignment_figure, single_figure, training_figure
from .viz.groups import (
    findings_figure,
    group_alignment_by_step,
    group_block_norms,
    group_energy_by_step,
    group_mean_frame,
)
from .viz.plots import *  # noqa: F403  (the public plot functions, listed in their __all__)
from .viz.save import save_figure

# Loaded on first use only: foresight_sentence lives with opdlens.foresee (which imports torch).
_FORESIGHT = ("alpha_star_by_step", "effopd_vs_optimal", "foresight_figure", "foresight_map",
              "foresight_sentence")  # fmt: skip

__all__ = [
    *_plots.__all__,
    *_FORESIGHT,
    "ablation_figure",
    "ablation_sentence",
    "alignment_figure",
    "findings_figure",
    "group_alignment_by_step",
    "group_block_norms",
    "group_energy_by_step",
    "group_mean_frame",
    "save_figure",
    "score_by_rank",
    "single_figure",
    "training_figure",
    "utility_by_share",
]


def __getattr__(name: str) -> Any:
    if name in _FORESIGHT:
        if name == "foresight_sentence":
            from .analysis import foresight as module
        else:
            from .viz import foresight as module  # type: ignore[no-redef]
        return getattr(module, name)
    raise AttributeError(f"module 'opdlens.plots' has no attribute {name!r}")
