"""Tests for the paper-style plotting functions and figure export."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from opdlens.viz.plots import (
    GAP_THRESHOLD,
    alignment_by_step,
    allocation_heatmap_figure,
    allocation_strip_figure,
    block_norms,
    energy_by_rank,
    energy_by_step,
    error_vs_alpha,
    replay_scores,
    spectra,
)
from opdlens.viz.save import save_figure
from opdlens.viz.style import new_figure

RUNS = ("opd", "rl")
STEPS = (1, 2, 4, 8)
KS = (1, 4, 16)
LAYER_KINDS = {
    "q_proj": ("attn", 64, 64),
    "k_proj": ("attn", 16, 64),
    "v_proj": ("attn", 16, 64),
    "o_proj": ("attn", 64, 64),
    "gate_proj": ("mlp", 128, 64),
    "up_proj": ("mlp", 128, 64),
    "down_proj": ("mlp", 64, 128),
    "norm": ("norm", 64, 1),
}
OTHER = {
    "model.embed_tokens.weight": ("embed", "embed_tokens", 256, 64),
    "model.norm.weight": ("norm", "norm", 64, 1),
    "lm_head.weight": ("head", "lm_head", 256, 64),
}


def _tensor_rows() -> list[dict]:
    rows = []
    for layer in range(3):
        for kind, (block, r, c) in LAYER_KINDS.items():
            name = f"model.layers.{layer}.{kind}.weight"
            rows.append(dict(tensor=name, layer=layer, block=block, kind=kind, rows=r, cols=c))
    for name, (block, kind, r, c) in OTHER.items():
        rows.append(dict(tensor=name, layer=pd.NA, block=block, kind=kind, rows=r, cols=c))
    return rows


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    records = []
    for run in RUNS:
        for step in STEPS:
            for base in _tensor_rows():
                # 1-D tensors (norms) have cols = 1 and no spectrum metrics.
                flat = base["cols"] == 1
                rec = dict(base, run=run, step=step, expert=pd.NA)
                rec["numel"] = rec["rows"] if flat else rec["rows"] * rec["cols"]
                rec["update_norm"] = rng.uniform(0.1, 2.0) * step**0.5
                rec["base_norm"] = rng.uniform(5, 10)
                rec["rel_update_norm"] = rec["update_norm"] / rec["base_norm"]
                energies = np.sort(rng.uniform(0.2, 1.0, len(KS)))
                for k, e in zip(KS, energies, strict=True):
                    rec[f"energy_k{k}"] = np.nan if flat else e
                    rec[f"align_left_k{k}"] = np.nan if flat else rng.uniform(0, 1)
                    rec[f"align_right_k{k}"] = np.nan if flat else rng.uniform(0, 1)
                    # K=16 is ill-defined everywhere; K=1 never; K=4 at random.
                    gap = {1: 0.5, 4: rng.choice([1e-3, 0.3]), 16: 1e-4}[k]
                    rec[f"gap_k{k}"] = np.nan if flat else gap
                rec["stable_rank"] = np.nan if flat else rng.uniform(1, 5)
                rec["cos_to_final"] = rng.uniform(0, 1)
                records.append(rec)
    df = pd.DataFrame.from_records(records)
    sq = df["update_norm"] ** 2
    df["update_share"] = sq / sq.groupby([df["run"], df["step"]]).transform("sum")
    df["step"] = df["step"].astype("int64")
    df["layer"] = df["layer"].astype("Int64")
    df["expert"] = df["expert"].astype("Int64")
    for col in ("rows", "cols", "numel"):
        df[col] = df[col].astype("int64")
    return df


def _kinds_order(kinds: set[str]) -> list[str]:
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "norm"]
    return [k for k in order if k in kinds]


def test_allocation_heatmap_matches_pivot(metrics: pd.DataFrame) -> None:
    fig = allocation_heatmap_figure(metrics)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and len(fig.axes) == 3  # two runs and a shared colour bar
    for ax, run in zip(panels, RUNS, strict=True):
        final = metrics[(metrics.run == run) & (metrics.step == 8) & metrics.layer.notna()]
        pivot = final.pivot_table(index="layer", columns="kind", values="update_share")
        pivot = pivot[_kinds_order(set(pivot.columns))]
        image = ax.images[0].get_array()
        np.testing.assert_allclose(image.filled(np.nan), pivot.to_numpy(float), rtol=1e-12)
        assert [t.get_text() for t in ax.get_xticklabels()] == list(pivot.columns)
        assert run in ax.get_title() and "step 8" in ax.get_title()
    clims = {ax.images[0].get_clim() for ax in panels}
    assert len(clims) == 1  # one colour scale
    layered = metrics[(metrics.step == 8) & metrics.layer.notna()]
    assert clims.pop()[1] == pytest.approx(layered.update_share.max())


def test_allocation_heatmap_step_and_runs(metrics: pd.DataFrame) -> None:
    fig = allocation_heatmap_figure(metrics, step=2, runs=["rl"])
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title().startswith("rl · step 2")
    with pytest.raises(ValueError, match=r"'step' parameter .* Got 3 instead; run 'opd' has"):
        allocation_heatmap_figure(metrics, step=3)
    with pytest.raises(ValueError, match=r"'runs' parameter .* Got \['sft'\]"):
        allocation_heatmap_figure(metrics, runs=["sft"])


def test_allocation_strip(metrics: pd.DataFrame) -> None:
    fig = allocation_strip_figure(metrics, run="opd")
    assert len([ax for ax in fig.axes if ax.images]) == len(STEPS)
    fig = allocation_strip_figure(metrics, run="rl", steps=[2, 8])
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["step 2", "step 8"]
    with pytest.raises(ValueError, match=r"'run' parameter of allocation_strip_figure is needed"):
        allocation_strip_figure(metrics)
    with pytest.raises(ValueError, match=r"Got \[3\] instead; the run has \[1, 2, 4, 8\]"):
        allocation_strip_figure(metrics, run="opd", steps=[3])


def test_allocation_strip_fits_the_report_column(metrics: pd.DataFrame) -> None:
    fig = allocation_strip_figure(
        metrics, run="opd"
    )  # four panels: three, then one below the first
    # The report shows a figure at its print size up to ~11 in: wider ones shrink their labels.
    assert fig.get_size_inches()[0] <= 10
    panels = [ax for ax in fig.axes if ax.images]
    fig.canvas.draw()
    kinds = [[t.get_text() for t in ax.get_xticklabels() if t.get_text()] for ax in panels]
    assert kinds[0] == [] and kinds[1] == kinds[2] == kinds[3] == _kinds_order(set(LAYER_KINDS))
    assert [ax.get_ylabel() for ax in panels] == ["layer", "", "", "layer"]
    assert min(t.get_fontsize() for ax in panels for t in ax.get_xticklabels()) >= 7.5


def test_block_norms(metrics: pd.DataFrame) -> None:
    ax = block_norms(metrics)
    assert len(ax.lines) == len(RUNS) * 5  # attn, mlp, embed, norm, head
    line = next(ln for ln in ax.lines if ln.get_label() == "rl · mlp")
    rows = metrics[(metrics.run == "rl") & (metrics.block == "mlp")]
    expected = [np.sqrt((rows[rows.step == s].update_norm ** 2).sum()) for s in STEPS]
    np.testing.assert_allclose(line.get_ydata(), expected)
    np.testing.assert_array_equal(line.get_xdata(), STEPS)
    assert ax.get_yscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "opd" in legend and "rl" in legend


def _weighted_energy(rows: pd.DataFrame, col: str) -> float:
    w = rows.update_norm.to_numpy() ** 2
    v = rows[col].to_numpy()
    ok = np.isfinite(v)
    return float((w[ok] * v[ok]).sum() / w[ok].sum())


def test_energy_by_step(metrics: pd.DataFrame) -> None:
    ax = energy_by_step(metrics)  # default K: the middle one, 4
    assert len(ax.lines) == len(RUNS) * 4  # norms have no spectrum
    assert "top-4" in ax.get_ylabel()
    line = next(ln for ln in ax.lines if ln.get_label() == "opd · attn")
    rows = metrics[(metrics.run == "opd") & (metrics.block == "attn")]
    expected = [_weighted_energy(rows[rows.step == s], "energy_k4") for s in STEPS]
    np.testing.assert_allclose(line.get_ydata(), expected)
    with pytest.raises(ValueError, match=r"'k' parameter .* \[1, 4, 16\]. Got 8 instead"):
        energy_by_step(metrics, k=8)


def test_energy_by_rank(metrics: pd.DataFrame) -> None:
    fig, axes = new_figure(), None
    axes = fig.subplots(1, 2)
    assert energy_by_rank(metrics, ax=axes[1]) is axes[1]
    ax = axes[1]
    assert len(ax.lines) == len(RUNS) * 4 and not axes[0].lines
    line = next(ln for ln in ax.lines if ln.get_label() == "rl · head")
    rows = metrics[(metrics.run == "rl") & (metrics.block == "head") & (metrics.step == 8)]
    np.testing.assert_array_equal(line.get_xdata(), KS)
    expected = [_weighted_energy(rows, f"energy_k{k}") for k in KS]
    np.testing.assert_allclose(line.get_ydata(), expected)


def test_alignment_by_step(metrics: pd.DataFrame) -> None:
    ax = alignment_by_step(metrics, side="left")
    data_lines = [ln for ln in ax.lines if ln.get_marker() == "o"]
    baselines = [ln for ln in ax.lines if ln.get_marker() != "o"]
    assert len(data_lines) == len(RUNS) * len(KS) and len(baselines) == len(KS)
    line = next(ln for ln in data_lines if ln.get_label() == "opd · K=4")
    two_d = metrics[(metrics.run == "opd") & (metrics.cols > 1) & (metrics.kind != "norm")]
    expected = [_weighted_energy(two_d[two_d.step == s], "align_left_k4") for s in STEPS]
    np.testing.assert_allclose(line.get_ydata(), expected)
    all_2d = metrics[np.isfinite(metrics.align_left_k16)]
    assert baselines[2].get_ydata()[0] == pytest.approx(
        (np.minimum(16 / all_2d.rows, 1) * 1)
        .groupby([all_2d.run, all_2d.step])
        .apply(lambda s: np.average(s, weights=all_2d.loc[s.index, "update_norm"] ** 2))
        .mean()
    )
    # K=16 has gap < GAP_THRESHOLD everywhere: every K=16 point is hollow grey; K=1 none.
    flagged = [c.get_offsets() for c in ax.collections]
    k16 = {
        tuple(p) for ln in data_lines if ln.get_label().endswith("K=16") for p in ln.get_xydata()
    }
    k1 = {tuple(p) for ln in data_lines if ln.get_label().endswith("K=1") for p in ln.get_xydata()}
    marked = {tuple(p) for offsets in flagged for p in np.asarray(offsets)}
    assert k16 <= marked and not (k1 & marked)
    assert GAP_THRESHOLD == 1e-2


def test_alignment_both_and_errors(metrics: pd.DataFrame) -> None:
    ax = alignment_by_step(metrics)
    line = next(ln for ln in ax.lines if ln.get_label() == "rl · K=1")
    rows = metrics[(metrics.run == "rl") & (metrics.step == 2)].copy()
    rows["mean"] = (rows.align_left_k1 + rows.align_right_k1) / 2
    assert line.get_ydata()[1] == pytest.approx(_weighted_energy(rows, "mean"))
    with pytest.raises(ValueError, match=r"'side' parameter .* Got 'up' instead"):
        alignment_by_step(metrics, side="up")
    with pytest.raises(ValueError, match=r"needs the columns .*'gap_k4'.*\(missing \['gap_k4'\]\)"):
        alignment_by_step(metrics.drop(columns="gap_k4"))


def test_spectra() -> None:
    sigma = {"a": [1.0, 3.0, 2.0, 0.5], "b": np.geomspace(1, 1e-3, 10)}
    ax = spectra(sigma)
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0, 2.0, 1.0, 0.5])
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="'b' passed to spectra must be a 1-D array"):
        spectra({"b": np.ones((2, 2))})


def test_replay_scores() -> None:
    history = pd.DataFrame(
        {
            "step": [1, 1, 2, 2, 2, 4, 4],
            "anchor": [0, 0, 1, 1, 1, 2, 2],
            "candidate": [0, 1, 0, 1, 2, 0, 1],
            "alpha": [0.0, 2.0, 0.0, 2.0, 2 / 3, 0.0, 2.0],
            "multiple": [0.0, 2.0, 0.0, 2.0, 4.0, 0.0, 2.0],
            "score": [0.1, 0.05, 0.2, 0.3, 0.35, 0.4, 0.3],
            "accepted": [False, False, False, True, True, False, False],
        }
    )
    ax = replay_scores(history)
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert {"1", "2", "4"} <= set(labels) and not any(t.endswith(".0") for t in labels)
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.1, 0.2, 0.4])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.1, 0.35, 0.4])
    assert len(ax.collections[0].get_offsets()) == 2 and len(ax.collections[1].get_offsets()) == 2
    assert any("offline replay" in t.get_text() for t in ax.texts)
    with pytest.raises(ValueError, match=r"'history' argument of replay_scores needs .*'accepted'"):
        replay_scores(history.drop(columns="accepted"))


def test_error_vs_alpha() -> None:
    errors = pd.DataFrame(
        {"alpha": [0.5, 1, 2, 0.5, 1, 2], "target_step": [8] * 3 + [16] * 3,
         "rel_error": [0.8, 0.6, 0.9, 0.9, 0.7, 0.5]}
    )  # fmt: skip
    ax = error_vs_alpha(errors)
    assert len(ax.lines) == 3  # two targets and the standing-still line
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.9, 0.7, 0.5])


def test_error_vs_alpha_gives_every_target_its_own_colour() -> None:
    targets = [25, 32, 50, 64, 75, 100, 125, 128, 150, 175, 200, 256]
    errors = pd.DataFrame(
        [{"alpha": a, "target_step": t, "rel_error": 0.5 + t / 1000} for t in targets
         for a in (0.5, 1, 2)]
    )  # fmt: skip
    ax = error_vs_alpha(errors)
    lines = ax.lines[: len(targets)]  # then the standing-still line
    assert [ln.get_label() for ln in lines] == [f"$s$ = {t}" for t in targets]
    colors = [mpl.colors.to_hex(ln.get_color()) for ln in lines]
    assert len(set(colors)) == len(targets)  # 8 Okabe–Ito colours would repeat from the 9th
    lightness = [sum(mpl.colors.to_rgb(c)) for c in colors]
    assert lightness == sorted(lightness)  # later target steps are lighter


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
    with pytest.raises(ValueError, match=pattern + r".*Pass the DataFrame returned by Run.analyze"):
        func(bad)
    with pytest.raises(TypeError, match=f"'df' argument of {func.__name__} must be a pandas"):
        func(metrics.to_dict())


def test_style_is_local_and_sticks(metrics: pd.DataFrame, tmp_path: Path) -> None:
    family = list(mpl.rcParams["font.family"])
    ax = block_norms(metrics)
    assert list(mpl.rcParams["font.family"]) == family
    ax.figure.canvas.draw()  # outside the style: tick labels must still be serif
    label = ax.get_xticklabels()[0]
    assert label.get_fontfamily() == ["serif"]


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


_HISTORY = pd.DataFrame(
    {"step": [1, 2, 2], "anchor": [0, 1, 1], "candidate": [0, 0, 1], "alpha": [0.0, 0.0, 2.0],
     "multiple": [0.0, 0.0, 2.0], "score": [0.1, 0.2, 0.3], "accepted": [False, False, True]}
)  # fmt: skip
_ERRORS = pd.DataFrame({"alpha": [0.5, 1.0], "target_step": [8, 8], "rel_error": [0.8, 0.6]})


@pytest.mark.parametrize(
    "draw",
    [
        lambda m, ax: block_norms(m, ax=ax),
        lambda m, ax: energy_by_step(m, ax=ax),
        lambda m, ax: energy_by_rank(m, ax=ax),
        lambda m, ax: alignment_by_step(m, ax=ax),
        lambda m, ax: spectra({"a": [3.0, 1.0]}, ax=ax),
        lambda m, ax: replay_scores(_HISTORY, ax=ax),
        lambda m, ax: error_vs_alpha(_ERRORS, ax=ax),
    ],
    ids=["block_norms", "energy_by_step", "energy_by_rank", "alignment_by_step", "spectra",
         "replay_scores", "error_vs_alpha"],
)  # fmt: skip
def test_each_plot_draws_on_the_given_axes_and_returns_it(metrics: pd.DataFrame, draw) -> None:
    fig = new_figure()
    left, right = fig.subplots(1, 2)
    assert draw(metrics, right) is right
    assert right.lines and not left.lines and not left.collections and len(fig.axes) == 2
    alone = draw(metrics, None)  # no ax: a new Figure with one Axes
    assert alone.figure is not fig and alone.figure.axes == [alone]


def test_figure_helpers_draw_into_the_given_figure(metrics: pd.DataFrame) -> None:
    heatmap, strip = new_figure(9.0, 4.0), new_figure(9.0, 4.0)
    assert allocation_heatmap_figure(metrics, fig=heatmap) is heatmap
    assert allocation_strip_figure(metrics, run="rl", steps=[2, 8], fig=strip) is strip
    assert len([ax for ax in heatmap.axes if ax.images]) == 2
    assert [ax.get_title() for ax in strip.axes if ax.images] == ["step 2", "step 8"]
    for fig in (heatmap, strip):
        assert tuple(fig.get_size_inches()) == (9.0, 4.0)  # the given figure keeps its size


def test_spectra_from_the_tidy_frame() -> None:
    tidy = pd.DataFrame({"run": "OPD", "tensor": ["a", "a", "a", "b", "b"],
                         "step": 4, "index": [2, 1, 3, 1, 2], "sigma": [2.0, 3.0, 1.0, 5.0, 4.0]})  # fmt: skip
    ax = spectra(tidy)
    assert [ln.get_label() for ln in ax.lines] == ["a", "b"]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"'spectra' argument of spectra needs the columns"):
        spectra(tidy.drop(columns="sigma"))
