"""The paper-style plots as `opdlens.plots.<name>(df, ax=None)`, each returning the Axes it drew on.

Figure-level helpers (`*_figure`, `single_figure`) compose them and return a matplotlib Figure;
`save_figure` writes one as PDF, SVG and PNG.
"""

from .viz import plots as _plots
from .viz.figures import alignment_figure, single_figure, training_figure
from .viz.plots import *  # noqa: F403  (the public plot functions, listed in their __all__)
from .viz.save import save_figure

__all__ = [
    *_plots.__all__,
    "alignment_figure",
    "save_figure",
    "single_figure",
    "training_figure",
]
