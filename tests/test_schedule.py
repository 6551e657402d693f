"""EffOPD's schedule (design.md): power-of-two steps, their anchors, the α of each candidate."""

from __future__ import annotations

import math

import pytest

from opdlens import OptionError
from opdlens.schedule import (
    EffOPDSchedule,
    alpha_schedule,
    check_alpha,
    is_power_of_two,
    replay_schedule,
)


def test_powers_of_two_are_the_steps_effopd_tries() -> None:
    assert [s for s in range(-2, 70) if is_power_of_two(s)] == [1, 2, 4, 8, 16, 32, 64]
    assert is_power_of_two(2**40) and not is_power_of_two(2**40 + 2**20)


def test_schedule_uses_first_saved_step_at_or_after_each_power_of_two() -> None:
    assert replay_schedule([1, 2, 4, 8]) == [(1, 0), (2, 1), (4, 2), (8, 4)]
    assert replay_schedule([3, 5, 10, 20]) == [(3, 0), (5, 3), (10, 5), (20, 10)]
    assert replay_schedule([2, 3, 4, 6, 8, 9]) == [(2, 0), (4, 2), (8, 4)]  # no step ≥ 16
    assert replay_schedule([100]) == [(100, 0)]


def test_alpha_schedule_moves_alpha0_further_each_candidate() -> None:
    got = alpha_schedule(2.0, 5)
    assert [a for a, _ in got] == pytest.approx([2, 2 / 3, 2 / 5, 2 / 7, 2 / 9])
    assert [m for _, m in got] == pytest.approx([2, 4, 6, 8, 10])
    # α applied to the previous candidate's distance from the anchor: (1+m') = (1+m)(1+α)
    assert [m for _, m in alpha_schedule(0.5, 3)] == pytest.approx([0.5, 1.0, 1.5])


def test_shrink_is_the_next_alpha_and_keeps_each_step_alpha0_long() -> None:
    """α ← α/(1+α): each accepted candidate moves a further α₀·(θ_t − θ_a) from the anchor."""
    alpha, reach = 1.5, 1.0  # reach: candidate's distance from the anchor, in θ_t − θ_a
    for k in range(1, 8):
        reach *= 1 + alpha
        assert reach == pytest.approx(1 + 1.5 * k, rel=1e-12)
        alpha = EffOPDSchedule.shrink(alpha)
    assert EffOPDSchedule.shrink(2.0) == 2 / 3 and EffOPDSchedule.shrink(1.0) == 0.5
    assert [a for a, _ in EffOPDSchedule(3.0, 4).alphas()] == pytest.approx(
        [3, 3 / 4, 3 / 7, 3 / 10]
    )


def test_previous_power_of_two_is_the_last_decision_before_a_step() -> None:
    want = {0: 0, 1: 0, 2: 1, 3: 2, 4: 2, 5: 4, 8: 4, 9: 8, 1000: 512, 1024: 512, 1025: 1024}
    assert {s: EffOPDSchedule.previous_power_of_two(s) for s in want} == want
    for step in range(2, 300):  # the largest power of two strictly below, by brute force
        assert EffOPDSchedule.previous_power_of_two(step) == max(
            p for p in range(1, step) if is_power_of_two(p)
        )


@pytest.mark.parametrize(
    ("alpha0", "n", "needle"),
    [
        (0, 5, "(--alpha0) of EffOPD's schedule must be a finite number > 0"),
        (-0.5, 5, "Got -0.5 instead"),
        (math.inf, 5, "Got inf instead"),
        (2.0, 0, "(--max-candidates) of EffOPD's schedule must be a whole number from 1 to 100"),
        (2.0, 101, "Got 101 instead"),
    ],
)
def test_the_schedule_refuses_alpha0_at_most_zero_and_no_candidates(alpha0, n, needle) -> None:
    with pytest.raises(OptionError) as e:
        EffOPDSchedule(alpha0, n)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_check_alpha_takes_any_finite_real_and_names_the_parameter() -> None:
    assert check_alpha(-2) == -2.0 and check_alpha("0.5") == 0.5  # negative interpolates back
    with pytest.raises(OptionError, match="The 'alphas' parameter must be finite. Got nan"):
        check_alpha(math.nan, "alphas")
    with pytest.raises(OptionError, match="The 'alpha' parameter must be a real number. Got 'x'"):
        check_alpha("x")
