"""Every plot checks its frame and says what is missing (opdlens.frames.check_frame)."""

from __future__ import annotations

import pandas as pd
import pytest

from opdlens.viz.plots import (
    allocation_heatmap_figure,
    allocation_strip_figure,
    block_norms,
    energy_by_rank,
    energy_by_step,
)


@pytest.mark.parametrize(
    "func",
    [
        allocation_heatmap_figure,
        allocation_strip_figure,
        block_norms,
        energy_by_step,
        energy_by_rank,
    ],
)
def test_missing_columns(metrics: pd.DataFrame, func) -> None:
    bad = metrics.drop(columns=["update_norm", "update_share"])
    pattern = rf"The 'df' argument of {func.__name__} needs the columns \[.*\]; got \[.*\]"
    with pytest.raises(
        ValueError, match=pattern + r".*Pass the DataFrame returned by opdlens.analyze"
    ):
        func(bad)
    with pytest.raises(TypeError, match=f"'df' argument of {func.__name__} must be a pandas"):
        func(metrics.to_dict())
