"""Which tensors an extrapolation, surgery or foresight covers: globs, or the matrices of blocks."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from .errors import OptionError
from .names import BLOCKS, ModuleInfo
from .run import Run

__all__ = ["DEFAULT_MODULES", "in_blocks", "select_tensors"]

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
        if spec.is_float and in_blocks(name, run.module(name), len(spec.shape), wanted):
            chosen.append(name)
    if not chosen:
        raise OptionError(
            f"No weight matrix of blocks {sorted(wanted)} in the run; names look like "
            f"'{run.tensor_names[0]}'. Pick other --modules or give --tensors GLOB."
        )
    return chosen


def in_blocks(name: str, info: ModuleInfo, ndim: int, blocks: Collection[str]) -> bool:
    """Whether the block rule picks floating-point tensor `name`: any tensor with "all" in
    `blocks`, else a weight matrix (≥2-D *weight, or stacked experts) of one of `blocks`."""
    if "all" in blocks:
        return True
    matrix = (name.endswith("weight") and ndim >= 2) or info.stacked_experts
    return info.block in blocks and matrix
