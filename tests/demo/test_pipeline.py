"""`opdlens demo`: the end-to-end pipeline on the quick preset, and the numbers its summary prints."""

from __future__ import annotations

import math

import pandas as pd

from opdlens.demo.pipeline import share_table, steps_saved


def test_steps_saved_counts_last_accepted_candidate_per_step() -> None:
    history = pd.DataFrame(
        {
            "step": [1, 1, 1, 2, 2, 4],
            "candidate": [0, 1, 2, 0, 1, 0],
            "accepted": [pd.NA, True, True, pd.NA, False, pd.NA],
            "equivalent_step": [1, 2, 4, 2, 1, 4],
        }
    )
    assert steps_saved(history) == (3, 2)  # step 1 jumped to 4; step 2 rejected


def test_share_table_gives_mean_and_sd_over_seeds() -> None:
    def final(mlp: float) -> pd.DataFrame:
        return pd.DataFrame({"span": ["cumulative"] * 2, "step": [5, 5], "block": ["mlp", "attn"],
                             "tensor": ["m", "a"], "update_norm": [1.0, 1.0],
                             "base_norm": [1.0, 1.0], "update_share": [mlp, 1 - mlp]})  # fmt: skip

    frames = {"OPD-1": final(0.6), "OPD-2": final(0.8), "RL-1": final(0.5), "RL-2": final(0.5)}
    table = share_table(frames, {"OPD": ["OPD-1", "OPD-2"], "RL": ["RL-1", "RL-2"]})
    assert table.loc["mlp", "OPD"] == f"0.700 ± {math.sqrt(0.02):.3f}"
    assert table.loc["attn", "RL"] == "0.500 ± 0.000"
