"""Tests for the figure set: loading runs and metrics, spectra, and every figure saved three ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.numpy import load_file

from opdlens import open_run
from opdlens.analysis.results import (
    is_metrics_dir,
    load_errors,
    load_history,
    load_metrics,
    top_tensors,
)
from opdlens.analysis.spectra import run_spectra, spectra_frame
from opdlens.errors import OpdlensError
from opdlens.report import SourceOptions, from_frame, load_sources
from opdlens.viz.figures import draw_figures, write_figures

CORE = ["allocation_heatmap", "block_norms", "energy_by_step", "energy_by_rank",
        "alignment_by_step"]  # fmt: skip


def _delta(run: Path, name: str, step: int) -> np.ndarray:
    w = load_file(str(run / f"checkpoint-{step}" / "model.safetensors"))[name]
    w0 = load_file(str(run / "checkpoint-0" / "model.safetensors"))[name]
    return w.astype("float64") - w0.astype("float64")


def test_load_metrics_adds_run_and_keeps_cumulative(viz_metrics: dict[str, Path]) -> None:
    df = load_metrics(viz_metrics["opd"], "OPD")
    assert is_metrics_dir(viz_metrics["opd"]) and not is_metrics_dir(viz_metrics["opd"].parent)
    assert (df["run"] == "OPD").all() and (df["span"] == "cumulative").all()
    assert sorted(df["step"].unique()) == [1, 2, 4]
    assert str(df["layer"].dtype) == "Int64"
    assert (load_metrics(viz_metrics["rl"])["run"] == "rl").all()  # label from "metrics-rl"
    with pytest.raises(FileNotFoundError, match=r"metrics.parquet.*opdlens analyze"):
        load_metrics(viz_metrics["opd"].parent / "nowhere")


def test_span_column_does_not_shadow_dataframe_methods(viz_metrics, tmp_path) -> None:
    df = load_metrics(viz_metrics["opd"], "OPD")
    assert "update" not in df.columns
    assert df.span.value_counts().to_dict() == {"cumulative": len(df)}
    old = tmp_path / "old-metrics"
    old.mkdir()
    raw = pd.read_parquet(viz_metrics["opd"] / "metrics.parquet")
    raw.rename(columns={"span": "update"}).to_parquet(old / "metrics.parquet")
    assert (load_metrics(old, "old")["span"] == "cumulative").all()


def test_top_tensors_sorted_by_share(viz_metrics: dict[str, Path]) -> None:
    df = pd.concat([load_metrics(viz_metrics[x], x) for x in ("opd", "rl")])
    top = top_tensors(df, 5)
    assert list(top["run"]) == ["opd"] * 5 + ["rl"] * 5
    final = df[(df["run"] == "opd") & (df["step"] == 4)]
    expected = final.sort_values("update_share", ascending=False)["tensor"].head(5)
    assert list(top["tensor"][:5]) == list(expected)
    assert (top["step"] == 4).all()


def test_spectra_from_run_match_numpy(
    viz_runs: dict[str, Path], viz_metrics: dict[str, Path]
) -> None:
    df = load_metrics(viz_metrics["opd"], "opd")
    sp = run_spectra(open_run(viz_runs["opd"]), df, n=4)
    assert not sp["top_k_only"].any() and (sp["step"] == 4).all() and sp["tensor"].nunique() == 4
    assert (sp["run"] == "opd").all()
    at = df[(df["step"] == 4) & df["stable_rank"].notna()]
    expected = at.groupby("tensor")["update_share"].sum().sort_values(ascending=False).head(4)
    assert list(pd.unique(sp["tensor"])) == list(expected.index)
    for name, rows in sp.groupby("tensor"):
        assert list(rows["index"]) == list(range(1, len(rows) + 1))
        sigma = rows["sigma"].to_numpy()
        ref = np.linalg.svd(_delta(viz_runs["opd"], name, 4), compute_uv=False)
        np.testing.assert_allclose(sigma, ref, rtol=1e-4, atol=1e-6 * ref[0])


def test_spectra_from_cache_are_top_k_and_labelled(
    viz_runs: dict[str, Path], viz_metrics: dict[str, Path], tmp_path: Path
) -> None:
    src = load_sources(SourceOptions((viz_metrics["opd"],), ("OPD",)), tmp_path)
    sp = src.spectra[src.spectra["run"] == "OPD"]
    assert sp["top_k_only"].all() and src.runs[0].run is None
    assert any("cached top-K" in n for n in src.notes)
    for name, rows in sp.groupby("tensor"):
        sigma = rows["sigma"].to_numpy()
        ref = np.linalg.svd(_delta(viz_runs["opd"], name, 4), compute_uv=False)
        assert sigma.size == 4
        np.testing.assert_allclose(sigma, ref[: sigma.size], rtol=1e-3, atol=1e-4 * ref[0])


@pytest.mark.slow
def test_write_figures_writes_every_format(viz_metrics: dict[str, Path], tmp_path: Path) -> None:
    src = load_sources(SourceOptions((viz_metrics["opd"],), ("OPD",), spectra=3), tmp_path)
    paths = [p for ps in write_figures(src, tmp_path / "figs").paths.values() for p in ps]
    stems = {p.stem for p in paths}
    assert stems == {*CORE, "allocation_strip", "spectra", "sparsity"}
    assert len(paths) == 3 * len(stems)
    for stem in stems:
        for suffix in (".pdf", ".svg", ".png"):
            assert (tmp_path / "figs" / f"{stem}{suffix}").stat().st_size > 1000
        with Image.open(tmp_path / "figs" / f"{stem}.png") as im:
            assert np.allclose(im.info["dpi"], (200, 200), atol=0.5)
            assert np.asarray(im.convert("L")).std() > 5  # not blank
    assert (tmp_path / "figs" / "block_norms.pdf").read_bytes().startswith(b"%PDF")


def test_compare_draws_runs_side_by_side(viz_metrics: dict[str, Path], tmp_path: Path) -> None:
    both = (viz_metrics["opd"], viz_metrics["rl"])
    src = load_sources(SourceOptions(both, ("OPD", "RL"), spectra=2), tmp_path)
    panels, notes = draw_figures(src)
    stems = [p.stem for p in panels]
    assert stems == ["allocation_heatmap", "allocation_strip-OPD", "allocation_strip-RL",
                     *CORE[1:], "sparsity", "spectra-OPD", "spectra-RL"]  # fmt: skip
    heatmap = panels[0].figure
    titles = [ax.get_title() for ax in heatmap.axes if ax.get_title()]
    assert titles[0].startswith("OPD · step 4") and titles[1].startswith("RL · step 4")
    legend = [t.get_text() for t in panels[3].figure.axes[0].get_legend().get_texts()]
    assert "OPD" in legend and "RL" in legend


def _history() -> pd.DataFrame:
    rows = [(1, 0, 0, 0.0, 0.0, 0.50, None), (1, 0, 1, 2.0, 2.0, 0.60, True),
            (1, 0, 2, 2 / 3, 4.0, 0.55, False), (2, 1, 0, 0.0, 0.0, 0.62, None),
            (2, 1, 1, 2.0, 2.0, 0.58, False)]  # fmt: skip
    cols = ["step", "anchor", "candidate", "alpha", "multiple", "score", "accepted"]
    return pd.DataFrame(rows, columns=cols).astype({"accepted": "boolean"})


def test_replay_and_errors_files(viz_metrics: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "replay").mkdir()
    _history().to_csv(tmp_path / "replay" / "history.csv", index=False)
    (tmp_path / "replay" / "history.json").write_text(
        '{"scorer": "hindsight:8", "oracle": true, "note": "Offline replay note."}'
    )
    files = []
    for alpha in (0.5, 1.0, 2.0):
        f = tmp_path / f"errors-{alpha}.csv"
        pd.DataFrame({"step": 2, "anchor": 1, "alpha": alpha, "scope": ["overall", "tensor"],
                      "target_step": 4, "rel_error": [abs(alpha - 1) + 0.1, 9.0]}).to_csv(f)  # fmt: skip
        files.append(f)
    history, errors = load_history(tmp_path / "replay"), load_errors(files)
    assert history.attrs["oracle"] is True and len(errors) == 3  # per-tensor rows dropped
    df = load_metrics(viz_metrics["opd"], "OPD")
    panels, notes = draw_figures(from_frame(df, history=history, errors=errors))
    captions = {p.stem: p.caption for p in panels}
    assert {"replay_scores", "error_vs_alpha"} <= set(captions)
    assert "Offline replay note." in captions["replay_scores"]
    assert not [n for n in notes if "replay" in n or "error" in n]
    replay_ax = next(p.figure for p in panels if p.stem == "replay_scores").axes[0]
    assert replay_ax.get_ylabel() == "score (hindsight:8), hindsight oracle"


def test_missing_inputs_are_skipped_with_notes(viz_metrics: dict[str, Path]) -> None:
    df = load_metrics(viz_metrics["opd"], "OPD")
    panels, notes = draw_figures(from_frame(df[df["layer"].isna()]))  # no per-layer tensors
    assert "allocation_heatmap" not in {p.stem for p in panels}
    assert any(n.startswith("figure allocation_heatmap skipped") for n in notes)
    assert any("replay_scores skipped" in n for n in notes)
    assert any("spectra skipped" in n for n in notes)


def test_only_missing_data_skips_a_figure(viz_metrics, monkeypatch) -> None:
    from opdlens.viz import plots

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug inside matplotlib")

    monkeypatch.setattr(plots, "block_norms", broken)
    with pytest.raises(ValueError, match="a bug inside matplotlib"):  # not "figure skipped"
        draw_figures(from_frame(load_metrics(viz_metrics["opd"], "OPD")))


def test_bad_inputs(viz_metrics: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'run' column"):
        from_frame(load_metrics(viz_metrics["opd"]).drop(columns=["run"]))
    both = (viz_metrics["opd"], viz_metrics["rl"])
    with pytest.raises(ValueError, match=r"--labels names 1 run\(s\) \(A\) but 2"):
        load_sources(SourceOptions(both, ("A",)), tmp_path)
    with pytest.raises(ValueError, match="same directory names"):
        load_sources(SourceOptions((viz_metrics["opd"], viz_metrics["opd"])), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sources(SourceOptions((tmp_path / "missing",)), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="history.csv"):
        load_history(tmp_path)
    bad = tmp_path / "e.csv"
    pd.DataFrame({"alpha": [1.0, 2.0], "target_step": 4, "rel_error": 0.5, "step": [2, 4],
                  "anchor": 1}).to_csv(bad)  # fmt: skip
    with pytest.raises(ValueError, match=r"2 different \(step, anchor\) pairs"):
        load_errors([bad])


def test_out_inside_run_is_refused(viz_runs: dict[str, Path]) -> None:
    with pytest.raises(OpdlensError, match="overlaps the input"):
        load_sources(SourceOptions((viz_runs["opd"],)), viz_runs["opd"] / "figures")


def test_spectra_title_says_top_k(viz_metrics: dict[str, Path], tmp_path: Path) -> None:
    df = load_metrics(viz_metrics["opd"], "OPD")
    sp = spectra_frame({"a": np.array([3.0, 1.0, 0.1])}, step=4, run="OPD", top_k_only=True)
    panels, _ = draw_figures(from_frame(df, spectra=sp))
    panel = next(p for p in panels if p.stem == "spectra")
    assert panel.figure.axes[0].get_title() == "step 4, cached top-K singular values only"
    assert "cached top-K" in panel.caption


def test_foresight_and_ablation_figures(
    viz_runs: dict[str, Path], viz_metrics: dict[str, Path], tmp_path: Path
) -> None:
    from opdlens.analysis.foresight import foresee
    from opdlens.report.side_inputs import load_ablation
    from viz.inputs import write_ablation

    both = (viz_metrics["opd"], viz_metrics["rl"])
    src = load_sources(SourceOptions(both, ("OPD", "RL"), spectra=0), tmp_path)
    fore = pd.concat([foresee(open_run(viz_runs[k]), workers=1).assign(run=k.upper())
                      for k in ("opd", "rl")])  # fmt: skip
    abl = {"OPD": load_ablation(write_ablation(viz_runs["opd"], tmp_path / "abl"))}
    panels, notes = draw_figures(from_frame(src.frame, foresight=fore, ablation=abl))
    drawn = {p.stem: p.figure for p in panels}
    titles = [ax.get_title() for ax in drawn["foresight"].axes if ax.get_title()]
    assert titles[:2] == ["OPD", "RL"]  # the two maps side by side
    assert [ax.get_title() for ax in drawn["ablation"].axes] == ["OPD", "rank curve"]
    assert not [n for n in notes if "foresight" in n or "ablation" in n]
