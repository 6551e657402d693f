"""analysis.compare_frame: aggregated scopes sum counts and inner products, never ratios."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from opdlens.analysis.compare_frame import build_frame, subspace_columns


def _row(tensor: str, layer: int | None, block: str, numel: int, counts: tuple, sums: tuple,
         sub: float | None) -> dict[str, object]:  # fmt: skip
    a, b, both = counts
    row: dict[str, object] = {
        "tensor": tensor, "layer": layer, "block": block, "expert": None, "part": None,
        "kind": "x", "rows": 4 if sub is not None else None, "cols": 8 if sub is not None else None,
        "numel": numel, "changed_a": a, "changed_b": b, "changed_both": both,
        "changed_either": None if a is None else a + b - both,
        "dot": sums[0], "sq_a": sums[1], "sq_b": sums[2],
    }  # fmt: skip
    nan = math.nan if sub is None else None
    row["subspace_left_k1"] = nan if nan is not None else sub
    row["subspace_left_random_k1"] = nan if nan is not None else 0.25
    row["subspace_right_k1"] = nan if nan is not None else sub / 2
    row["subspace_right_random_k1"] = nan if nan is not None else 0.125
    return row


ROWS = [
    _row("l0.q", 0, "attn", 32, (8, 4, 2), (1.0, 4.0, 1.0), 0.5),
    _row("l0.mlp", 0, "mlp", 96, (24, 48, 12), (-2.0, 9.0, 16.0), 0.1),
    _row("l1.q", 1, "attn", 32, (32, 0, 0), (0.0, 1.0, 1.0), 0.9),
    _row("norm", None, "norm", 8, (1, 1, 1), (0.5, 1.0, 1.0), None),
]


def test_overall_takes_ratios_of_sums_and_an_element_weighted_subspace_mean() -> None:
    df = build_frame(ROWS, (1,), ("tensor", "block", "layer", "overall"))
    overall = df[df["scope"] == "overall"].iloc[0]
    assert overall["numel"] == 168 and overall["changed_both"] == 15
    assert overall["changed_frac_a"] == pytest.approx(65 / 168)
    assert overall["changed_either"] == 65 + 53 - 15
    assert overall["jaccard"] == pytest.approx(15 / 103)
    pa, pb = 65 / 168, 53 / 168
    assert overall["jaccard_chance"] == pytest.approx(pa * pb / (pa + pb - pa * pb))
    assert overall["cos"] == pytest.approx(-0.5 / math.sqrt(15 * 19))  # not a mean of cosines
    # Only matrices carry a subspace: (32·0.5 + 96·0.1 + 32·0.9) / 160.
    assert overall["subspace_left_k1"] == pytest.approx((16 + 9.6 + 28.8) / 160)
    assert overall["subspace_left_random_k1"] == pytest.approx(0.25)
    layers = df[df["scope"] == "layer"]
    assert list(layers["group"]) == ["0", "1"] and list(layers["numel"]) == [128, 32]
    # B left layer 1 alone: Jaccard and chance are 0, their ratio undefined.
    assert layers.iloc[1]["jaccard"] == 0 and layers.iloc[1]["jaccard_chance"] == 0
    assert math.isnan(layers.iloc[1]["overlap_ratio"])
    blocks = df[df["scope"] == "block"].set_index("group")
    assert blocks.loc["attn", "changed_a"] == 40 and str(df["layer"].dtype) == "Int64"
    assert list(df.columns[:3]) == ["scope", "group", "tensor"]
    assert subspace_columns((1,))[0] in df.columns


def test_a_group_with_a_lora_tensor_has_no_count() -> None:
    rows = [*ROWS, _row("lora.q", 1, "attn", 32, (None, 3, None), (1.0, 1.0, 1.0), 0.2)]
    df = build_frame(rows, (1,), ("block", "overall"))
    assert set(df["scope"]) == {"block", "overall"}
    overall = df[df["scope"] == "overall"].iloc[0]
    assert pd.isna(overall["changed_a"])
    assert math.isnan(overall["jaccard"]) and not math.isnan(overall["cos"])
    mlp = df[(df["scope"] == "block") & (df["group"] == "mlp")].iloc[0]
    assert mlp["changed_a"] == 24  # a block without the LoRA tensor keeps its count
