"""viz.style: the paper style applies per call and leaves global state alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import pandas as pd

from opdlens.viz.plots import (
    block_norms,
)


def test_style_is_local_and_sticks(metrics: pd.DataFrame, tmp_path: Path) -> None:
    family = list(mpl.rcParams["font.family"])
    ax = block_norms(metrics)
    assert list(mpl.rcParams["font.family"]) == family
    ax.figure.canvas.draw()  # outside the style: tick labels must still be serif
    label = ax.get_xticklabels()[0]
    assert label.get_fontfamily() == ["serif"]
