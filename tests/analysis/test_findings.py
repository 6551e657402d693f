"""analysis.findings: the claims' numbers per run, per group, and their verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opdlens.analysis.findings import (
    CLAIMS,
    NEGLIGIBLE_GAIN,
    NEGLIGIBLE_SCORE,
    claim_lines,
    closer_word,
    group_findings,
    online_sentence,
    run_quantities,
    score_change,
    score_tolerance,
    update_effect,
    verdict,
)
from opdlens.errors import OptionError


def metrics(run: str, energy: float, mlp: float, align: float) -> pd.DataFrame:
    """A two-tensor run (attn, mlp) at steps 1 and 4 whose claims' numbers are known.

    At step 4 the mlp tensor carries `mlp` of ‖Δ‖²; energy_k1 is `energy` for both tensors;
    at step 1 the alignment is `align` for both, so every weighted mean is that value.
    """
    rows = []
    for step in (1, 4):
        for block, share in (("attn", 1 - mlp), ("mlp", mlp)):
            rows.append({"run": run, "span": "cumulative", "step": step, "tensor": f"l0.{block}",
                         "layer": 0, "block": block, "kind": block, "rows": 8, "cols": 8,
                         "update_norm": np.sqrt(share) * step, "update_share": share,
                         "energy_k1": energy, "energy_k4": 1.0,
                         "align_left_k1": align if step == 1 else 1.0,
                         "align_right_k1": align if step == 1 else 1.0,
                         "gap_k1": 0.5})  # fmt: skip
    return pd.DataFrame(rows)


def test_run_quantities_are_the_weighted_means() -> None:
    df = metrics("A", energy=0.4, mlp=0.7, align=0.3)
    df.loc[(df["step"] == 4) & (df["block"] == "attn"), "energy_k1"] = 0.1
    got = run_quantities(df)
    assert got["energy_k1"] == pytest.approx((0.1 * 0.3 + 0.4 * 0.7) / 1.0)  # ‖Δ‖² weights
    assert got["mlp_share"] == pytest.approx(0.7)
    assert got["align_first"] == pytest.approx(0.3) and got["first_step"] == 1
    with pytest.raises(OptionError, match="no energy_k"):
        run_quantities(df.drop(columns=["energy_k1", "energy_k4"]))


def _frames(opd: list[tuple[float, float, float]], rl: list[tuple[float, float, float]]):
    frames = {f"OPD-{i}": metrics(f"OPD-{i}", *v) for i, v in enumerate(opd, 1)}
    frames |= {f"RL-{i}": metrics(f"RL-{i}", *v) for i, v in enumerate(rl, 1)}
    groups = {"OPD": [f"OPD-{i}" for i in range(1, len(opd) + 1)],
              "RL": [f"RL-{i}" for i in range(1, len(rl) + 1)]}  # fmt: skip
    return frames, groups


def test_verdicts_follow_the_interval() -> None:
    # energy: OPD clearly above; MLP share: clearly below; alignment: overlapping.
    opd = [(0.50, 0.60, 0.2), (0.52, 0.61, 0.5), (0.51, 0.59, 0.3)]
    rl = [(0.40, 0.70, 0.3), (0.41, 0.71, 0.2), (0.39, 0.72, 0.5)]
    found = group_findings(*_frames(opd, rl))
    energy, mlp, align = CLAIMS
    assert verdict(found, energy) == "holds"
    assert verdict(found, mlp) == "does not hold"
    assert verdict(found, align) == "inconclusive at n = 3"
    assert found.summary["energy_k1"]["OPD"].mean == pytest.approx(0.51)
    assert found.summary["mlp_share"]["RL"].sd == pytest.approx(0.01)
    d = found.differences["energy_k1"]["RL"]
    assert d is not None and d.diff == pytest.approx(0.11) and d.low > 0
    lines = claim_lines(found)
    assert lines[0].startswith("OPD concentrates its final update more in its top singular "
                               "direction than RL: holds — ")  # fmt: skip
    assert "OPD 0.510 ± 0.010, RL 0.400 ± 0.010; difference +0.110 [" in lines[0]
    assert "than RL: does not hold — " in lines[1]
    assert "than RL: inconclusive at n = 3 — " in lines[2]
    table = found.table()
    assert list(table.columns) == ["quantity", "OPD (n = 3)", "RL (n = 3)", "OPD − RL, 95 % CI"]


def test_one_run_per_group_decides_nothing() -> None:
    found = group_findings(*_frames([(0.9, 0.9, 0.9)], [(0.1, 0.1, 0.1)]))
    assert all(verdict(found, c) == "inconclusive at n = 1" for c in CLAIMS)
    assert "difference +0.800 (no interval at n = 1)" in claim_lines(found)[0]


def test_groups_must_name_known_runs_once() -> None:
    frames, _ = _frames([(0.5, 0.5, 0.5)] * 2, [(0.4, 0.4, 0.4)] * 2)
    with pytest.raises(OptionError, match=r"unknown: \['OPD-9'\]"):
        group_findings(frames, {"OPD": ["OPD-1", "OPD-9"], "RL": ["RL-1"]})
    with pytest.raises(OptionError, match="name each run once"):
        group_findings(frames, {"OPD": ["OPD-1"], "RL": ["OPD-1"]})
    with pytest.raises(OptionError, match="must map a group name"):
        group_findings(frames, {})


def test_groups_without_spread_decide_nothing() -> None:
    found = group_findings(*_frames([(0.5, 0.5, 0.5)] * 2, [(0.4, 0.4, 0.4)] * 2))
    d = found.differences["energy_k1"]["RL"]
    assert d is not None and d.low == d.high == pytest.approx(0.1)  # a zero-width interval
    assert all(verdict(found, c) == "inconclusive at n = 2" for c in CLAIMS)


def test_wording_thresholds_decide_negligible_and_direction() -> None:
    assert (NEGLIGIBLE_GAIN, NEGLIGIBLE_SCORE) == (
        0.01,
        0.01,
    )  # docs/design.md, "Wording thresholds"
    assert closer_word(0.995) == "barely (< 1 %) closer" and closer_word(0.98) == "closer"
    assert score_tolerance(0.5, -0.8, float("nan")) == pytest.approx(0.008)
    assert score_change(0.5, 0.51) == "raised" and score_change(0.5, 0.49) == "lowered"
    assert score_change(0.5, 0.504) == "left about unchanged"
    assert update_effect(0.156, 0.158) == (
        "the final update as a whole lowered the score from 0.158 to 0.156"
    )
    assert (
        update_effect(0.38, 0.17)
        == "the final update as a whole raised the score from 0.17 to 0.38"
    )


def _online(plain: int | None, eff: int | None, **extra: float) -> dict:
    return {"target_accuracy": 0.3, "plain_steps_to_target": plain,
            "effopd_steps_to_target": eff, "plain_final_accuracy": 1 / 3,
            "effopd_final_accuracy": 0.35, **extra}  # fmt: skip


def test_online_sentence_states_the_speed_up_only_when_there_is_one() -> None:
    finals = "final accuracy: plain 0.3333, with EffOPD 0.35."
    assert online_sentence(_online(60, 40)) == (
        f"steps to reach 0.3 accuracy: plain OPD 60, with online EffOPD 40 — 1.50× (faster); {finals}"
    )
    assert "0.80× (slower)" in online_sentence(_online(40, 50))
    # Step 0 counts as reaching the target (it is not "never"), but is no speed-up.
    assert online_sentence(_online(0, 0)) == (
        "steps to reach 0.3 accuracy: reached at step 0 (plain 0, with EffOPD 0), so there is no "
        f"speed-up to measure; {finals}"
    )
    assert "with EffOPD never reached it" in online_sentence(_online(60, None))
    assert "the start already scores 0.31 (≥ the target)" in online_sentence(
        _online(5, 5, start_accuracy=0.31)
    )
