"""The principal lens (`analyze --base-geometry` over a trajectory) against float64 full SVDs of
the checkpoints read back from disk, its group statistics, its sentence, figure and report."""

from __future__ import annotations

import json
from pathlib import Path

import checkpoints
import numpy as np
import pandas as pd
import pytest
import torch
from planted import load_states, planted, spiked, spiked_update
from typer.testing import CliRunner

import opdlens
from opdlens import open_run
from opdlens.analysis.principal import CURVE_COLUMNS, principal_curves, principal_sentence
from opdlens.cli import app
from opdlens.errors import NothingToDrawError
from opdlens.viz.principal import principal_figure

STEPS = (0, 1, 2, 4)
K = 3  # the spiked base's three planted directions: a well-defined top-K


def _faster(name: str, w0: torch.Tensor, step: int) -> torch.Tensor:
    """A second method: the same spiked base, twice planted's pace."""
    return planted(name, spiked(name, w0), 2 * step)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for label, update in (("A", spiked_update), ("B", _faster)):
        root = tmp_path_factory.mktemp(label)
        checkpoints.write_hf_run(root, "llama", STEPS, dtype=torch.bfloat16, update=update,
                                 trainer_files=False)  # fmt: skip
        out[label] = root
    return out


@pytest.fixture(scope="module")
def frames(runs: dict[str, Path]) -> dict[str, pd.DataFrame]:
    return {label: opdlens.analyze(open_run(root), ranks=(1, K), base_geometry=True, workers=1)
            for label, root in runs.items()}  # fmt: skip


def _reference(root: Path) -> pd.DataFrame:
    """Each step's aggregates from numpy float64 SVDs of every weight matrix."""
    states = load_states(root)
    out = []
    for step in STEPS[1:]:
        num_l = num_r = den = rand_l = rand_r = drift = numel = 0.0
        for name, w in states[0].items():
            if w.dim() != 2:
                continue
            w0, wt = w.double().numpy(), states[step][name].double().numpy()
            d = wt - w0
            u0, s0, v0h = np.linalg.svd(w0, full_matrices=False)
            st = np.linalg.svd(wt, compute_uv=False)
            sq = float((d**2).sum())
            num_l += float(((u0[:, :K].T @ d) ** 2).sum())
            num_r += float(((d @ v0h[:K].T) ** 2).sum())
            den += sq
            rand_l += K / w0.shape[0] * sq
            rand_r += K / w0.shape[1] * sq
            drift += w0.size * float((np.abs(st[:K] - s0[:K]) / s0[:K]).max())
            numel += w0.size
        out.append({"step": step, "energy_left": num_l / den, "energy_right": num_r / den,
                    "random_left": rand_l / den, "random_right": rand_r / den,
                    "drift": drift / numel})  # fmt: skip
    return pd.DataFrame(out)


def test_curves_match_float64_svds_of_the_checkpoints(
    runs: dict[str, Path], frames: dict[str, pd.DataFrame]
) -> None:
    curves = principal_curves(frames)
    assert list(curves.columns) == CURVE_COLUMNS
    assert set(curves["k"]) == {K} and set(curves["runs"]) == {1}
    for label, root in runs.items():
        got = curves[curves["label"] == label].set_index("step")
        ref = _reference(root).set_index("step")
        assert list(got.index) == list(ref.index)
        for col in ("energy_left", "energy_right", "random_left", "random_right", "drift"):
            np.testing.assert_allclose(got[col], ref[col], atol=1e-3, err_msg=f"{label} {col}")
        # the planted updates are not random: their share differs from the baseline's
        assert (abs(got["energy_left"] - got["random_left"]) > 1e-3).any()


def test_a_group_gives_its_runs_mean_and_range(frames: dict[str, pd.DataFrame]) -> None:
    one = principal_curves(frames).set_index(["label", "step"])
    group = principal_curves(frames, {"G": ["A", "B"]}).set_index("step")
    assert set(group["label"]) == {"G"} and set(group["runs"]) == {2}
    for step, row in group.iterrows():
        a, b = one.loc[("A", step)], one.loc[("B", step)]
        for col in ("energy_left", "energy_right", "random_left", "drift"):
            assert row[col] == pytest.approx((a[col] + b[col]) / 2, rel=1e-12)
        assert row["energy_left_min"] == min(a["energy_left"], b["energy_left"])
        assert row["drift_max"] == max(a["drift"], b["drift"])


def test_the_sentence_says_what_each_run_put_and_which_least(
    frames: dict[str, pd.DataFrame],
) -> None:
    curves = principal_curves(frames)
    text = principal_sentence(curves)
    last = curves[curves["step"] == 4].set_index("label")
    assert text.startswith("At the last analysed step, A put ")
    assert f"{100 * last.loc['A', 'energy_left']:.1f} %" in text
    assert f"top-{K} left singular directions" in text
    assert f"{100 * last.loc['B', 'drift']:.1f} %" in text
    least = last["energy_left"].idxmin()
    assert f"{least} puts the least of its update into the base's principal directions." in text


def test_without_base_geometry_there_is_nothing(runs: dict[str, Path]) -> None:
    plain = opdlens.analyze(open_run(runs["A"]), ranks=(1, K), workers=1)
    curves = principal_curves({"A": plain})
    assert curves.empty and list(curves.columns) == CURVE_COLUMNS
    assert principal_sentence(curves) == ""
    with pytest.raises(NothingToDrawError, match="principal_curves"):
        principal_figure(curves)


def test_figure_draws_both_panels(frames: dict[str, pd.DataFrame]) -> None:
    fig = principal_figure(principal_curves(frames, {"G": ["A", "B"]}))
    left, right = fig.axes
    assert "base top-3" in left.get_ylabel() and "drift" in right.get_ylabel()
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["G", "G: random"]


def test_report_with_base_geometry_has_the_section(runs: dict[str, Path], tmp_path: Path) -> None:
    def report(out: Path, *extra: str) -> str:
        res = CliRunner().invoke(app, ["report", str(runs["A"]), "--compare", str(runs["B"]),
                                       "--labels", "OPD,RL", "--ranks", f"1,{K}", "--spectra", "0",
                                       "--no-foresight", "--out", str(out), "-q", *extra])  # fmt: skip
        assert res.exit_code == 0, res.output
        return (out / "report.html").read_text()

    page = report(tmp_path / "r", "--base-geometry")
    assert '<section id="principal">' in page
    assert "At the last analysed step, OPD put " in page
    assert (tmp_path / "r" / "figures" / "principal.svg").is_file()
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert prov["options"]["base_geometry"] is True
    page = report(tmp_path / "plain")
    assert '<section id="principal">' not in page
    assert "figure principal skipped: no base-geometry columns" in page


def test_runs_with_different_ranks_are_drawn_at_a_k_they_all_have(
    frames: dict[str, pd.DataFrame],
) -> None:
    fewer = frames["B"].drop(columns=[c for c in frames["B"].columns if c.endswith(f"_k{K}")])
    curves = principal_curves({"A": frames["A"], "B": fewer})
    assert set(curves["k"]) == {1} and set(curves["label"]) == {"A", "B"}
    assert (
        principal_curves({"A": frames["A"]}, k=1)["energy_left"].tolist()
        == curves[curves["label"] == "A"]["energy_left"].tolist()
    )
