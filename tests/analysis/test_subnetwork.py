"""changed_by / final_changed / changed_sentence: element-weighted shares against hand sums."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from opdlens.analysis.subnetwork import changed_by, changed_cells, changed_sentence, final_changed


def _rows(run: str, step: int, counts: list[tuple[int, str, int, int, int]]) -> pd.DataFrame:
    """(layer, kind, changed, changed_tol, numel) per row."""
    return pd.DataFrame(
        [{"run": run, "span": "cumulative", "step": step, "layer": layer, "kind": kind,
          "changed_count": c, "changed_tol_count": t, "numel": n}
         for layer, kind, c, t, n in counts]
    ).astype({"changed_count": "Int64", "changed_tol_count": "Int64"})  # fmt: skip


A = [(0, "q_proj", 30, 10, 100), (0, "down_proj", 1, 0, 10), (1, "q_proj", 50, 50, 100)]
B = [(0, "q_proj", 90, 80, 100), (0, "down_proj", 9, 9, 10), (1, "q_proj", 10, 0, 100)]


def test_changed_by_sums_counts_over_numel():
    df = _rows("a", 4, A)
    whole = changed_by(df).iloc[0]
    assert whole["changed_frac"] == (30 + 1 + 50) / 210
    assert whole["changed_frac_tol"] == (10 + 0 + 50) / 210 and whole["numel"] == 210
    by_layer = changed_by(df, ("layer",)).set_index("layer")
    assert by_layer.loc[0, "changed_frac"] == 31 / 110  # not the mean of 0.3 and 0.1
    assert by_layer.loc[1, "changed_count"] == 50


def test_a_row_without_counts_leaves_its_group_empty():
    df = _rows("a", 4, A)
    df.loc[1, ["changed_count", "changed_tol_count"]] = pd.NA
    by_layer = changed_by(df, ("layer",)).set_index("layer")
    assert math.isnan(by_layer.loc[0, "changed_frac"]) and pd.isna(by_layer.loc[0, "changed_count"])
    assert by_layer.loc[1, "changed_frac"] == 0.5
    old = df.drop(columns=["changed_count", "changed_tol_count"])  # metrics of older versions
    assert math.isnan(changed_by(old)["changed_frac"].iloc[0])


def test_final_changed_takes_the_last_step_and_pools_groups():
    a = pd.concat([_rows("a", 2, B), _rows("a", 4, A)])
    b = _rows("b", 8, B)
    runs = final_changed({"a": a, "b": b}).set_index("label")
    assert runs.loc["a", "changed_frac"] == 81 / 210 and runs.loc["b", "changed_frac"] == 109 / 210
    group = final_changed({"a": a, "b": b}, {"G": ["a", "b"]}).iloc[0]
    assert group["changed_frac"] == (81 + 109) / 420 and group["runs"] == 2
    assert (group["run_min"], group["run_max"]) == (81 / 210, 109 / 210)
    assert group["changed_frac_tol"] == (60 + 89) / 420
    assert list(runs["where"]) == ["step 4", "step 8"] and group["where"] == "2 runs"


def test_changed_cells_pool_a_groups_runs_per_layer_and_kind():
    a, b = _rows("a", 4, A), _rows("b", 8, B)
    cells = changed_cells({"a": a, "b": b}).set_index(["label", "layer", "kind"])
    assert cells.loc[("a", 0, "down_proj"), "changed_frac"] == 1 / 10
    assert cells.loc[("b", 1, "q_proj"), "changed_frac_tol"] == 0.0
    pooled = changed_cells({"a": a, "b": b}, {"G": ["a", "b"]}).set_index(["layer", "kind"])
    assert pooled.loc[(0, "q_proj"), "changed_frac"] == (30 + 90) / 200
    assert pooled.loc[(1, "q_proj"), "changed_frac_tol"] == (50 + 0) / 200


def test_the_sentence_says_what_was_found():
    shares = final_changed({"OPD": _rows("OPD", 4, A), "RL": _rows("RL", 4, B)})
    line = changed_sentence(shares, 1e-5)
    assert line == "OPD changed 39 % of the weights (29 % by more than 1e-05), RL 52 % (42 %)."
    groups = final_changed({"a": _rows("a", 4, A), "b": _rows("b", 4, B)}, {"OPD": ["a", "b"]})
    assert changed_sentence(groups) == "OPD changed 45 % of the weights (runs 39 %–52 %)."
    empty = shares.assign(changed_frac=[np.nan, 0.5])
    assert changed_sentence(empty).startswith("OPD has no counts (LoRA factors")
    assert changed_sentence(empty).endswith("RL changed 50 % of the weights.")
