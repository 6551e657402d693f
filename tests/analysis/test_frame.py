"""The tidy DataFrame: columns, dtypes, one row per slice, and summarize against a hand sum."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from planted import RANKS, SMALL_CONFIG, small_states, write_state_run

import opdlens
from opdlens import open_run


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    root = write_state_run(tmp_path_factory.mktemp("frame"), small_states(), SMALL_CONFIG)
    return opdlens.analyze(open_run(root), ranks=RANKS, workers=1)


def test_columns_and_dtypes(frame):
    ids = [
        "step",
        "span",
        "tensor",
        "layer",
        "block",
        "kind",
        "expert",
        "part",
        "rows",
        "cols",
        "numel",
    ]
    metrics = ["update_norm", "base_norm", "rel_update_norm", "update_share"]
    metrics += [f"energy_k{k}" for k in RANKS] + ["stable_rank"]
    metrics += [f"align_{s}_k{k}" for s in ("left", "right") for k in RANKS]
    metrics += [f"gap_k{k}" for k in RANKS] + ["cos_to_final", "changed_frac", "changed_frac_tol"]
    counts = ["changed_count", "changed_tol_count"]
    assert list(frame.columns) == ids + metrics + counts + ["nonfinite"]
    dt = frame.dtypes
    assert dt["step"] == "int64" and dt["layer"] == "Int64" and dt["nonfinite"] == "bool"
    assert all(dt[c] == "int64" for c in ("rows", "cols", "numel"))
    assert all(dt[c] == "Int64" for c in counts)
    assert all(dt[c] == "float64" for c in metrics)
    top = frame[
        frame["tensor"].isin(["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"])
    ]
    assert len(top) == 9 and top["layer"].isna().all()
    assert set(top["block"]) == {"embed", "head", "norm"}
    inner = frame[frame["tensor"].str.startswith("model.layers.")]
    assert inner["layer"].notna().all() and set(inner["layer"]) == {0, 1}
    assert (frame["numel"] == frame["rows"] * frame["cols"]).all()


def test_one_row_per_step_and_tensor(frame):
    assert not frame.duplicated(["span", "step", "tensor", "expert", "part"]).any()
    assert len(frame) == 3 * 11  # 3 steps × 11 tensors
    assert list(frame["step"].unique()) == [1, 2, 4]


def test_summarize_matches_a_hand_computation(frame):
    s = opdlens.summarize(frame, by=("layer", "block"))
    assert not s.duplicated(["span", "step", "layer", "block"]).any()
    for step in (1, 4):
        g = frame[(frame["step"] == step) & (frame["layer"] == 1) & (frame["block"] == "attn")]
        got = s[(s["step"] == step) & (s["layer"] == 1) & (s["block"] == "attn")].iloc[0]
        w = g["update_norm"].to_numpy() ** 2
        assert got["tensors"] == 2 and got["numel"] == g["numel"].sum()
        assert got["update_share"] == pytest.approx(g["update_share"].sum())
        assert got["update_norm"] == pytest.approx(np.sqrt(w.sum()))
        assert got["base_norm"] == pytest.approx(np.sqrt((g["base_norm"] ** 2).sum()))
        assert got["rel_update_norm"] == pytest.approx(
            np.sqrt(w.sum() / (g["base_norm"] ** 2).sum())
        )
        for c in ("energy_k3", "align_left_k1", "cos_to_final", "stable_rank"):
            assert got[c] == pytest.approx((g[c] * w).sum() / w.sum())
    per_step = s.groupby("step")["update_share"].sum()
    np.testing.assert_allclose(per_step.to_numpy(), 1.0)
    heads = s[s["block"] == "head"]
    assert heads["layer"].isna().all() and len(heads) == 3
    blocks = opdlens.summarize(frame[frame["step"] == 4], by=("block",))
    assert blocks["update_share"].sum() == pytest.approx(1.0)


def test_summarize_rejects_other_frames():
    with pytest.raises(ValueError, match="needs the columns"):
        opdlens.summarize(pd.DataFrame({"step": [1]}))


def test_weighted_mean_counts_finite_values_with_positive_weights() -> None:
    from opdlens.frames import weighted_mean

    values = pd.Series([0.5, 1.0, np.nan, 2.0, np.inf, 3.0])
    weights = pd.Series([1.0, 4.0, 3.0, 0.0, 1.0, np.nan])
    assert weighted_mean(values, weights) == pytest.approx((0.5 * 1 + 1.0 * 4) / 5)
    assert np.isnan(weighted_mean(values[2:], weights[2:]))  # no row counts
    groups = pd.Series(["a", "a", "b", "b", "c", "c"], name="g")
    per_group = weighted_mean(values, weights, [groups])
    assert per_group.to_dict() == {"a": pytest.approx(0.9)}  # b and c have no row that counts
    assert per_group.index.name == "g"
