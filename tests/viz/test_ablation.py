"""viz.ablation: what each plot draws from ablate's tables, and the one-line summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from extrapolation.conftest import linear_state, write_run
from matplotlib.colors import to_hex
from safetensors.numpy import load_file

from opdlens import NothingToDrawError, OptionError, open_run
from opdlens.analysis.findings import ablation_sentence
from opdlens.extrapolation.ablate import ablate
from opdlens.viz.ablation import (
    ablation_figure,
    score_by_rank,
    utility_by_share,
)
from opdlens.viz.style import block_color


def _score(path: Path) -> float:
    """Minus the squared distance of the weights to those of step 3 of seed 0."""
    ref = linear_state(3)
    return -sum(
        float(((v.astype(np.float64) - ref[k].numpy()) ** 2).sum())
        for k, v in load_file(Path(path) / "model.safetensors").items()
        if v.dtype.kind == "f"
    )


@pytest.fixture(scope="module")
def tables(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """label → (ablation, rank_curve) of two runs (OPD-like, RL-like) ablated by block."""
    out = {}
    for label, seed in (("OPD", 0), ("RL", 1)):
        root = write_run(tmp_path_factory.mktemp(label), steps=(0, 4),
                         state=lambda s, seed=seed: linear_state(s, seed=seed))  # fmt: skip
        out[label] = tuple(ablate(open_run(root), 4, _score, ranks=[1, 4]))
    return out


def test_utility_by_share_puts_one_marker_per_group_and_run(tables) -> None:
    ablations = {label: t[0] for label, t in tables.items()}
    ax = utility_by_share(ablations)
    points = [c.get_offsets()[0] for c in ax.collections]
    want = [(r.update_share, r.utility) for df in ablations.values() for r in df.itertuples()]
    np.testing.assert_allclose(points, want)
    colours = [to_hex(c.get_facecolor()[0]) for c in ax.collections]
    blocks = [b for df in ablations.values() for b in df["block"]]
    assert colours == [to_hex(block_color(b)) for b in blocks]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "OPD" in legend and "RL" in legend and "attn" in legend
    # A table with a 'run' column draws the same points.
    stacked = pd.concat([df.assign(run=label) for label, df in ablations.items()])
    again = utility_by_share(stacked)
    np.testing.assert_allclose([c.get_offsets()[0] for c in again.collections], points)


def test_groups_across_blocks_are_grey(tables, tmp_path: Path) -> None:
    df = tables["OPD"][0].assign(block=pd.array([pd.NA] * 5, dtype="string"))
    ax = utility_by_share(df)
    assert {to_hex(c.get_facecolor()[0]) for c in ax.collections} == {"#7f7f7f"}


def test_score_by_rank_draws_the_curve_and_the_references(tables) -> None:
    curves = {label: t[1] for label, t in tables.items()}
    ablations = {label: t[0] for label, t in tables.items()}
    ax = score_by_rank(curves, ablation=ablations)
    lines = ax.get_lines()
    assert len(lines) == 2 * 3  # per run: the curve, θ_T and θ_0
    np.testing.assert_array_equal(lines[0].get_xdata(), [1, 4])
    np.testing.assert_allclose(lines[0].get_ydata(), curves["OPD"]["score"])
    assert lines[1].get_ydata()[0] == ablations["OPD"]["score_full"].iloc[0]
    assert lines[2].get_ydata()[0] == ablations["OPD"]["score_base"].iloc[0]
    with pytest.raises(
        OptionError, match="must hold the runs of rank_curve; \\['RL'\\] are missing"
    ):
        score_by_rank(curves, ablation={"OPD": ablations["OPD"]})


def test_figure_has_a_panel_per_run_and_the_rank_curve(tables) -> None:
    fig = ablation_figure(
        {k: t[0] for k, t in tables.items()}, {k: t[1] for k, t in tables.items()}
    )
    assert [ax.get_title() for ax in fig.axes] == ["OPD", "RL", "rank curve"]


def test_runs_from_one_start_share_one_base_line(tables, tmp_path: Path) -> None:
    """Two runs from the same θ_0 (bytes equal): one θ_0 line, labelled as shared."""
    base = tables["OPD"][0]["score_base"].iloc[0]
    root = write_run(tmp_path / "rl", steps=(0, 4),
                     state=lambda s: linear_state(s, seed=0 if s == 0 else 1))  # fmt: skip
    rl = tuple(ablate(open_run(root), 4, _score, ranks=[1, 4]))
    assert rl[0]["score_base"].iloc[0] == base  # the same start, scored alike
    ablations, curves = (
        {"OPD": tables["OPD"][0], "RL": rl[0]},
        {"OPD": tables["OPD"][1], "RL": rl[1]},
    )
    ax = score_by_rank(curves, ablation=ablations)
    at_base = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [base, base]]
    assert (
        len(at_base) == 1 and at_base[0].get_label() == r"$\theta_0$ (base, the same for OPD, RL)"
    )
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.count(r"$\theta_0$ (base, the same for OPD, RL)") == 1
    assert not any("· $\\theta_0$" in t for t in labels)
    ax.figure.canvas.draw()  # the legend sits beside the panel, on no curve or reference line
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
    # Different starts keep a base line each (test_score_by_rank_draws_the_curve_and_the_references).


def test_group_labels_do_not_overlap(tables) -> None:
    """Groups at nearly the same (share, utility): their labels are moved apart."""
    df = tables["OPD"][0].copy()
    df["update_share"] = [0.30, 0.30, 0.001, 0.002, 0.6][: len(df)]
    df["utility"] = [0.10, 0.1001, 0.0300, 0.0301, 0.05][: len(df)]
    fig = ablation_figure({"OPD": df, "RL": tables["RL"][0]})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == 5
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), (a, b)
        # Each label still starts at its own marker's x.
        for t in ax.texts:
            assert t.xyann[0] == 3


def test_plots_refuse_what_they_cannot_draw(tables) -> None:
    only = tables["OPD"][0].assign(utility=np.nan)
    with pytest.raises(NothingToDrawError, match="mode='only'.*--mode drop or both"):
        utility_by_share(only)
    with pytest.raises(OptionError, match="needs the columns .*missing \\['utility'\\]"):
        utility_by_share(only.drop(columns="utility"))
    with pytest.raises(TypeError, match="must be a pandas DataFrame. Got list"):
        score_by_rank([1, 2])


def _table(
    utility: list[float], only: list[float] | None = None, full: float = 0.9, base: float = 0.2
) -> pd.DataFrame:
    drop = [full - u for u in utility]
    return pd.DataFrame({
        "group": ["attn", "mlp", "norm"], "update_share": [0.6, 0.3, 0.1],
        "score_full": full, "score_base": base, "score_drop": drop,
        "score_only": only or [np.nan] * 3, "utility": utility, "step": 8,
    })  # fmt: skip


def test_sentence_names_the_costliest_and_the_densest_group() -> None:
    assert ablation_sentence(_table([0.3, 0.25, 0.05])) == (
        "At step 8, the final update as a whole raised the score from 0.2 to 0.9; dropping the "
        "update of attn (60% of ‖Δ_T‖²) costs the most: the score falls to 0.6 (utility +0.3); "
        "per unit of update share, mlp is worth most (0.833)."
    )
    assert ablation_sentence(_table([-0.1, 0.0, -0.2])) == (
        "At step 8, the final update as a whole raised the score from 0.2 to 0.9; no group's "
        "update helps: dropping any one leaves the score as high or higher; dropping norm's (10% "
        "of ‖Δ_T‖²) raises the score most, to 1.1 (negative utility -0.2; 2 groups have "
        "negative utility)."
    )
    only = _table([np.nan] * 3, only=[0.5, 0.7, 0.2])
    assert ablation_sentence(only) == (
        "At step 8, the final update as a whole raised the score from 0.2 to 0.9; the update of "
        "mlp alone (30% of ‖Δ_T‖²) scores highest: 0.7, +0.5 over the base."
    )


def test_sentence_says_when_the_update_hurts_and_a_group_has_negative_utility() -> None:
    """The demo's case: θ_T scores below θ_0, and dropping the MLP update raises the score."""
    df = _table([0.006, -0.033, 0.0], full=0.156, base=0.158)
    text = ablation_sentence(df)
    assert text == (
        "At step 8, the final update as a whole lowered the score from 0.158 to 0.156; attn's "
        "update helps most: dropping it (60% of ‖Δ_T‖²) lowers the score to 0.15 (utility "
        "+0.006); dropping mlp's (30% of ‖Δ_T‖²) raises the score to 0.189 (negative utility "
        "-0.033)."
    )
    assert "costs the most" not in text
    # Utilities within 1 % of the score (NEGLIGIBLE_SCORE) are negligible, and said to be.
    flat = ablation_sentence(_table([1e-4, -1e-4, 0.0], full=0.5, base=0.5))
    assert flat == (
        "At step 8, the final update as a whole left the score about unchanged (0.5 → 0.5, "
        "within 1 %); no group's update matters on its own: dropping any one changes the score "
        "by less than 1 %."
    )
