"""foresee: Gram matrices against numpy, rel_error against extrapolate --evaluate, α*, scopes, anchors."""

from __future__ import annotations

import math
from pathlib import Path

import checkpoints
import numpy as np
import pandas as pd
import pytest
import torch

import opdlens
from opdlens.analysis.foresight import (
    COLUMNS,
    anchor_pairs,
    effopd_comparison,
    foresee,
    foresight_sentence,
    select_anchor,
)
from opdlens.errors import OpdlensError, OptionError


def test_pool_workers_give_the_same_frame(planted_runs) -> None:
    run = opdlens.open_run(planted_runs("llama-f32"))
    one = foresee(run, workers=1)
    two = foresee(run, workers=2)
    pd.testing.assert_frame_equal(one, two)


@pytest.mark.slow
@pytest.mark.parametrize(("t", "a", "alpha"), [(1, 0, 2.0), (2, 1, 0.5), (2, 0, None)])
def test_rel_error_equals_extrapolate_evaluate(planted_runs, tmp_path: Path, t, a, alpha) -> None:
    """float32 run: the written checkpoint is the float32 prediction, no bf16 rounding."""
    run = opdlens.open_run(planted_runs("llama-f32"))
    df = foresee(run, anchor=a, alphas=[2.0, 0.5], workers=1)
    rows = df[(df["step"] == t) & (df["anchor"] == a)]
    if alpha is None:  # α* of the whole model, as extrapolate would be asked to write it
        rows = rows[rows["alpha_kind"] == "optimal"]
        alpha = float(
            rows.loc[(rows["scope"] == "overall") & (rows["target_step"] == 4), "alpha"].iloc[0]
        )
        rows = rows[rows["scope"].isin(["overall"])]
    else:
        rows = rows[(rows["alpha_kind"] == "grid") & (rows["alpha"] == alpha)]
    _, errors = opdlens.extrapolate(
        run, t, anchor=a, alpha=alpha, out=tmp_path / "p", evaluate=True
    )
    assert errors is not None
    for scope in rows["scope"].unique():
        if scope not in ("tensor", "overall"):
            continue
        ours = rows[rows["scope"] == scope].set_index(["target_step", "tensor"])
        theirs = errors[errors["scope"] == scope].set_index(["target_step", "tensor"])
        assert len(theirs) == len(ours) > 0
        for col in ("pred_distance", "stay_distance", "rel_error"):
            np.testing.assert_allclose(ours.loc[theirs.index, col], theirs[col], rtol=1e-6)


def test_alpha_star_is_never_beaten(planted_runs) -> None:
    run = opdlens.open_run(planted_runs("llama-f32"))
    df = foresee(run, alphas=np.linspace(-2, 6, 33), workers=1)
    df = df.fillna({"tensor": "", "layer": -1, "block": ""})  # scope rows leave some unset
    keys = ["step", "anchor", "target_step", "scope", "tensor", "layer", "block"]
    star = df[df["alpha_kind"] == "optimal"].set_index(keys)["rel_error"]
    others = df[df["alpha_kind"] != "optimal"].groupby(keys, dropna=False)["rel_error"].min()
    assert len(star) == len(others) > 0
    assert (star.loc[others.index].to_numpy() <= others.to_numpy() + 1e-12).all()
    # design.md: rel_error(α*) = sqrt(1 − ⟨e, d⟩² / (‖e‖² ‖d‖²)) ≤ 1.
    assert (star <= 1 + 1e-12).all()


