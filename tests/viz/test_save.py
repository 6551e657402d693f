"""viz.save: a figure saved as PDF, SVG and 200-dpi PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from opdlens.viz.plots import (
    energy_by_step,
)
from opdlens.viz.save import save_figure


def test_save_figure(metrics: pd.DataFrame, tmp_path: Path) -> None:
    paths = save_figure(energy_by_step(metrics).figure, tmp_path / "figs", "energy")
    assert [p.name for p in paths] == ["energy.pdf", "energy.svg", "energy.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in paths[1].read_bytes()[:2000]
    with Image.open(paths[2]) as png:
        assert png.format == "PNG"
        assert png.info["dpi"] == pytest.approx((200, 200), abs=0.01)
        assert png.size[0] > 4 * 200 * 0.8  # a ~4.2 in wide figure at 200 dpi
    with pytest.raises(ValueError, match="'stem' argument of save_figure must be a bare"):
        save_figure(Figure(), tmp_path, "a/b")


def test_save_figure_only_some_formats(metrics: pd.DataFrame, tmp_path: Path) -> None:
    paths = save_figure(energy_by_step(metrics).figure, tmp_path, "energy", ("png",))
    assert [p.name for p in paths] == ["energy.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["energy.png"]
    for bad in ((), ("jpg",)):
        with pytest.raises(ValueError, match="'formats' argument of save_figure"):
            save_figure(Figure(), tmp_path, "x", bad)
