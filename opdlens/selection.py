"""Which tensors an extrapolation, surgery or foresight covers: globs, or the matrices of blocks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import OptionError
from .names import BLOCKS
from .run import Run

__all__ = ["DEFAULT_MODULES", "select_tensors"]

DEFAULT_MODULES = ("attn", "mlp")


def select_tensors(
    run: Run, modules: Iterable[str] | None = DEFAULT_MODULES, tensors: Sequence[str] | None = None
) -> list[str]:
    """Floating-point tensors chosen by glob, or the weight matrices of the given blocks.

    `modules` holds block names (attn, mlp, embed, norm, head, other) or "all"; with `tensors`
    (globs) given, `modules` is ignored. Weight matrices are ≥2-D tensors named *weight and
    stacked expert parameters.
    """
    if tensors:
        chosen = run.select(tensors)
        bad = [n for n in chosen if not run.base.spec(n).is_float]
        if bad:
            raise OptionError(
                f"--tensors {list(tensors)} selects non-floating-point tensors {bad[:3]}, which "
                "cannot be extrapolated. Narrow the glob."
            )
        return chosen
    wanted = set(modules or DEFAULT_MODULES)
    unknown = wanted - set(BLOCKS) - {"all"}
    if unknown:
        raise OptionError(
            f"The 'modules' parameter takes blocks from {', '.join(BLOCKS)} or 'all'. "
            f"Got {sorted(unknown)}; e.g. --modules attn,mlp."
        )
    chosen = []
    for name in run.tensor_names:
        spec = run.base.spec(name)
        if not spec.is_float:
            continue
        if "all" in wanted:
            chosen.append(name)
            continue
        info = run.module(name)
        matrix = (name.endswith("weight") and len(spec.shape) >= 2) or info.stacked_experts
        if info.block in wanted and matrix:
            chosen.append(name)
    if not chosen:
        raise OptionError(
            f"No weight matrix of blocks {sorted(wanted)} in the run; names look like "
            f"'{run.tensor_names[0]}'. Pick other --modules or give --tensors GLOB."
        )
    return chosen