def test_scopes_sum_squared_distances_over_their_tensors(planted_runs) -> None:
    run = opdlens.open_run(planted_runs("llama-f32"))
    df = foresee(run, alphas=[1.0, 3.0], workers=1)
    grid = df[df["alpha_kind"] == "grid"].copy()
    grid["pred_sq"] = grid["pred_distance"] ** 2
    keys = ["step", "anchor", "target_step", "alpha"]
    tensors = grid[grid["scope"] == "tensor"]
    for scope, by in (("block", "block"), ("layer", "layer"), ("overall", None)):
        want = tensors.groupby(keys + ([by] if by else []))["pred_sq"].sum()
        got = grid[grid["scope"] == scope].set_index(keys + ([by] if by else []))["pred_sq"]
        np.testing.assert_allclose(got.loc[want.index], want, rtol=1e-10)
    # α* is per scope: the whole model's is not a mean of its tensors'.
    opt = df[(df["alpha_kind"] == "optimal") & (df["step"] == 1) & (df["target_step"] == 4)]
    overall = float(opt.loc[opt["scope"] == "overall", "alpha"].iloc[0])
    assert not math.isclose(overall, float(opt.loc[opt["scope"] == "tensor", "alpha"].mean()))
    assert set(df["scope"]) == {"tensor", "block", "layer", "overall"}
    assert set(df.loc[df["scope"] == "block", "block"]) == {"attn", "mlp"}
    assert list(df.columns) == COLUMNS


def test_default_selection_is_attention_and_mlp_matrices(planted_runs) -> None:
    run = opdlens.open_run(planted_runs("llama-f32"))
    tensors = set(foresee(run, workers=1).dropna(subset=["tensor"])["tensor"])
    assert tensors == {
        n for n in run.tensor_names if ("mlp" in n or "self_attn" in n) and n.endswith("weight")
    }
    only = foresee(run, tensors=["*.q_proj.weight"], workers=1)
    assert set(only["tensor"].dropna()) == {n for n in run.tensor_names if "q_proj" in n}
    few = foresee(run, scopes=["overall", "block"], workers=1)
    assert set(few["scope"]) == {"overall", "block"}
    full = foresee(run, workers=1)
    pd.testing.assert_frame_equal(
        few.reset_index(drop=True),
        full[full["scope"].isin(["overall", "block"])].reset_index(drop=True),
    )


def test_anchor_pairs() -> None:
    steps = [1, 2, 3, 5, 9]
    assert anchor_pairs(steps, "previous") == [(1, 0), (2, 1), (3, 2), (5, 3), (9, 5)]
    assert anchor_pairs(steps, "base") == [(t, 0) for t in steps]
    assert anchor_pairs(steps, 3) == [(5, 3), (9, 3)]
    assert anchor_pairs(steps, "2") == [(3, 2), (5, 2), (9, 2)]
    # Default: previous, plus EffOPD's schedule (1, 2, 5 for 4, 9 for 8): (5, 2) and (9, 5).
    assert anchor_pairs(steps) == [(1, 0), (2, 1), (3, 2), (5, 2), (5, 3), (9, 5)]
    with pytest.raises(OptionError, match=r"must be a saved step before the last one .* Got 4"):
        anchor_pairs(steps, 4)
    with pytest.raises(OptionError, match=r"'previous', 'base' or a saved step\. Got 'last'"):
        anchor_pairs(steps, "last")


def _coefficient_run(root: Path, coefficients: dict[int, float]) -> opdlens.Run:
    """θ_s = θ_0 + c_s·D per tensor: every quantity of design.md known in closed form."""

    def update(name: str, w0: torch.Tensor, step: int) -> torch.Tensor:
        d = checkpoints.planted_direction(name, tuple(w0.shape))
        return w0 + coefficients[step] * d

    checkpoints.write_hf_run(root, "llama", list(coefficients), dtype=torch.float32,
                             update=update, trainer_files=False)  # fmt: skip
    return opdlens.open_run(root)


def test_linear_run_is_predicted_exactly_and_effopd_rows(tmp_path: Path) -> None:
    run = _coefficient_run(tmp_path / "run", {0: 0.0, 1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0})
    df = foresee(run, anchor="previous", workers=1)
    opt = df[(df["alpha_kind"] == "optimal") & (df["scope"] == "overall")]
    # α* = (s − t) / (t − a) and the prediction lands on θ_s.
    expect = (opt["target_step"] - opt["step"]) / (opt["step"] - opt["anchor"])
    np.testing.assert_allclose(opt["alpha"], expect, rtol=1e-7)  # float32 storage of θ_s
    assert (opt["rel_error"] < 1e-6).all()
    eff = effopd_comparison(df)
    assert sorted(eff["step"].unique()) == [1, 2, 4]  # 8 is the last: nothing later to predict
    assert eff.loc[eff["step"] == 2, "alpha"].drop_duplicates().tolist() == [
        2.0,
        4.0,
        6.0,
        8.0,
        10.0,
    ]
    # Step 4 → 8 with anchor 2: α* = 4 / 2 = 2 is EffOPD's first candidate, rel_error 0.
    first = eff[(eff["step"] == 4) & (eff["candidate"] == 1)].iloc[0]
    assert first["alpha"] == 2.0 and first["rel_error"] < 1e-6
    assert foresight_sentence(df).startswith(
        "from step 1 on, one extrapolation along the current update lands closer to step 8 "
        "than standing still (rel_error 0.00 at α* = 7)"
    )


