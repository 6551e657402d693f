"""`opdlens demo`: the end-to-end pipeline on the quick preset, and the numbers its summary prints."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from opdlens.analysis.findings import ablation_sentence
from opdlens.analysis.foresight import foresight_sentence
from opdlens.demo.pipeline import (
    DemoResult,
    _ablate,
    _foresee,
    online_sentence,
    run_labels,
    share_table,
    steps_saved,
)


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


def _online(plain_curve, eff_curve) -> dict:
    """online_effopd.json's record, computed the way runs._compare does."""
    target = 0.9 * plain_curve[-1][1]

    def steps(curve):
        return next((s for s, a in curve if a >= target), None)

    return {"target_accuracy": target, "plain_steps_to_target": steps(plain_curve),
            "effopd_steps_to_target": steps(eff_curve), "plain_final_accuracy": plain_curve[-1][1],
            "curves": {"plain": plain_curve, "effopd": eff_curve}}  # fmt: skip


def test_online_sentence_gives_speed_up_only_for_a_target_above_the_start() -> None:
    # The run: plain OPD fell from 0.158 to 0.156, so the target 0.141 is met at step 0.
    flat = _online([[0, 0.158], [60, 0.15], [120, 0.156]], [[0, 0.158], [120, 0.16]])
    assert flat["plain_steps_to_target"] == 0 == flat["effopd_steps_to_target"]
    line = online_sentence(flat)
    assert "0.140 accuracy" in line and "not above the starting accuracy 0.158" in line
    assert "speed-up" not in line.replace("no speed-up", "") and "n/a" not in line
    # A real comparison: plain OPD reaches 0.9 × 0.5 = 0.45 at step 70, EffOPD at step 35.
    learned = _online([[0, 0.2], [35, 0.3], [70, 0.46], [120, 0.5]],
                      [[0, 0.2], [35, 0.45], [120, 0.48]])  # fmt: skip
    assert online_sentence(learned).endswith(
        "reached at step 70 by plain OPD and at step 35 with EffOPD — speed-up 2.00×."
    )
    slower = _online([[0, 0.2], [70, 0.46], [120, 0.5]], [[0, 0.2], [120, 0.44]])
    assert online_sentence(slower).endswith("EffOPD never reached it — no speed-up is stated.")


def test_share_table_gives_mean_and_sd_over_seeds() -> None:
    def final(mlp: float) -> pd.DataFrame:
        return pd.DataFrame({"span": ["cumulative"] * 2, "step": [5, 5], "block": ["mlp", "attn"],
                             "tensor": ["m", "a"], "update_norm": [1.0, 1.0],
                             "base_norm": [1.0, 1.0], "update_share": [mlp, 1 - mlp]})  # fmt: skip

    frames = {"OPD-1": final(0.6), "OPD-2": final(0.8), "RL-1": final(0.5), "RL-2": final(0.5)}
    table = share_table(frames, {"OPD": ["OPD-1", "OPD-2"], "RL": ["RL-1", "RL-2"]})
    assert table.loc["mlp", "OPD"] == f"0.700 ± {math.sqrt(0.02):.3f}"
    assert table.loc["attn", "RL"] == "0.500 ± 0.000"


def test_foresee_and_ablate_first_seed_of_each_method(runs, tmp_path: Path) -> None:
    labelled = run_labels(runs[0])
    fore = _foresee(labelled, tmp_path)
    assert list(pd.unique(fore["run"])) == ["OPD", "RL"]
    for method in ("opd", "rl"):
        written = pd.read_parquet(tmp_path / "foresight" / method / "foresight.parquet")
        mine = fore[fore["run"] == method.upper()].drop(columns="run").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, written, check_dtype=False)
        assert foresight_sentence(written).startswith(("from step", "at no step", "only at"))
    first = _ablate(labelled, tmp_path, jobs=2, progress=False)
    assert list(first) == ["OPD", "RL"] and list(first["OPD"].rank_curve["k"]) == [1, 2, 4, 8]
    # The demo run again resumes from the saved scores: nothing is scored twice.
    again = _ablate(labelled, tmp_path, jobs=2, progress=False)
    assert again["RL"].ablation.attrs["reused"] == 16
    pd.testing.assert_frame_equal(again["RL"].ablation, first["RL"].ablation)
    assert ablation_sentence(again["OPD"].ablation).startswith("At step 40, ")


def test_timings_line_names_each_phase_in_order_with_the_total() -> None:
    result = DemoResult(Path("d"), Path("d/report"), {}, None, pd.DataFrame(), 0, 0, {},  # type: ignore[arg-type]
                        timings={"train": 0.04, "analyze": 12.4, "report": 185.0})  # fmt: skip
    assert result.timings_line() == (
        "time by phase (wall clock): train 0.0 s, analyze 12 s, report 3 min 05 s; total 3 min 17 s"
    )
