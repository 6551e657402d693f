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
from opdlens.viz.style import paper_style


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


def test_save_figure_lays_out_once_and_crops_as_matplotlib_does(
    metrics: pd.DataFrame, tmp_path: Path
) -> None:
    fig = energy_by_step(metrics).figure
    engine = fig.get_layout_engine()
    assert engine is not None  # a constrained layout, as every opdlens figure has
    draws: list[object] = []
    fig.canvas.mpl_connect("draw_event", draws.append)
    paths = save_figure(fig, tmp_path / "figs", "energy")
    # One pass that lays it out and measures it, then one draw per format; savefig with
    # bbox_inches="tight" draws twice per format and lays the figure out each time.
    assert len(draws) == 1 + len(paths)
    assert fig.get_layout_engine() is engine
    ref = energy_by_step(metrics).figure
    with paper_style():
        ref.savefig(tmp_path / "ref.png", dpi=200, bbox_inches="tight")
    with Image.open(paths[2]) as png, Image.open(tmp_path / "ref.png") as want:
        assert png.size == pytest.approx(want.size, abs=2)
