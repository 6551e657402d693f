"""EffOPD's schedule (design.md): power-of-two steps, their anchors, the α of each candidate."""

from __future__ import annotations

import pytest

from opdlens.extrapolation.schedule import alpha_schedule, is_power_of_two, replay_schedule


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
