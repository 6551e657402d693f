"""analysis.lenses: changed_frac and principal energy per run, 'less' verdicts, pair overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from opdlens.analysis.lenses import (
    LENS_CLAIMS,
    lens_findings,
    lens_lines,
    lens_quantities,
    overlap_findings,
)
from opdlens.analysis.stats import bootstrap_mean
from opdlens.errors import OptionError


def metrics(changed: float, energy: float, *, geometry: bool = True) -> pd.DataFrame:
    """Two matrices (8×8 attn, 16×8 mlp; ‖Δ‖² 1 and 3) and a 1-D norm of 8 at steps 1 and 4.

    At step 4 the attn matrix changed `changed` of its elements, the mlp matrix half of them and
    the norm all; the attn update has `energy` in the base's top-2 left directions, the mlp 0.2.
    """
    rows = []
    for step in (1, 4):
        for name, r, c, sq, frac, e in (("attn", 8, 8, 1.0, changed, energy),
                                        ("mlp", 16, 8, 3.0, 0.5, 0.2),
                                        ("norm", None, None, 0.1, 1.0, None)):  # fmt: skip
            n = r * c if r else 8
            row = {"span": "cumulative", "step": step, "tensor": name, "block": name, "rows": r,
                   "cols": c, "numel": n, "update_norm": np.sqrt(sq * step),
                   "changed_count": round(frac * n) if step == 4 else 0}  # fmt: skip
            if geometry:
                row |= {"principal_energy_left_k2": e if r else np.nan,
                        "principal_energy_right_k2": e if r else np.nan,
                        "spectral_drift_k2": 0.01 if r else np.nan}  # fmt: skip
            rows.append(row)
    df = pd.DataFrame(rows)
    df["changed_count"] = df["changed_count"].astype("Int64")
    return df


def test_quantities_are_counts_over_elements_and_energy_weighted_shares() -> None:
    got = lens_quantities(metrics(0.25, 0.6))
    assert got["changed_frac"] == (16 + 64 + 8) / (64 + 128 + 8)
    assert got["principal_energy"] == pytest.approx((0.6 * 1 + 0.2 * 3) / 4)  # ‖Δ‖² weights
    assert got["principal_random"] == pytest.approx((2 / 8 * 1 + 2 / 16 * 3) / 4)
    assert got["principal_k"] == 2
    plain = lens_quantities(metrics(0.25, 0.6, geometry=False))
    assert np.isnan(plain["principal_energy"]) and plain["changed_frac"] == got["changed_frac"]


def _findings(opd: list[tuple[float, float]], rl: list[tuple[float, float]], **kw):
    frames = {f"OPD-{i}": metrics(*v, **kw) for i, v in enumerate(opd)}
    frames |= {f"RL-{i}": metrics(*v, **kw) for i, v in enumerate(rl)}
    groups = {
        "OPD": [f"OPD-{i}" for i in range(len(opd))],
        "RL": [f"RL-{i}" for i in range(len(rl))],
    }
    return lens_findings(frames, groups)


def test_less_claims_hold_when_the_interval_is_below_zero() -> None:
    # OPD changes fewer weights (clearly); OPD puts more into the base's directions (clearly).
    found = _findings([(0.1, 0.8), (0.12, 0.82), (0.11, 0.81)],
                      [(0.6, 0.3), (0.62, 0.32), (0.61, 0.31)])  # fmt: skip
    lines = lens_lines(found)
    assert lines[0].startswith("OPD changes fewer weights than RL: holds — share of weights")
    assert lines[1].startswith(
        "OPD puts less of its update into the base's principal directions than RL: does not "
        "hold — share of ‖Δ_T‖² in the base's top-2 left singular directions"
    )
    assert lines[1].endswith("A random update would put K/rows there: OPD 0.156 ± 0.000, "
                             "RL 0.156 ± 0.000.")  # fmt: skip
    assert found.table()["quantity"].tolist() == [c.label for c in LENS_CLAIMS]


def test_a_claim_without_its_columns_is_left_out() -> None:
    found = _findings([(0.1, 0.8)] * 2, [(0.6, 0.3)] * 2, geometry=False)
    assert [c.quantity for c in found.claims] == ["changed_frac"]
    assert len(lens_lines(found)) == 1


def _pairs(group: str, ratios: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"scope": "overall", "run_group": group, "run_a": f"{group}-1",
                         "run_b": [f"{group}-{i + 2}" for i in range(len(ratios))],
                         "jaccard": [0.5 * r for r in ratios], "jaccard_chance": 0.5,
                         "overlap_ratio": ratios})  # fmt: skip


def test_overlap_findings_per_group_with_the_interval_of_the_mean() -> None:
    frame = pd.concat([_pairs("OPD", [1.2, 1.3, 1.25]), _pairs("RL", [0.9, 1.1, 1.0]),
                       _pairs("RL", [5.0]).assign(scope="tensor")])  # fmt: skip
    groups = {"OPD": ["OPD-1", "OPD-2", "OPD-3", "OPD-4"], "RL": ["RL-1", "RL-2", "RL-3", "RL-4"]}
    opd, rl = overlap_findings(frame, groups)
    assert opd.ratios.tolist() == [1.2, 1.3, 1.25] and opd.runs == 4
    assert opd.interval == bootstrap_mean([1.2, 1.3, 1.25])
    assert opd.verdict == "holds" and rl.verdict == "inconclusive at n = 3 pair(s) of 4 run(s)"
    assert rl.jaccard is not None and rl.jaccard.mean == pytest.approx(0.5)
    assert overlap_findings(None, {"A": ["a"]})[0].ratios.empty
    with pytest.raises(OptionError, match="'overlap' argument of overlap_findings needs"):
        overlap_findings(frame.drop(columns="overlap_ratio"), groups)


def test_one_group_states_nothing() -> None:
    frames = {"A-1": metrics(0.1, 0.8), "A-2": metrics(0.2, 0.7)}
    assert lens_lines(lens_findings(frames, {"A": ["A-1", "A-2"]})) == []
