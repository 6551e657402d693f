"""viz/overlap: the overlap figure drawn from opdlens.compare's rows of real bf16 runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from safetensors.torch import load_file

import opdlens
from opdlens.errors import NothingToDrawError, OptionError
from opdlens.viz.overlap import overlap_by_block, overlap_figure, subspace_by_block
from viz.sparse_runs import STEPS, write_sparse_run


def changed(root: Path, name: str) -> np.ndarray:
    """The elements whose stored bf16 bits differ between the base and the last step."""
    w0 = load_file(str(root / "checkpoint-0" / "model.safetensors"))[name]
    wt = load_file(str(root / f"checkpoint-{STEPS[-1]}" / "model.safetensors"))[name]
    return w0.float().numpy() != wt.float().numpy()  # bf16 → float32 is exact: equal bits


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, list[Path]]:
    root = tmp_path_factory.mktemp("overlap")
    runs = [write_sparse_run(root / f"r{i}", i) for i in range(3)]
    df = opdlens.compare_group([opdlens.open_run(r) for r in runs], ranks=(1, 4), workers=1)
    labels = {str(r): f"R-{i + 1}" for i, r in enumerate(runs)}
    return df.assign(run_a=df["run_a"].map(lambda p: labels.get(p, p)),
                     run_b=df["run_b"].map(lambda p: labels.get(p, p))), runs  # fmt: skip


def test_bars_are_the_block_overlap_ratios_numpy_gives(compared) -> None:
    df, runs = compared
    ax = overlap_by_block(df)
    blocks = [t.get_text() for t in ax.get_xticklabels()]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 3 * len(blocks)  # three pairs of runs
    # The MLP bar of pair R-1 vs R-2, from the bf16 bits of the files.
    names = [
        n for n in load_file(str(runs[0] / "checkpoint-0" / "model.safetensors")) if ".mlp." in n
    ]
    a = np.concatenate([changed(runs[0], n).ravel() for n in names])
    b = np.concatenate([changed(runs[1], n).ravel() for n in names])
    jaccard = np.count_nonzero(a & b) / np.count_nonzero(a | b)
    pa, pb = a.mean(), b.mean()
    ratio = jaccard / (pa * pb / (pa + pb - pa * pb))
    assert bars[blocks.index("mlp")].get_height() == pytest.approx(ratio, rel=1e-9)
    assert ratio > 2  # the shared part of the masks: far above chance


def test_subspace_panel_and_figure(compared) -> None:
    df, _ = compared
    ax = subspace_by_block(df, 4)
    assert ax.get_ylabel() == "top-4 subspace overlap"
    blocks = [t.get_text() for t in ax.get_xticklabels()]
    first = df[(df["scope"] == "block") & (df["run_a"] == "R-1") & (df["run_b"] == "R-2")]
    first = first.set_index("group")["subspace_left_k4"].reindex(blocks).to_numpy()
    heights = [p.get_height() for p in ax.patches if isinstance(p, Rectangle)][: len(blocks)]
    np.testing.assert_allclose(np.nan_to_num(heights), np.nan_to_num(first))
    fig = overlap_figure(df)
    assert len(fig.axes) == 2
    fig.canvas.draw()
    for ax in fig.axes:  # each legend sits beside its panel, not over the bars
        legend = ax.get_legend().get_window_extent()
        assert not legend.overlaps(ax.get_window_extent())


def test_bad_frames_are_refused(compared) -> None:
    df, _ = compared
    with pytest.raises(OptionError, match="run_a"):
        overlap_by_block(df.drop(columns="run_a"))
    with pytest.raises(NothingToDrawError, match="no block rows"):
        overlap_by_block(df[df["scope"] == "tensor"])
