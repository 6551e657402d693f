"""EffOPD's schedule (design.md): power-of-two steps, their anchors, and the α of each candidate."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import OptionError

__all__ = [
    "MAX_CANDIDATES",
    "alpha_schedule",
    "check_max_candidates",
    "is_power_of_two",
    "replay_schedule",
]

# EffOPD tries 5; past ~50 the α of a candidate (α₀ / (1 + kα₀)) is below 2 % of α₀, and each
# candidate costs a written checkpoint (replay) or a row per step, anchor, scope and target.
MAX_CANDIDATES = 100


def check_max_candidates(value: object, command: str, minimum: int = 1) -> int:
    """`--max-candidates` as a whole number in [minimum, MAX_CANDIDATES]; OptionError otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not minimum <= value <= MAX_CANDIDATES
    ):
        raise OptionError(
            f"The 'max_candidates' parameter of {command} (--max-candidates) must be a whole "
            f"number from {minimum} to {MAX_CANDIDATES} (EffOPD tries 5). Got {value!r} instead."
        )
    return value


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
