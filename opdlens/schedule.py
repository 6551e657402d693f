"""EffOPD's schedule (design.md): power-of-two steps, their anchors, and the α of each candidate.

Below both analysis (foresee) and extrapolation (replay, the callback), which share it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import OptionError

__all__ = [
    "MAX_CANDIDATES",
    "MAX_MULTIPLE",
    "EffOPDSchedule",
    "alpha_schedule",
    "check_alpha",
    "is_power_of_two",
    "replay_schedule",
]

MAX_MULTIPLE = 1e150  # largest |α| foresee squares in float64, and largest k·α₀ of a schedule
# EffOPD tries 5; past ~50 the α of a candidate (α₀ / (1 + kα₀)) is below 2 % of α₀, and each
# candidate costs a written checkpoint (replay) or a row per step, anchor, scope and target.
MAX_CANDIDATES = 100


@dataclass(frozen=True)
class EffOPDSchedule:
    """EffOPD's candidate schedule (α₀, max_candidates), validated once for every user of it.

    replay, foresee, the EffOPD callback and the Trainer integration all build one, so a bad
    value is refused in the same words everywhere. Candidate k sits k·α₀·(θ_t − θ_a) beyond θ_t
    (the α of design.md telescope), so k·α₀ must stay finite.
    """

    alpha0: float = 2.0  # α of the first candidate; > 0
    max_candidates: int = 5  # candidates per scheduled step; ≥ 1

    def __post_init__(self) -> None:
        a, n = self.alpha0, self.max_candidates
        try:
            value = float(a) if not isinstance(a, bool | str | bytes) else math.nan
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise OptionError(
                f"The 'alpha0' parameter (--alpha0) of EffOPD's schedule must be a finite number "
                f"> 0: each accepted candidate moves a further α₀·(θ_t − θ_a) from the anchor "
                f"(2 by default). Got {a!r} instead."
            )
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CANDIDATES:
            raise OptionError(
                f"The 'max_candidates' parameter (--max-candidates) of EffOPD's schedule must be "
                f"a whole number from 1 to {MAX_CANDIDATES} (EffOPD tries 5). Got {n!r} instead."
            )
        if not value * n <= MAX_MULTIPLE:
            raise OptionError(
                f"--alpha0 {a!r} with --max-candidates {n}: the last candidate would lie "
                f"{n}·α₀ = {value * n:g} times θ_t − θ_a beyond θ_t (at most {MAX_MULTIPLE:g}); "
                "use a smaller α₀."
            )
        object.__setattr__(self, "alpha0", value)
        object.__setattr__(self, "max_candidates", int(n))

    def alphas(self) -> list[tuple[float, float]]:
        """alpha_schedule(alpha0, max_candidates): (α of each candidate, cumulative multiple)."""
        return alpha_schedule(self.alpha0, self.max_candidates)

    @staticmethod
    def shrink(alpha: float) -> float:
        """The α of the next candidate after one with `alpha`: α / (1 + α).

        Applied to the accepted candidate's distance from the anchor, it moves a further α₀
        times θ_t − θ_a, whatever candidate came before.
        """
        return alpha / (1 + alpha)

    @staticmethod
    def previous_power_of_two(step: int) -> int:
        """The last step before `step` at which EffOPD decided: a power of two, or 0 (the base)."""
        return 1 << ((step - 1).bit_length() - 1) if step > 1 else 0


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
        alpha = EffOPDSchedule.shrink(alpha)
    return out


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return alpha as a float, refusing NaN and ±inf (negative values are legal)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise OptionError(f"The '{name}' parameter must be a real number. Got {alpha!r}.") from None
    if not math.isfinite(value):
        raise OptionError(
            f"The '{name}' parameter must be finite. Got {alpha!r}; pass a real number "
            "(a negative one interpolates back toward the anchor)."
        )
    return value
