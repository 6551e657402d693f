"""EffOPD's schedule (design.md): power-of-two steps, their anchors, and the α of each candidate."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["alpha_schedule", "is_power_of_two", "replay_schedule"]


def is_power_of_two(step: int) -> bool:
    """Whether `step` is 1, 2, 4, 8, …: a step at which EffOPD tries an extrapolation."""
    return step > 0 and step & (step - 1) == 0


def replay_schedule(steps: Sequence[int]) -> list[tuple[int, int]]:
    """(step, anchor) pairs: the first saved step at or after each power of two, each used once."""
    saved = sorted(s for s in steps if s > 0)
    chosen: list[int] = []
    power = 1
    while saved and power <= saved[-1]:
        at = next(s for s in saved if s >= power)
        if not chosen or at != chosen[-1]:
            chosen.append(at)
        power *= 2
    return list(zip(chosen, [0, *chosen[:-1]], strict=True))


def alpha_schedule(alpha0: float, n: int) -> list[tuple[float, float]]:
    """(α applied to the previous candidate's distance from the anchor, cumulative multiple)."""
    out = []
    alpha, multiple = alpha0, 0.0
    for _ in range(n):
        multiple = (1 + multiple) * (1 + alpha) - 1
        out.append((alpha, multiple))
        alpha = alpha / (1 + alpha)
    return out
