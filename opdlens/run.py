"""Run: the object users hold to reach any tensor of any saved step (Checkpoint: checkpoint.py)."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import Checkpoint, is_lora, open_checkpoint
from .errors import (
    CheckpointError,
    IncompleteCheckpointError,
    OpdlensError,
    OptionError,
    PartialRunError,
    UnknownTensorError,
)
from .io.discover import discover
from .names import ModuleInfo, as_matrix, classify

if TYPE_CHECKING:
    import pandas as pd
    import torch

log = logging.getLogger(__name__)


class Run:
    """A training run: a base (step 0) and checkpoints at later steps."""

    def __init__(
        self, base: Checkpoint, checkpoints: Mapping[int, Checkpoint], warnings: list[str]
    ) -> None:
        self.base = base
        self.checkpoints = dict(sorted(checkpoints.items()))
        self.warnings = list(warnings)
        self.config: dict[str, object] = dict(base.config)
        for ck in self.checkpoints.values():
            if not self.config and ck.config:
                self.config = dict(ck.config)
        self._model_type = str(self.config.get("model_type") or "") or None
        self.missing = self._find_missing()
        self.tensor_names = [
            n for n in base.names() if all(n in ck.source.specs for ck in self.checkpoints.values())
        ]
        self._check_shapes()
        self.open_args: dict[str, object] = {}

    # -- structure -------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        """Saved steps after the base, ascending (step 0 excluded)."""
        return [s for s in self.checkpoints if s != 0]

    @property
    def input_paths(self) -> list[Path]:
        """Paths an output must stay outside: the base, every checkpoint, the run directory, and
        every file they read or copy (weights, index, config and tokenizer files), which may be
        symlinks to anywhere — into an output too."""
        cks = [self.base, *self.checkpoints.values()]
        paths = [ck.path for ck in cks]
        if self.open_args.get("path"):
            paths.append(Path(str(self.open_args["path"])))
        for ck in cks:
            paths += ck.input_files
        return paths

    @property
    def final_step(self) -> int:
        if not self.steps:
            raise OpdlensError("The run has no checkpoint after its base; nothing to analyse.")
        return self.steps[-1]

    def only(self, steps: Iterable[int]) -> Run:
        """The run cut to its base and the given saved steps, sharing the opened checkpoints."""
        kept = {int(s): self.checkpoint(int(s)) for s in steps if int(s) != 0}
        sub = Run(self.base, kept, [])
        if self.open_args:
            sub.open_args = {
                **self.open_args, "path": None, "base": str(self.base.path),
                "checkpoints": {s: str(ck.path) for s, ck in kept.items()},
            }  # fmt: skip
        return sub

    def checkpoint(self, step: int) -> Checkpoint:
        """The checkpoint saved at ``step`` (0 is the base)."""
        if step == 0:
            return self.base
        if step not in self.checkpoints:
            raise OptionError(
                f"Step {step} is not in the run; saved steps are {self.steps or 'none'}."
            )
        return self.checkpoints[step]

    def module(self, name: str) -> ModuleInfo:
        """Layer, block and kind of a tensor of this run (design.md).

        Raises:
            UnknownTensorError: the run holds no tensor of that name (close names are listed).
        """
        if name not in self._known_names:
            where = self.open_args.get("path") or self.base.path
            raise UnknownTensorError(
                _unknown_tensor_message(name, sorted(self._known_names), where)
            )
        return classify(name, model_type=self._model_type)

    @functools.cached_property
    def _known_names(self) -> frozenset[str]:
        """The common tensors and those missing from some step."""
        return frozenset(self.tensor_names) | frozenset(self.missing)

    def select(self, patterns: Iterable[str] | None = None) -> list[str]:
        """Tensor names matching any of the glob patterns (all common tensors when None)."""
        if not patterns:
            return list(self.tensor_names)
        pats = list(patterns)
        chosen = [n for n in self.tensor_names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        if not chosen:
            raise OptionError(
                f"No tensor matches {pats}; names look like '{self.tensor_names[0]}'."
            )
        return chosen

    # -- updates ---------------------------------------------------------------------------
    def weight(self, name: str, step: int) -> torch.Tensor:
        """W_step for one tensor in float32, as (out, in) for matrices."""
        import torch

        return as_matrix(self.checkpoint(step).tensor(name, torch.float32), self.module(name))

    def delta(self, name: str, step: int, *, ref: int = 0) -> torch.Tensor:
        """Δ = W_step − W_ref in float32, as (out, in) for matrices."""
        f = self.factored_delta(name, step, ref=ref)
        if f is not None:
            return f[0] @ f[1]
        return self.weight(name, step) - self.weight(name, ref)

    def factored_delta(
        self, name: str, step: int, *, ref: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Δ = B @ A from LoRA factors, (out, in) oriented, without forming it; None if dense."""
        terms = []
        for s, sign in ((step, 1.0), (ref, -1.0)):
            src = self.checkpoint(s).source
            if src is self.base.source:
                continue  # W_0 itself: contributes no update
            if not is_lora(src) or name in src.full_replacements():
                return None
            f = src.factors(name)
            if f is not None:
                terms.append((f[0] * sign, f[1]))
        if not terms:
            return None
        import torch

        b = torch.cat([t[0] for t in terms], dim=1)  # (rows, r_total)
        a = torch.cat([t[1] for t in terms], dim=0)  # (r_total, cols)
        if self.module(name).transposed:
            return a.t(), b.t()
        return b, a

    # -- side inputs ---------------------------------------------------------------------
    def training_log(self, metrics: str | Path | None = None) -> pd.DataFrame:
        """Loss, accuracy, … per logged step, from the trainer's log or `metrics` (io.training_log)."""
        from .io.training_log import run_training_log

        dirs = {s: ck.path for s, ck in self.checkpoints.items()}
        return run_training_log(self.open_args.get("path"), dirs, metrics)  # type: ignore[arg-type]

    # -- checks ----------------------------------------------------------------------------
    def _find_missing(self) -> dict[str, list[int]]:
        every = [self.base, *self.checkpoints.values()]
        union: dict[str, None] = {}
        for ck in every:
            union.update(dict.fromkeys(ck.names()))
        missing: dict[str, list[int]] = {}
        for name in union:
            absent = [
                ck.step if ck.step is not None else 0 for ck in every if name not in ck.source.specs
            ]
            if absent:
                missing[name] = absent
        # One line however many: a header can hold 200k tensors that no other step has.
        shown = ", ".join(f"{n!r} at step(s) {a}" for n, a in list(missing.items())[:3])
        if len(missing) == 1:
            self.warnings.append(f"tensor {shown} is missing; it is left out of the analysis.")
        elif missing:
            self.warnings.append(
                f"{len(missing)} tensors are missing at some steps and left out of the analysis, "
                f"e.g. {shown} (Run.missing lists them all)."
            )
        return missing

    def _check_shapes(self) -> None:
        for name in self.tensor_names:
            ref = self.base.spec(name)
            for ck in self.checkpoints.values():
                got = ck.spec(name)
                if got.shape != ref.shape:
                    raise CheckpointError(
                        f"tensor '{name}' has shape {list(got.shape)} at step {ck.step} "
                        f"({ck.path}) but {list(ref.shape)} in the base ({self.base.path}); "
                        "checkpoints of one run must have the same architecture."
                    )

    def check_finite(self, name: str, step: int) -> bool:
        """True when every value of the tensor at ``step`` is finite."""
        import torch

        t = self.checkpoint(step).tensor(name)
        return bool(torch.isfinite(t.float()).all()) if t.is_floating_point() else True

    def __repr__(self) -> str:
        return (
            f"Run(base={self.base.path}, steps={self.steps}, tensors={len(self.tensor_names)}, "
            f"layout={self.base.layout})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A Run pickles as how to open it (e.g. for a worker process), not as its open files.
        if not self.open_args:
            raise OpdlensError(
                f"{self!r} was built directly, not by open_run, so another process cannot open "
                "it again; open it with open_run(...), or analyse it with workers=1."
            )
        return _reopen, (dict(self.open_args),)


_REOPENED: dict[str, Run] = {}


def _reopen(open_args: dict[str, Any]) -> Run:
    """The run `open_run(**open_args)` opens, opened once per process: how a Run unpickles."""
    key = repr(sorted(open_args.items()))
    if key not in _REOPENED:
        _REOPENED.clear()  # one run at a time: a worker sweeps the tensors of one run
        _REOPENED[key] = open_run(**open_args)
    return _REOPENED[key]


def _unknown_tensor_message(name: str, known: Sequence[str], where: object) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        hint = "close names: " + ", ".join(repr(c) for c in close)
    else:
        hint = f"names look like {known[0]!r}" if known else "it holds no tensors"
    return (
        f"The run {where} has no tensor named {name!r}; {hint}. "
        "Run.tensor_names lists every tensor of the run."
    )


def open_run(
    path: str | Path | None = None,
    base: str | Path | None = None,
    *,
    checkpoints: Mapping[int, str | Path] | None = None,
    trust_pickle: bool = False,
    skip_incomplete: bool = False,
) -> Run:
    """Find every checkpoint of a run, its step and its base, reading file headers only.

    Args:
        path: the run directory (checkpoint-<N>/, global_step_<N>/, step_<N>/, …).
        base: the model the run started from, when the run has no step-0 checkpoint.
        checkpoints: explicit step → checkpoint directory mapping, added to (or instead of) path.
        trust_pickle: allow .bin/.pt files that need code execution to unpickle.
        skip_incomplete: skip checkpoints still being written (with a warning) instead of failing.

    Raises:
        CheckpointError: a missing, empty, corrupt or inconsistent checkpoint; no base.
    """
    warnings: list[str] = []
    dirs: dict[int, Path] = {}
    # Every input is made absolute and resolved once, here: a scorer (or anything else in this
    # process) that changes the working directory must not change which files are read.
    path = None if path is None else _absolute(path)
    base = None if base is None else _absolute(base)
    if path is not None:
        found, w = discover(path)
        dirs.update(found)
        warnings += w
    for step, p in (checkpoints or {}).items():
        step = int(step)
        if step < 0:
            raise OptionError(f"Checkpoint steps must be ≥ 0; got {step} for {p}.")
        if step in dirs and _absolute(p) != dirs[step].resolve():
            raise CheckpointError(f"step {step} appears twice ({dirs[step]} and {p}).")
        dirs[step] = _absolute(p)
    if path is None and not dirs:
        raise OptionError("Give a run directory or at least one --checkpoint STEP=PATH.")
    opened: dict[int, Checkpoint] = {}
    for step, d in sorted(dirs.items()):
        try:
            opened[step] = open_checkpoint(_absolute(d), step, trust_pickle)
        except IncompleteCheckpointError as e:
            if not skip_incomplete:
                raise IncompleteCheckpointError(
                    f"{e} Wait for it to finish, or skip it (scan skips it; elsewhere "
                    "--skip-incomplete)."
                ) from None
            warnings.append(f"skipped step {step}: {e}")
    base_ck = _resolve_base(base, opened, path, trust_pickle, warnings)
    if is_lora(base_ck.source):
        raise CheckpointError(
            f"{base_ck.path}: a LoRA adapter cannot be the base; pass --base PATH (Python: "
            "base=PATH) pointing at the full model the adapters were trained on."
        )
    for ck in opened.values():
        if is_lora(ck.source):
            ck.source.attach_base(base_ck.source)
            ck.config = ck.config or dict(base_ck.config)
    if 0 in opened and opened[0] is not base_ck and is_lora(opened[0].source):
        warnings.append(f"{opened[0].path}: the step-0 adapter is not used; W_0 is the base model.")
    opened.pop(0, None)
    if not opened:
        raise PartialRunError(
            f"{path or base}: the run has a base but no checkpoint after it; nothing to compare.",
            found={0: base_ck}, missing="checkpoints after the base", warnings=warnings,
        )  # fmt: skip
    run = Run(base_ck, opened, warnings)
    # How to open this run again, e.g. in a worker process.
    run.open_args = {
        "path": None if path is None else str(path), "base": None if base is None else str(base),
        "checkpoints": {int(k): str(_absolute(v)) for k, v in (checkpoints or {}).items()},
        "trust_pickle": trust_pickle, "skip_incomplete": skip_incomplete,
    }  # fmt: skip
    return run


def _absolute(path: str | Path) -> Path:
    """`path` made absolute against today's working directory, symlinks resolved."""
    return Path(path).expanduser().resolve()


def _resolve_base(
    base: str | Path | None,
    opened: dict[int, Checkpoint],
    path: str | Path | None,
    trust_pickle: bool,
    warnings: list[str],
) -> Checkpoint:
    if base is not None:
        if 0 in opened:
            warnings.append(f"using --base {base} instead of the run's step-0 checkpoint.")
        return open_checkpoint(Path(base), None, trust_pickle)
    if 0 in opened:
        ck = opened[0]
        if not is_lora(ck.source):
            return ck
    lora = next((c.source for c in opened.values() if is_lora(c.source)), None)
    if lora is not None:
        guess = lora.adapter_config.get("base_model_name_or_path")
        if guess and Path(str(guess)).is_dir():
            warnings.append(f"base taken from adapter_config.json: {guess}")
            return open_checkpoint(_absolute(str(guess)), None, trust_pickle)
    steps = sorted(opened)
    raise PartialRunError(
        f"{path}: the run has no base — no step-0 checkpoint among steps {steps}. Pass --base PATH "
        "(Python: open_run(path, base=PATH)) pointing at the model the run started from.",
        found=opened, missing="base (step 0)", warnings=warnings,
    )  # fmt: skip