def test_sentence_is_honest_when_extrapolation_never_helps(tmp_path: Path) -> None:
    run = _coefficient_run(tmp_path / "run", {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 0.0})
    df = foresee(run, workers=1)
    text = foresight_sentence(df)
    assert text.startswith("at no step before step 4 does one extrapolation along the current")
    labelled = pd.concat([df.assign(run="OPD"), df.assign(run="RL")])
    assert foresight_sentence(labelled).startswith("OPD: at no step")
    assert len(select_anchor(labelled)) == 2 * len(select_anchor(df))


def test_zero_update_gives_alpha_star_zero_and_nan_rel_error(tmp_path: Path) -> None:
    """θ_2 = θ_1: d = 0 at t=2 (α* = 0, its min-norm value); e = 0 against s=2 (rel_error NaN)."""
    run = _coefficient_run(tmp_path / "run", {0: 0.0, 1: 1.0, 2: 1.0, 3: 2.0})
    df = foresee(run, anchor="previous", workers=1)
    opt = df[(df["alpha_kind"] == "optimal") & (df["scope"] == "overall")].set_index(
        ["step", "target_step"]
    )
    assert opt.loc[(2, 3), "alpha"] == 0.0 and opt.loc[(2, 3), "rel_error"] == pytest.approx(1.0)
    assert math.isnan(opt.loc[(1, 2), "rel_error"])


def test_user_errors(planted_runs, tmp_path: Path) -> None:
    run = opdlens.open_run(planted_runs("llama-f32"))
    with pytest.raises(OptionError, match=r"'alphas' parameter must be finite"):
        foresee(run, alphas=[1.0, float("nan")])
    with pytest.raises(OptionError, match=r"'alphas' parameter of foresee must be a sequence"):
        foresee(run, alphas="1,2")
    with pytest.raises(OptionError, match=r"'max_candidates' parameter"):
        foresee(run, max_candidates=-1)
    with pytest.raises(OptionError, match=r"takes blocks from"):
        foresee(run, modules=["mlps"])
    with pytest.raises(
        OptionError, match=r"'scopes' parameter of foresee takes some of .* \['model'\]"
    ):
        foresee(run, scopes=["overall", "model"])
    short = _coefficient_run(tmp_path / "short", {0: 0.0, 1: 1.0})
    with pytest.raises(OpdlensError, match=r"at least two saved steps after the base .* \[1\]"):
        foresee(short)


def test_public_api_is_lazy_foresee() -> None:
    assert opdlens.foresee is foresee


def test_sentence_never_rounds_a_win_to_one() -> None:
    """A rel_error of 0.9962 is printed with the decimals that keep it below 1."""
    rows = pd.DataFrame(
        {"step": [1, 2], "anchor": [0, 1], "alpha": [13.0, 12.0], "alpha_kind": "optimal",
         "scope": "overall", "target_step": 4, "rel_error": [0.9962, 0.99962]}
    )  # fmt: skip
    text = foresight_sentence(rows)
    assert text.endswith("(rel_error 0.996 at α* = 13)"), text
    # rel_error(α*) > 0.99 (NEGLIGIBLE_GAIN): a gain under 1 % is called what it is.
    assert text.startswith(
        "from step 1 on, one extrapolation along the current update lands barely (< 1 %) closer "
        "to step 4 than standing still"
    ), text
    clear = rows.assign(rel_error=[0.5, 0.98])
    assert "lands closer to step 4" in foresight_sentence(clear)
