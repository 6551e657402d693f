"""AnalyzeOptions: what `analyze` computes and how it runs, checked once when it is built."""

from __future__ import annotations

import difflib
import importlib.util
import math
import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ..devices import check_device
from ..errors import OpdlensError, OptionError

if TYPE_CHECKING:
    from ..run import Run


@dataclass(frozen=True)
class AnalyzeOptions:
    """Every option of `opdlens.analyze`, for the API, the CLI, figures/report and the workers.

    Built once and validated then (before any output exists), so a bad value fails in one line
    naming the parameter; `ranks` is kept sorted without repeats and `tensors` as a tuple.
    Only `final` depends on the run: `check_run` tests it.
    """

    ranks: Sequence[int] = (1, 4, 16)  # K of energy_k, align_*_k and gap_k; kept as a sorted tuple
    final: int | None = None  # the step taken as the final update (default: the last)
    tensors: Sequence[str] | None = None  # glob patterns, kept as a tuple; None: every tensor
    consecutive: bool = False  # also the step-to-step update W_t − W_prev
    full_spectrum: bool = False  # a full SVD per update, for effective_rank
    base_geometry: bool = False  # W_0's principal directions: principal_energy_*, drift, rotation
    split_fused: bool = True  # fused qkv / gate_up tensors per logical part
    workers: int | None = None  # worker threads; None is one per core, 1 sweeps inline
    executor: str = "local"  # 'local' (process pool) or 'ray'
    address: str | None = None  # a Ray cluster address (with executor='ray')
    device: str = "cpu"  # where the SVDs run: 'cpu', 'cuda' or 'cuda:N' (kept as 'cuda:N')
    sparsity_tol: float = 1e-5  # τ of changed_frac_tol: |Δ| > τ, absolute
    # changed_frac compares W_0 and W_t rounded to this dtype (no wider than the stored one),
    # as a checkpoint saved in it would hold them; None: as stored.
    sparsity_dtype: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are set once, here
        set_(self, "ranks", check_ranks(self.ranks))
        for name in ("executor", "device"):  # a CLI choice (a str Enum) is kept as its value
            set_(self, name, getattr(getattr(self, name), "value", getattr(self, name)))
        if self.tensors is not None:
            if isinstance(self.tensors, str):
                set_(self, "tensors", (self.tensors,))
            else:
                set_(self, "tensors", tuple(self.tensors))
        set_(self, "device", check_device(self.device))
        set_(self, "sparsity_tol", check_tol(self.sparsity_tol))
        set_(self, "sparsity_dtype", check_sparsity_dtype(self.sparsity_dtype))
        if self.executor not in ("local", "ray"):
            raise OptionError(
                f"The 'executor' parameter must be 'local' or 'ray'. Got {self.executor!r} instead."
            )
        if self.executor == "ray" and importlib.util.find_spec("ray") is None:
            raise OpdlensError(
                "--executor ray needs the ray package, which is not installed here; "
                "`pip install 'opdlens[ray]'` (or `pip install ray`), or use --executor local."
            )
        if self.address is not None and self.executor != "ray":
            raise OptionError(
                "The 'address' parameter is for a Ray cluster; pass executor='ray' (CLI: "
                "--executor ray) or drop the address."
            )
        if self.workers is not None:
            try:
                workers = int(self.workers)
            except (TypeError, ValueError):
                workers = 0
            if workers < 1:
                raise OptionError(
                    f"The 'workers' parameter must be ≥ 1. Got {self.workers} instead."
                )
            set_(self, "workers", workers)

    @classmethod
    def build(
        cls, options: AnalyzeOptions | None = None, overrides: Mapping[str, Any] | None = None
    ) -> AnalyzeOptions:
        """`options` (default: all defaults) with `overrides` replacing fields by name."""
        if options is not None and not isinstance(options, AnalyzeOptions):
            raise OptionError(
                f"The 'options' parameter of analyze must be an AnalyzeOptions or None. Got "
                f"{type(options).__name__} {options!r} instead; pass other options by name, e.g. "
                "analyze(run, ranks=(1, 4))."
            )
        known = [f.name for f in fields(cls)]
        unknown = [k for k in overrides or {} if k not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError(
                f"analyze has no option {unknown[0]!r}{hint}; its options are {', '.join(known)}."
            )
        if options is None:
            return cls(**dict(overrides or {}))
        return replace(options, **dict(overrides or {})) if overrides else options

    @property
    def kmax(self) -> int:
        """The largest K."""
        return max(self.ranks)

    @property
    def worker_count(self) -> int:
        """Worker threads to start: `workers`, or one per core."""
        return (os.cpu_count() or 1) if self.workers is None else self.workers

    def final_step(self, run: Run) -> int:
        """The step of Δ_T: `final`, else the run's last saved step."""
        return self.final if self.final is not None else run.final_step

    def check_run(self, run: Run) -> None:
        """Check the options that depend on the run: `final` and `tensors`.

        Raises:
            OptionError: `final` is not a saved step, or no tensor matches `tensors`.
        """
        if self.final is not None and self.final not in run.steps:
            raise OptionError(
                f"--final {self.final} is not a saved step; saved steps are {run.steps}."
            )
        if self.tensors:
            run.select(self.tensors)

    def record(self) -> dict[str, Any]:
        """The options as JSON-ready values, for provenance."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def check_ranks(ranks: object, func: str = "analyze") -> tuple[int, ...]:
    """`ranks` as a sorted tuple without repeats: whole numbers ≥ 1 (ints or numpy integers,
    not bools or floats); `func` names the caller.

    Raises:
        OptionError: naming the parameter and the value.
    """
    try:
        items = list(ranks)  # type: ignore[call-overload]
        bad = not items or any(isinstance(k, bool) for k in items)
        out = tuple(operator.index(k) for k in items)
    except TypeError:
        bad, out, items = True, (), ranks  # type: ignore[assignment]
    if bad or any(k <= 0 for k in out):
        raise OptionError(
            f"The 'ranks' parameter of {func} must be positive integers. Got {items} instead."
        )
    return tuple(sorted(set(out)))


# The dtypes `sparsity_dtype` may name (analysis.sparsity maps them to torch dtypes).
SPARSITY_DTYPE_NAMES = ("bfloat16", "float16", "float32")


def check_sparsity_dtype(name: object, func: str = "analyze") -> str | None:
    """The sparsity_dtype option as a name of SPARSITY_DTYPE_NAMES, or None (compare as stored).

    Raises:
        OptionError: naming the parameter, the value and the choices.
    """
    if name is None:
        return None
    name = getattr(name, "value", name)  # a CLI choice (a str Enum)
    if name not in SPARSITY_DTYPE_NAMES:
        raise OptionError(
            f"The 'sparsity_dtype' parameter of {func} must be one of "
            f"{', '.join(SPARSITY_DTYPE_NAMES)} (or None: compare as stored). Got {name!r} instead."
        )
    return str(name)


def check_tol(tol: object, name: str = "sparsity_tol", func: str = "analyze") -> float:
    """τ as a float: a finite number ≥ 0 (an absolute tolerance on |Δ|); `func` names the caller.

    Raises:
        OptionError: naming the parameter and the value.
    """
    try:
        value = float(tol)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(tol, bool) or not (math.isfinite(value) and value >= 0):
        raise OptionError(
            f"The '{name}' parameter of {func} must be a finite number ≥ 0 (an absolute "
            f"tolerance on |Δ|, e.g. 1e-5). Got {tol!r} instead."
        )
    return value
