"""The paper-style figures as `opdlens.plots.<name>(df)`: each returns a matplotlib Figure."""

from .viz import plots as _plots
from .viz.export import save_figure
from .viz.plots import *  # noqa: F403  (the public figure functions, listed in their __all__)

__all__ = [*_plots.__all__, "save_figure"]
