"""ErrorTracker and sq_distance: rel_error, equivalent_step and the verdict against numpy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from opdlens import open_run
from opdlens.extrapolation.evaluate import ErrorTracker, sq_distance

from .conftest import linear_state, write_run

Q0 = "model.layers.0.self_attn.q_proj.weight"
DOWN = "model.layers.2.mlp.down_proj.weight"


def _at(step: float, name: str) -> np.ndarray:
    """θ_step of the linear run (θ_0 + step·D), for any real step."""
    w0, w1 = linear_state(0)[name].numpy(), linear_state(1)[name].numpy()
    return (w0 + step * (w1 - w0)).astype(np.float32)


def test_sq_distance_is_the_float64_squared_norm_across_pieces() -> None:
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(200_003).astype(np.float32) for _ in range(2))  # > 3 pieces
    want = float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    assert sq_distance(a, b) == pytest.approx(want, rel=1e-6)
    assert sq_distance(a.reshape(-1, 1), a) == 0.0


def test_rel_error_equivalent_step_and_frame_of_a_prediction(linear_run: Path) -> None:
    run = open_run(linear_run)  # saved at 0, 1, 2, 4, 8
    tracker = ErrorTracker(run, step=2)
    for name in (Q0, DOWN):
        tracker.add(name, _at(5, name), _at(2, name))  # predicted θ_5 from θ_2
    # Against θ_4: |5 − 4| / |2 − 4|; against θ_8: |5 − 8| / |2 − 8|, whatever the tensors.
    assert tracker.rel_errors() == pytest.approx({4: 0.5, 8: 0.5})
    assert tracker.equivalent_step() == 4  # θ_5 is nearer θ_4 than θ_8
    verdict = tracker.verdict()
    assert verdict["beats_standing_still"] is True and verdict["best_target_step"] == 4
    assert (
        verdict["verdict"] == "the prediction beats standing still (best rel_error 0.50 at step 4)"
    )
    df = tracker.frame(run="opd")
    assert list(df.columns[:2]) == ["run", "scope"] and len(df) == 2 * (2 + 1)
    tensor_rows = df[df["scope"] == "tensor"]
    assert tensor_rows["rel_error"].tolist() == pytest.approx([0.5] * 4)
    assert set(tensor_rows["block"]) == {"attn", "mlp"} and df["layer"].dtype == "Int64"
    q0_at_8 = tensor_rows[(tensor_rows["tensor"] == Q0) & (tensor_rows["target_step"] == 8)]
    d = _at(1, Q0).astype(np.float64) - _at(0, Q0)
    assert q0_at_8["pred_distance"].item() == pytest.approx(3 * np.linalg.norm(d), rel=1e-5)
    assert df.attrs["equivalent_step"] == 4 and (df["equivalent_step"] == 4).all()


def test_spans_accumulate_to_the_whole_tensor(linear_run: Path) -> None:
    run = open_run(linear_run)
    whole, parts = ErrorTracker(run, step=1), ErrorTracker(run, step=1)
    pred, current = _at(3, DOWN), _at(1, DOWN)
    whole.add(DOWN, pred, current)
    flat_pred, flat_current = pred.reshape(-1), current.reshape(-1)
    for span in [(0, 100), (100, flat_pred.size)]:
        parts.add(DOWN, flat_pred[slice(*span)], flat_current[slice(*span)], span=span)
    assert parts.pred[DOWN] == pytest.approx(whole.pred[DOWN])
    assert parts.stay[DOWN] == pytest.approx(whole.stay[DOWN])


def test_no_later_step_that_differs_is_said_in_words(tmp_path: Path) -> None:
    run = open_run(write_run(tmp_path / "run", steps=(0, 1, 2), state=lambda s: linear_state(0)))
    tracker = ErrorTracker(run, step=1)
    tracker.add(Q0, _at(0, Q0), _at(0, Q0))
    assert math.isnan(tracker.rel_errors()[2])  # θ_1 = θ_2: no distance to divide by
    assert tracker.verdict() == {
        "beats_standing_still": None, "best_target_step": None, "best_rel_error": None,
        "verdict": "no later saved step differs from step 1: nothing to compare against",
    }  # fmt: skip
